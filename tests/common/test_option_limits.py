"""An option's limits are declared once, on its config field, and every command applies those.

Why: Phase 3 once refused ``--n-random-controls 0`` while the config and
``run.py options`` allowed it; two bounds for one option means one of them is wrong.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from common.config import MIN_TRAIN_TOKENS, PipelineConfig, check_option_limits, option_fields
from common.errors import PipelineError
from common.modeling.steering import HOOK_POINTS, POSITION_POLICIES

REPO = Path(__file__).resolve().parents[2]
LIMITED = {f.name for f in option_fields()
           if any(f.metadata.get(k) is not None for k in ("choices", "minimum", "above", "maximum"))}
COMMANDS = sorted({c for f in option_fields() for c in f.metadata["scope"]} - {"*"})


def _field(name: str) -> dataclasses.Field:
    return next(f for f in option_fields() if f.name == name)


def test_defaults_are_within_every_commands_limits() -> None:
    for command in COMMANDS:
        check_option_limits(PipelineConfig(), command)


@pytest.mark.parametrize(("command", "values", "message"), [
    ("3", {"n_random_controls": 0}, "--n-random-controls: must be at least 1, got 0"),
    ("3", {"hook_point": "resid_late"}, "--hook-point: must be one of resid_pre, resid_mid, resid_post"),
    ("3", {"steering_max_new_tokens": 0}, "--steering-max-new-tokens: must be at least 1"),
    ("2", {"general_filter_threshold": 0.0}, "--general-filter-threshold: must be greater than 0"),
    ("2", {"general_filter_threshold": 1.5}, "--general-filter-threshold: must be at most 1"),
    ("2", {"top_k": 0}, "--top-k: must be at least 1"),
    ("train-saes", {"train_tokens": 10}, f"--tokens: must be at least {MIN_TRAIN_TOKENS}"),
    ("1.2", {"temperatures": [0.3, 0.0]}, "--temperatures: must be greater than 0"),
])
def test_a_value_outside_its_declared_limits_is_refused(command: str, values: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        check_option_limits(PipelineConfig(**values), command)


def test_limits_apply_only_where_the_option_means_something() -> None:
    check_option_limits(PipelineConfig(n_random_controls=0), "2")
    check_option_limits(PipelineConfig(general_filter_threshold=1.0), "2")  # the upper end is allowed


def test_phase3_refuses_no_controls_by_the_configs_bound() -> None:
    from phase3_validation.validation import check_config

    with pytest.raises(PipelineError, match="--n-random-controls: must be at least 1"):
        check_config(PipelineConfig(n_random_controls=0, coefficients=[0.0, 1.0]))
    check_config(PipelineConfig(n_random_controls=1, coefficients=[0.0, 1.0]))
    assert _field("n_random_controls").metadata["minimum"] == 1


def test_choices_are_the_steering_modules_own() -> None:
    assert tuple(_field("hook_point").metadata["choices"]) == tuple(HOOK_POINTS)
    assert tuple(_field("steer_positions").metadata["choices"]) == tuple(POSITION_POLICIES)


def _restated_bounds(source: str) -> list[str]:
    """``cfg.<limited option> <op> <constant>`` comparisons: a bound written again beside the declared one."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        named = [s.attr for s in sides if isinstance(s, ast.Attribute) and isinstance(s.value, ast.Name)
                 and s.value.id == "cfg" and s.attr in LIMITED]
        constant = any(isinstance(s, ast.Constant) and isinstance(s.value, (int, float)) and s.value is not None
                       for s in sides)
        member = any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
        if named and (constant or member):
            hits.append(f"{node.lineno}: cfg.{named[0]}")
    return hits


def test_the_scan_finds_a_restated_bound() -> None:
    assert _restated_bounds("if cfg.n_random_controls < 1:\n    raise X\n") == ["1: cfg.n_random_controls"]
    assert _restated_bounds("if cfg.hook_point not in HOOK_POINTS:\n    raise X\n") == ["1: cfg.hook_point"]
    assert _restated_bounds("if cfg.coefficients:\n    pass\n") == []


def test_no_phase_or_command_restates_an_options_bound() -> None:
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in {"tests", ".venv", "shared", "data"} or rel.as_posix() in {"common/config.py", "run.py"}:
            continue
        offenders += [f"{rel}:{hit}" for hit in _restated_bounds(path.read_text(encoding="utf-8"))]
    assert offenders == [], "declare the limit on the option (common/config.py) instead:\n" + "\n".join(offenders)
