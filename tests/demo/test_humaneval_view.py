"""The demo's HumanEval-format view of its own problems: every canonical solution passes, wrong ones do not."""

from common.benchmarks.humaneval import canonical_items, load_humaneval, program_pieces
from common.benchmarks.mbpp import load_mbpp
from common.sandbox.executor import Executor, ExecutorConfig
from demo.humaneval_view import write_humaneval_view
from tests.helpers import DEMO_PROBLEMS


def test_every_problem_converts_and_its_solution_passes_in_the_sandbox(tmp_path):
    path = write_humaneval_view(load_mbpp(DEMO_PROBLEMS), tmp_path / "demo_humaneval.jsonl.gz")
    problems = load_humaneval(path)  # validated: entry point defined, check() present
    assert len(problems) == 100
    first = problems.iloc[0].to_dict()
    assert first["prompt"].startswith("def add_two(x):") and '"""Write a function to add two' in first["prompt"]
    assert "assert candidate(3) == 5" in first["test"]
    wrong = [program_pieces(p, "    return None\n") for p in problems.to_dict("records")[:20]]
    with Executor(ExecutorConfig(workers=2)) as executor:
        good = executor.run_many(canonical_items(problems), progress=False)
        bad = executor.run_many(wrong, progress=False)
    assert sum(r.passed for r in good) == 100
    assert sum(r.passed for r in bad) == 0
