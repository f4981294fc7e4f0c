"""The versioned prompt template and code extraction (docs/design.md rules 2 and 4).

Template (zero-shot)::

    <problem text>
    Your code should pass these tests:

    <assert 1>
    <assert 2>
    <assert 3>

    ```python

Why this template:
- It is MBPP's own wording ("Your code should pass these tests:") followed by
  the asserts verbatim, so the model sees the function name and signature it
  must define; MBPP asserts already begin with ``assert``.
- The cue is an opened Python code fence. Base models (gemma-2-2b is one) have
  seen a great deal of Markdown, so an open fence makes them write code at once
  rather than prose, and they close it with a bare ```` ``` ```` when the
  program ends. That closing fence is an unambiguous, cheap stop signal: the
  GPU stops generating as soon as the solution is over (docs/design.md section 5).
- Zero-shot: no MBPP task is spent as a shot, so all 974 tasks can be
  evaluated (rule 2). ``build_prompt`` keeps no state; the same problem always
  gives the same prompt, and ``PROMPT_TEMPLATE_VERSION`` goes to the metadata.
- The prompt ends with a newline after the cue, so the last prompt token (where
  activations are read) is the same cue for every problem.

``extract_code`` turns a generation into the program that is executed. It is
built on Python's own parser, not on line patterns (EXTRACTION_VERSION goes
to the metadata):

1. The region: the generation up to the first fence line (the prompt opened
   the block, so a fence after code closes it). If nothing that binds a name
   comes before a fence and that fence names a language (```` ```python ````),
   the model has opened a new block after some prose: the region is that block
   (unless a stop line came first). Leading prose lines (lines that do not
   parse, or parse only as a bare name) are skipped, never past a stop line.
2. The longest prefix of the region that compiles, cut back to whole top-level
   statements: only prefixes that end right before an unindented line (or at
   the end of the text) are tried, and never before an ``else``/``elif``/
   ``except``/``finally`` that continues the statement above. A function that
   was cut off mid-body by the token budget is therefore dropped whole.
3. The program is the longest run of top-level statements from the start that
   defines the solution. Before the first function or class everything is
   kept (imports, a module docstring, constants, configuration calls such as
   ``sys.setrecursionlimit``). After it, definitions are kept: functions,
   classes, decorators, imports, assignments (unless they call a function or
   class the program defines: that is test set-up), docstrings, and ``if``/
   ``try``/``with`` blocks that contain only such statements (``try: import x``
   ``except ImportError: ...``). The first statement that tests or drives the
   code ends the program: an ``assert``, a ``print(...)`` or an
   ``if __name__`` block anywhere, and after the definitions any other call,
   loop or statement.

Why the program ends at the first such statement rather than skipping it: the
stop sequences end generation at exactly those statements, so "stopping early
never changes the extracted program" holds only if nothing after them is ever
kept.

A function defined twice with no test in between (two attempts written back to
back) is kept as written: Python runs the program top to bottom, so the last
definition is the one the asserts call, as with ``python solution.py``.
Extraction never picks between attempts. A program that never defines the
function the asserts call is not run: ``common.sandbox.labelling`` gives it the
outcome ``missing_entry_point``; an empty program whose asserts fail gets ``no_code``.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings

PROMPT_TEMPLATE_VERSION = "mbpp-zero-shot-fenced-v1"
# Bumped whenever extract_code can return a different program for the same text.
EXTRACTION_VERSION = "ast-prefix-v2"

TESTS_HEADER = "Your code should pass these tests:"
CODE_CUE = "```python\n"

# Strings that end a solution for certain when they appear in the generated text
# (checked on the prompt's last characters + generated text, since the prompt ends
# with a newline; a match must end inside the generated text). Each starts a
# top-level line at which extract_code ends the program anyway (an assert, a
# print call, a main guard, a closing fence, a repeated prompt header, which does
# not parse), so stopping there early never changes the extracted program; it
# only saves GPU time. "assert" is followed by a space or "(" so that a name such
# as ``asserts = [...]`` does not stop generation.
# Known limit: the check is textual, so an unindented "assert "/"print(" line inside
# a multi-line string literal also stops generation (rare in model-written code).
STOP_SEQUENCES: tuple[str, ...] = (
    "\n```\n",  # a closing fence (bare); "```python" after prose opens a new block and must not stop
    "\nassert ",
    "\nassert(",
    "\nprint(",
    "\nif __name__",
    f"\n{TESTS_HEADER}",
)

# An unindented line that continues the statement above rather than starting one.
_CONTINUATION = re.compile(r"^(else|elif|except|finally)\b")


def build_prompt(text: str, test_list: list[str]) -> str:
    """The prompt for one MBPP problem: text, its asserts verbatim, a code cue.

    Why verbatim: the asserts carry the function name and argument types that
    the tests will call; rewording them would make correct programs fail.
    """
    if not test_list:
        raise ValueError("an MBPP problem needs at least one test assert")
    asserts = "\n".join(t.strip() for t in test_list)
    return f"{text.strip()}\n{TESTS_HEADER}\n\n{asserts}\n\n{CODE_CUE}"


@functools.lru_cache(maxsize=512)
def _syntax_error_line(source: str) -> int | None:
    """``None`` when ``source`` compiles, else the line of the error (1-based; 0 when unknown).

    ``compile``, not only ``ast.parse``: it also rejects ``return`` or ``break``
    at the top level, which ``ast.parse`` accepts; the program must be one
    Python would run.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "\d" in a regex string: a warning, not an error
            compile(source, "<generation>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return exc.lineno or 0
    except ValueError:  # a null byte in the text
        return 0
    return None


def _longest_parsing_prefix(lines: list[str]) -> int:
    """How many of ``lines`` form the longest prefix that compiles and ends on a top-level boundary.

    Prefixes are tried longest first. When one fails with an error on line L
    inside it, every longer-than-L prefix holds the same line and fails too
    (an unclosed bracket or string is reported where it opens, and a shorter
    prefix cannot close it), so the search jumps below L: prose of n lines
    costs about n compiles, not n squared.
    """
    limit = len(lines)
    for k in range(len(lines), 0, -1):
        if k > limit:
            continue
        if k < len(lines):
            nxt = lines[k]
            if not nxt.strip() or nxt[0] in " \t" or _CONTINUATION.match(nxt):
                continue  # the prefix would end inside a statement
        error_line = _syntax_error_line("\n".join(lines[:k]) + "\n")
        if error_line is None:
            return k
        if 0 < error_line <= k:
            limit = error_line - 1
    return 0


def _parse_region(lines: list[str]) -> tuple[list[str], list[ast.stmt]]:
    """The lines of the longest parsing prefix and its top-level statements."""
    k = _longest_parsing_prefix(lines)
    kept = lines[:k]
    return kept, _parse("\n".join(kept) + "\n").body if kept else []


@functools.lru_cache(maxsize=64)
def _parse(source: str) -> ast.Module:
    """``ast.parse``, remembered: extraction looks at the same prefix several times. Callers never mutate the tree."""
    return ast.parse(source)


def _is_main_guard(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and any(
        isinstance(node, ast.Name) and node.id == "__name__" for node in ast.walk(stmt.test)
    )


def _is_test_statement(stmt: ast.stmt) -> bool:
    """An assert, a ``print(...)`` call or a main guard: it tests the code wherever it stands."""
    if isinstance(stmt, ast.Assert) or _is_main_guard(stmt):
        return True
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and stmt.value.func.id == "print"
    )


def _calls_any(node: ast.AST, names: set[str]) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names for n in ast.walk(node)
    )


