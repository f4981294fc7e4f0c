"""Pass/fail labels for generated text: extraction, the entry-point check, execution.

Why one module: every later number rests on these labels, and Phases 1, 1.2,
3 and ``run.py label`` must produce them the same way. The verdict for a
generation is decided here, in this order:

* ``no_code``: extraction found no program at all (prose, an immediately
  closed fence, only asserts), and the asserts failed without one. The asserts
  are still run, so the label stays what execution says (asserts that test
  nothing, as in some synthetic test problems, pass); only the outcome changes
  from the ``NameError`` an MBPP assert raises, which says nothing about what
  happened, to ``no_code``.
* ``missing_entry_point``: the program never binds the function the asserts
  call (found by parsing the asserts, ``common.prompts.called_names``). Not
  executed either: the asserts could only raise ``NameError``.
* otherwise the executor's verdict (``passed``, ``assertion``, ``timeout``,
  ``killed`` or an exception name), see ``common.sandbox.executor``.

Known limit of the entry-point check: it is static. A program that creates the
function only through ``globals()``/``exec`` is called ``missing_entry_point``,
and a task whose asserts only call builtin names (MBPP task 126 defines its own
``sum``) has no entry point to check, so such a program is simply run.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterable

from common.prompts import called_names, extract_code, module_bound_names
from common.sandbox.executor import ExecutionResult, Executor

logger = logging.getLogger(__name__)

NO_CODE = "no_code"
MISSING_ENTRY_POINT = "missing_entry_point"


def entry_point(test_list: Iterable[str], test_setup_code: str | None = None) -> str | None:
    """The function the asserts call, or ``None`` when they call no non-builtin name.

    Names the set-up code binds are left out (MBPP tasks 367 and 927 build a
    tree with the solution's class in the set-up code).
    """
    names = called_names(list(test_list))
    from_setup = module_bound_names(test_setup_code or "") or set()
    names = [n for n in names if n not in from_setup]
    if names:
        return names[0]
    return _handed_to_setup(list(test_list), from_setup)


def _handed_to_setup(test_list: list[str], from_setup: set[str]) -> str | None:
    """A name the tests hand to a set-up function: HumanEval's ``check(entry_point)``."""
    import ast
    import builtins

    for test in test_list:
        try:
            tree = ast.parse(test.strip())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in from_setup:
                for arg in node.args:
                    if isinstance(arg, ast.Name) and arg.id not in from_setup and not hasattr(builtins, arg.id):
                        return arg.id
    return None


def precheck(
    task_id: int, code: str, test_list: Iterable[str], test_setup_code: str | None = None
) -> ExecutionResult | None:
    """The verdict for a program that need not run (``missing_entry_point``), else ``None``.

    An empty program is run (see the module docstring); :func:`no_code_verdict` names its failure.
    """
    if not code.strip():
        return None
    name = entry_point(test_list, test_setup_code)
    if name is None:
        return None
    bound = module_bound_names(code)
    if bound is not None and name not in bound:
        return ExecutionResult(
            task_id, False, MISSING_ENTRY_POINT, f"the program never defines {name}, which the asserts call", 0.0
        )
    return None


def no_code_verdict(verdict: ExecutionResult) -> ExecutionResult:
    """The executor's verdict on an empty program: a failure becomes ``no_code``, a pass stays a pass."""
    if verdict.passed:
        return verdict
    detail = f"the generation holds no program (the asserts alone: {verdict.outcome})"
    return ExecutionResult(verdict.task_id, False, NO_CODE, detail, verdict.duration_s)


def _mapped(
    source: concurrent.futures.Future[ExecutionResult], func: Callable[[ExecutionResult], ExecutionResult]
) -> concurrent.futures.Future[ExecutionResult]:
    """A future that resolves to ``func(source.result())`` (or to the same exception)."""
    target: concurrent.futures.Future[ExecutionResult] = concurrent.futures.Future()

    def forward(done: concurrent.futures.Future[ExecutionResult]) -> None:
        try:
            target.set_result(func(done.result()))
        except BaseException as exc:  # an executor failure reaches the caller unchanged
            target.set_exception(exc)

    source.add_done_callback(forward)
    return target


def submit_generation(
    executor: Executor,
    task_id: int,
    generated_text: str,
    test_setup_code: str | None,
    test_list: Iterable[str],
) -> tuple[str, concurrent.futures.Future[ExecutionResult]]:
    """Extract the program from ``generated_text`` and label it; returns (program, future verdict)."""
    tests = list(test_list)
    code = extract_code(generated_text)
    verdict = precheck(task_id, code, tests, test_setup_code)
    if verdict is not None:
        future: concurrent.futures.Future[ExecutionResult] = concurrent.futures.Future()
        future.set_result(verdict)
        return code, future
    future = executor.submit(task_id, code, test_setup_code, tests)
    return code, (_mapped(future, no_code_verdict) if not code.strip() else future)
