"""The versioned prompt template and code extraction (DESIGN rules 2 and 4).

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
  GPU stops generating as soon as the solution is over (DESIGN section 5).
- Zero-shot: no MBPP task is spent as a shot, so all 974 tasks can be
  evaluated (rule 2). ``build_prompt`` keeps no state; the same problem always
  gives the same prompt, and ``PROMPT_TEMPLATE_VERSION`` goes to the metadata.
- The prompt ends with a newline after the cue, so the last prompt token (where
  activations are read) is the same cue for every problem.

``extract_code`` turns a generation into the program that is executed: it
keeps imports, constants, helper functions and classes, and stops where the
model starts writing tests (``assert``, top-level ``print(``, ``if __name__``,
top-level calls), prose, a closing fence, a repeated prompt, or a second
program (a function defined twice, or top-level code after the functions).
"""

from __future__ import annotations

import io
import re
import tokenize

PROMPT_TEMPLATE_VERSION = "mbpp-zero-shot-fenced-v1"

TESTS_HEADER = "Your code should pass these tests:"
CODE_CUE = "```python\n"

# Strings that end a solution for certain when they appear in the generated text
# (checked on the prompt's last characters + generated text, since the prompt ends
# with a newline; a match must end inside the generated text). Each
# is a top-level construct that extract_code would cut at anyway, so stopping
# there early never changes the extracted program; it only saves GPU time.
# Known limit: the check is textual, so an unindented "assert"/"print(" line inside
# a multi-line string literal also stops generation (rare in model-written code).
STOP_SEQUENCES: tuple[str, ...] = (
    "\n```\n",  # a closing fence (bare); "```python" after prose opens a new block and must not stop
    "\nassert",
    "\nprint(",
    "\nif __name__",
    f"\n{TESTS_HEADER}",
)

_CODE_START = re.compile(r"^(def |async def |class |import |from |@)")
_TEST_START = re.compile(r"^(assert\b|print\(|if __name__)")
# A simple top-level assignment (constants like ``MOD = 10**9 + 7``, ``f = lambda x: x``).
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*(\s*,\s*[A-Za-z_][A-Za-z_0-9]*)*\s*(:[^=]+)?=(?!=)")
_DEF_NAME = re.compile(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_][A-Za-z_0-9]*)")


def build_prompt(text: str, test_list: list[str]) -> str:
    """The prompt for one MBPP problem: text, its asserts verbatim, a code cue.

    Why verbatim: the asserts carry the function name and argument types that
    the tests will call; rewording them would make correct programs fail.
    """
    if not test_list:
        raise ValueError("an MBPP problem needs at least one test assert")
    asserts = "\n".join(t.strip() for t in test_list)
    return f"{text.strip()}\n{TESTS_HEADER}\n\n{asserts}\n\n{CODE_CUE}"


def _is_open_statement(code: str) -> bool:
    """True when ``code`` ends inside a bracket, a string or a backslash continuation.

    Why: a column-0 line such as ``]`` or the inside of a triple-quoted string is a
    continuation of the statement above, not the start of a new top-level one.
    """
    try:
        for _ in tokenize.generate_tokens(io.StringIO(code).readline):
            pass
    except tokenize.TokenError:
        return True
    except (IndentationError, SyntaxError):
        return False
    return False


def _strip_fences(lines: list[str]) -> list[str]:
    """Apply the code-fence rules and return the lines that can hold the program.

    The prompt opens a fence, so a bare ```` ``` ```` before any code closes it (empty
    program). A ```` ```python ```` (or any fence with a language) that comes before any
    code opens a new block: the code is what follows it. The first fence after code
    closes the block.
    """
    seen_code = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("```"):
            if seen_code or stripped == "```":
                return lines[:i]
            rest = lines[i + 1 :]
            for j, inner in enumerate(rest):
                if inner.strip().startswith("```"):
                    return rest[:j]
            return rest
        if _CODE_START.match(line):
            seen_code = True
    return lines


def extract_code(generated: str) -> str:
    """The program to execute, cut out of the model's generated text.

    Returns the kept lines with trailing blank lines and trailing comments removed,
    ending in one newline, or ``""`` when nothing looks like code. Indented lines
    (function bodies) are always kept; each top-level line is judged on its own.
    """
    lines = _strip_fences(generated.replace("\r\n", "\n").split("\n"))
    kept: list[str] = []
    defined: set[str] = set()
    seen_def = False
    for line in lines:
        if not line.strip() or line[0] in " \t":
            kept.append(line)
            continue
        if kept and _is_open_statement("\n".join(kept) + "\n"):
            kept.append(line)  # continuation of a bracket or a multi-line string
            continue
        if _TEST_START.match(line) or line.startswith(TESTS_HEADER):
            break
        if line.startswith("#"):
            # Neutral: "# Check if n is prime" may head a helper, "# Test cases" the tests;
            # the next code line decides, and comments left at the end are dropped.
            kept.append(line)
            continue
        name_match = _DEF_NAME.match(line)
        if name_match:
            name = name_match.group(1)
            if name in defined:
                break  # the same function written again: a second attempt, not a helper
            defined.add(name)
            seen_def = True
            kept.append(line)
            continue
        if _CODE_START.match(line):  # import, from, decorator
            kept.append(line)
            continue
        if _ASSIGNMENT.match(line) and (not seen_def or "lambda" in line.split("=", 1)[1]):
            kept.append(line)  # constants and lambdas; after the functions, assignments are test setup
            continue
        break  # prose, a call, a loop or other script code: the solution is over
    while kept and (not kept[-1].strip() or kept[-1].startswith("#")):
        kept.pop()  # trailing blank lines and top-level comments belong to whatever came next
    if not any(line.strip() and not line.lstrip().startswith("#") for line in kept):
        return ""
    return "\n".join(kept).rstrip() + "\n"