def _is_definition(stmt: ast.stmt, defined: set[str]) -> bool:
    """True when ``stmt`` defines part of the solution rather than testing or driving it.

    ``defined`` holds the functions and classes the program defined so far: an
    assignment that calls one of them (``result = f(5)``) is test set-up.
    """
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return True
    if isinstance(stmt, (ast.Pass, ast.Global, ast.Nonlocal)):
        return True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        return not _calls_any(stmt, defined)
    if isinstance(stmt, ast.Expr):  # a docstring or another bare string
        return isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)
    if _is_main_guard(stmt):
        return False
    blocks: list[list[ast.stmt]] = []
    if isinstance(stmt, ast.If):
        if _calls_any(stmt.test, defined):
            return False
        blocks = [stmt.body, stmt.orelse]
    elif isinstance(stmt, (ast.Try, ast.TryStar)):
        blocks = [stmt.body, stmt.orelse, stmt.finalbody, *[h.body for h in stmt.handlers]]
    elif isinstance(stmt, ast.With):
        if any(_calls_any(item, defined) for item in stmt.items):
            return False
        blocks = [stmt.body]
    else:
        return False
    return all(_is_definition(inner, defined) for block in blocks for inner in block)


def _defined_names(stmt: ast.stmt) -> set[str]:
    """Functions and classes ``stmt`` defines at the top level (looking into if/try/with blocks)."""
    names: set[str] = set()
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(stmt.name)
    for field in ("body", "orelse", "finalbody", "handlers"):
        if isinstance(stmt, (ast.If, ast.Try, ast.TryStar, ast.With, ast.ExceptHandler)):
            for inner in getattr(stmt, field, []) or []:
                names |= _defined_names(inner)
    return names


def _solution_end(statements: list[ast.stmt]) -> int:
    """How many leading top-level statements make up the solution."""
    defined: set[str] = set()
    for index, stmt in enumerate(statements):
        if _is_test_statement(stmt):
            return index
        if defined and not _is_definition(stmt, defined):
            return index
        defined |= _defined_names(stmt)
    return len(statements)


