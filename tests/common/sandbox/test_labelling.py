"""Labels of realistic generations, checked by running them: extraction + entry-point check + executor.

Each case is a generation the way a model writes it, and the verdict it must
get when it is extracted and executed against the asserts. Asserting the
verdict (not only the extracted text) is what makes a label trustworthy: a
program that passes when run as written must pass here too.
"""

from __future__ import annotations

import json

import pytest

from common.prompts import extract_code
from common.sandbox.executor import ASSERTION, PASSED, Executor, ExecutorConfig
from common.sandbox.labelling import MISSING_ENTRY_POINT, NO_CODE, entry_point, precheck, submit_generation
from tests.helpers import REAL_MBPP, requires_real_mbpp

TESTS = ["assert fact(0) == 1", "assert fact(5) == 120", "assert fact(10) == 3628800"]

# name -> (generation, outcome it must get)
SHAPES: dict[str, tuple[str, str]] = {
    "plain_function_then_closing_fence": ("def fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n```\n", PASSED),
    "module_docstring_before_the_code": (
        '"""Factorial, recursive."""\n\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n', PASSED
    ),
    "imports_inside_try_except_import_error": (
        "try:\n    from math import factorial as _f\nexcept ImportError:\n    _f = None\n\n"
        "def fact(n):\n    return _f(n)\n",
        PASSED,
    ),
    "constant_defined_after_the_function": (
        "def fact(n):\n    return TABLE[n]\n\nTABLE = [1]\nfor i in range(1, 11):\n    TABLE.append(TABLE[-1] * i)\n",
        # The loop that fills TABLE is script code after the definitions: it is cut, so TABLE[5] fails.
        "IndexError",
    ),
    "constant_after_function_then_prints": (
        "def fact(n):\n    return 1 if n <= LIMIT else n * fact(n - 1)\n\nLIMIT = 1\n\nprint(fact(5))\n", PASSED
    ),
    "setrecursionlimit_before_the_def": (
        "import sys\nsys.setrecursionlimit(5000)\n\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n", PASSED
    ),
    "decorator_on_the_entry_point": (
        "from functools import lru_cache\n\n@lru_cache(maxsize=None)\ndef fact(n):\n"
        "    return 1 if n == 0 else n * fact(n - 1)\n",
        PASSED,
    ),
    "class_used_by_the_entry_point": (
        "class Multiplier:\n    def run(self, n):\n        r = 1\n        for i in range(2, n + 1):\n            r *= i\n"
        "        return r\n\ndef fact(n):\n    return Multiplier().run(n)\n",
        PASSED,
    ),
    "imports_inside_an_if_block": (
        "import sys\nif sys.version_info >= (3, 8):\n    from math import prod\nelse:\n    prod = None\n\n"
        "def fact(n):\n    return prod(range(1, n + 1))\n",
        PASSED,
    ),
    "main_guard_with_tests": (
        "def fact(n):\n    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r\n\n"
        "if __name__ == '__main__':\n    assert fact(3) == 7\n",
        PASSED,
    ),
    "wrong_answer": ("def fact(n):\n    return n\n", ASSERTION),
    "defined_twice_last_one_runs_and_is_right": (
        "def fact(n):\n    return n\n\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n", PASSED
    ),
    "defined_twice_last_one_runs_and_is_wrong": (
        "def fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n\ndef fact(n):\n    return 0\n", ASSERTION
    ),
    "second_definition_after_a_print_is_not_kept": (
        "def fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n\nprint(fact(3))\n\ndef fact(n):\n    return 0\n",
        PASSED,
    ),
    "prose_only": ("I am sorry, I cannot write this function.\n", NO_CODE),
    "immediately_closed_fence": ("```\nThe function is easy.\n", NO_CODE),
    "only_asserts": ("assert fact(1) == 1\n", NO_CODE),
    "other_function_name": ("def factorial(n):\n    return 1 if n == 0 else n * factorial(n - 1)\n", MISSING_ENTRY_POINT),
    "entry_point_cut_off_by_the_token_budget": (
        "import math\n\ndef helper(n):\n    return n\n\ndef fact(n):\n    return math.prod(range(1,\n", MISSING_ENTRY_POINT
    ),
    "entry_point_bound_by_assignment": ("import math\nfact = math.factorial\n", PASSED),
    "entry_point_imported_under_its_name": ("from math import factorial as fact\n", PASSED),
    "prose_then_own_python_fence": (
        "Here is the code:\n```python\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n```\nDone.\n", PASSED
    ),
    "class_with_method_only": (
        "class Solution:\n    def fact(self, n):\n        return 1 if n == 0 else n * self.fact(n - 1)\n",
        MISSING_ENTRY_POINT,
    ),
    "script_reading_stdin_before_the_def": (
        "n = int(input())\n\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n", "EOFError"
    ),
    # Shapes seen in SmolLM2-135M-Instruct's output on MBPP tasks 1-48 (greedy, 200 tokens).
    "smollm2_comment_first_then_variants_of_the_function": (
        "# Test the function\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n\n"
        "# Test the function with a list\ndef fact_list(lst):\n    return [fact(x) for x in lst]\n```\n",
        PASSED,
    ),
    "smollm2_call_after_the_def_then_assert_cut_by_the_stop": (
        "def fact(n):\n    return 1 if n == 0 else n * fact(n - 1)\n\n# Test the function\nn = 5\nfact(n)\nassert ",
        PASSED,
    ),
    "smollm2_result_bound_to_the_entry_point_name": (
        "def compute(n):\n    return 1 if n == 0 else n * compute(n - 1)\n\nfact = compute(5)\nassert ",
        MISSING_ENTRY_POINT,
    ),
    "smollm2_docstring_only_body": ('def fact(n):\n    """\n    Computes n!.\n    """\n```\n', ASSERTION),
    "smollm2_mutual_recursion": (
        "def fact(n):\n    return fact_helper(n)\n\ndef fact_helper(n):\n    return fact(n)\n```\n", "RecursionError"
    ),
    "smollm2_eos_right_after_the_fence": ("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n```", PASSED),
    "smollm2_print_cut_mid_call": (
        "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n\nlst = [1, 2, 3]\nprint(", PASSED
    ),
    "smollm2_helper_never_defined": (
        "def fact(n):\n    return fact_iter(n, 1)\n\ndef fact_iter(n, acc):\n    return fact_tail(n, acc)\n```\n",
        "NameError",
    ),
}