def _binds_a_name(statements: list[ast.stmt]) -> bool:
    """True when some statement is more than a bare expression (prose like ``Solution`` parses as one)."""
    return any(not isinstance(stmt, ast.Expr) for stmt in statements)


def _is_stop_line(line: str) -> bool:
    """True when generation would have stopped at this line (a stop sequence other than the fence starts it)."""
    return any(line.startswith(stop[1:]) for stop in STOP_SEQUENCES if not stop.startswith("\n```"))


def _is_prose_start(lines: list[str]) -> bool:
    """True when ``lines`` do not start with code: the first line does not parse, or parses only as a bare name.

    Why: an instruction-tuned model often writes a sentence ("Here is the
    function:") before the code, without a fence. ``Solution`` alone parses as
    an expression statement, but runs as a NameError.
    """
    _, statements = _parse_region(lines)
    if not statements:
        return True
    first = statements[0]
    return isinstance(first, ast.Expr) and not isinstance(first.value, (ast.Call, ast.Constant))


def _skip_prose(lines: list[str]) -> list[str]:
    """Drop leading lines that are prose, but never past a line where generation would have stopped."""
    start = 0
    while start < len(lines):
        line = lines[start]
        if line.strip() and (_is_stop_line(line) or not _is_prose_start(lines[start:])):
            break
        start += 1
        while start < len(lines) and lines[start][:1] in (" ", "\t"):
            start += 1  # an indented line continues the prose (or a block we cannot use)
    return lines[start:]


def _program(lines: list[str]) -> tuple[str, list[ast.stmt]]:
    """The solution cut out of ``lines`` (no fences inside), and its top-level statements."""
    kept, statements = _parse_region(_skip_prose(lines))
    end = _solution_end(statements)
    statements = statements[:end]
    if not statements:
        return "", []
    last_line = statements[-1].end_lineno or len(kept)
    return "\n".join(kept[:last_line]).rstrip() + "\n", statements


def _is_fence(line: str) -> bool:
    return line.strip().startswith("```")


def extract_code(generated: str) -> str:
    """The program to execute, cut out of the model's generated text (see the module docstring).

    Returns source text exactly as the model wrote it (comments and layout
    kept), ending in one newline, or ``""`` when no statement survives.
    """
    lines = generated.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fence = next((i for i, line in enumerate(lines) if _is_fence(line)), None)
    if fence is None:
        return _program(lines)[0]
    before, statements = _program(lines[:fence])
    if _binds_a_name(statements) or lines[fence].strip() == "```" or any(map(_is_stop_line, lines[:fence])):
        # The fence closes the block the prompt opened (or generation would have stopped before it).
        return before
    block = lines[fence + 1 :]
    close = next((i for i, line in enumerate(block) if _is_fence(line)), None)
    return _program(block if close is None else block[:close])[0]


def called_names(test_list: list[str]) -> list[str]:
    """Names the asserts call as plain functions (``f(...)``), builtins left out.

    Ordered by the number of asserts that call the name, then by where it is
    first called (outermost call first), so that in
    ``assert max_chain_length([Pair(5, 24), Pair(15, 25)], 2) == 1`` the entry
    point ``max_chain_length`` comes before ``Pair``, which is called more
    often. Why: the entry point of an MBPP task is the function its asserts
    call (``assert set(similar_elements(a, b)) == ...`` calls
    ``similar_elements``; ``set`` is a builtin). Asserts that do not parse
    contribute nothing.
    """
    import builtins
    import collections

    counts: collections.Counter[str] = collections.Counter()
    first_seen: dict[str, int] = {}
    for test in test_list:
        try:
            tree = ast.parse(test.replace("\r\n", "\n").strip())
        except SyntaxError:
            continue
        in_this_assert: set[str] = set()
        for node in ast.walk(tree):  # breadth first: outer calls before the calls in their arguments
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                if hasattr(builtins, name) or name in in_this_assert:
                    continue
                in_this_assert.add(name)
                counts[name] += 1
                first_seen.setdefault(name, len(first_seen))
    return sorted(counts, key=lambda n: (-counts[n], first_seen[n]))


def module_bound_names(code: str) -> set[str] | None:
    """Every name a module binds at its top level, or ``None`` when that cannot be known.

    Top level includes the bodies of top-level ``if``/``try``/``with``/``for``/
    ``while`` blocks (they run at import), but not function or class bodies.
    ``None`` for code that does not parse or uses ``from x import *``.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            todo.extend(node.decorator_list)
            continue
        if isinstance(node, (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)):
            continue  # their own scope
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        todo.extend(ast.iter_child_nodes(node))
    return names