@pytest.fixture(scope="module")
def executor():
    with Executor(ExecutorConfig(workers=2, timeout_s=5)) as ex:
        yield ex


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_gets_its_executed_verdict(executor, name: str) -> None:
    generated, expected = SHAPES[name]
    code, future = submit_generation(executor, 1, generated, None, TESTS)
    verdict = future.result()
    assert code == extract_code(generated)
    assert verdict.outcome == expected, (code, verdict)
    assert verdict.passed == (expected == PASSED)


def test_the_extracted_program_is_the_models_own_text_up_to_the_cut() -> None:
    """Extraction never rewrites code: a passing program is a prefix of what the model wrote."""
    for name, (generated, expected) in SHAPES.items():
        if expected != PASSED:
            continue
        code = extract_code(generated)
        body = generated.split("```python\n", 1)[-1] if "```python\n" in generated else generated
        assert body.startswith(code.rstrip("\n")), name


def test_missing_entry_point_is_not_executed_and_no_code_is(executor) -> None:
    assert precheck(1, "", TESTS) is None  # run: the label must be what execution says
    missing = precheck(1, "def g():\n    pass\n", TESTS)
    assert missing.outcome == MISSING_ENTRY_POINT and "fact" in missing.detail and missing.duration_s == 0.0
    assert precheck(1, "def fact(n):\n    return n\n", TESTS) is None


def test_no_code_keeps_the_executed_label(executor) -> None:
    """No program: MBPP asserts fail (NameError, reported as no_code); asserts that test nothing pass."""
    _, future = submit_generation(executor, 1, "Sorry, no code.", None, TESTS)
    verdict = future.result()
    assert verdict.outcome == NO_CODE and not verdict.passed and "NameError" in verdict.detail
    _, future = submit_generation(executor, 1, "Sorry, no code.", None, ["assert 1 == 1"])
    assert future.result().passed and future.result().outcome == PASSED


def test_entry_point_skips_builtins_and_names_from_the_setup_code() -> None:
    assert entry_point(["assert set(similar_elements((3, 4), (5, 4))) == set((4,))"]) == "similar_elements"
    assert entry_point(["assert is_tree_balanced(root) == False"], "class Node:\n    pass\nroot = Node()\n") == (
        "is_tree_balanced"
    )
    assert entry_point(["assert sum(10, 15) == 6"]) is None  # MBPP task 126 shadows a builtin: not checked
    assert entry_point(["assert math.isclose(area(1), 3.14, rel_tol=0.01)"]) == "area"
    # MBPP task 601: the class is called more often than the function, but not in more asserts.
    assert entry_point(["assert max_chain_length([Pair(5, 24), Pair(15, 25), Pair(27, 40)], 3) == 3"]) == (
        "max_chain_length"
    )


@requires_real_mbpp
def test_every_mbpp_reference_solution_defines_its_entry_point() -> None:
    """Over the 974 real tasks, the static check never rejects a reference solution (no false missing_entry_point)."""
    rows = [json.loads(line) for line in REAL_MBPP.read_text().splitlines() if line.strip()]
    checked = 0
    for row in rows:
        code = row["code"].replace("\r\n", "\n")
        assert precheck(row["task_id"], extract_code(code), row["test_list"], row["test_setup_code"]) is None
        checked += entry_point(row["test_list"], row["test_setup_code"]) is not None
    assert checked == 973  # all but task 126, whose asserts call only the shadowed builtin sum
