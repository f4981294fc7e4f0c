"""Re-deriving every steering p-value of a Phase 3 run from its ``steering_outcomes_<ts>.parquet`` (a plain module).

Why shared: the quick end-to-end test (no difference-of-means run) and the
demo's slow end-to-end test (with it) check the same promise, that a reader
holding only the per-task outcomes gets every p-value in the results JSON.
McNemar p-values and each control's paired sign test are recomputed with
scipy; the permutation p against the controls is recomputed by
``control_comparison`` and, where the relabellings are few enough, by
enumerating every one of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from phase3_validation.steering_eval import control_comparison
from phase3_validation.steering_stats import is_degenerate


def passed(outcomes: pd.DataFrame, split: str, direction: str, run: str, alpha: float) -> pd.Series:
    """One run's labels by task id, from the outcomes table."""
    rows = outcomes[(outcomes["split"] == split) & (outcomes["direction"] == direction) & (outcomes["run"] == run)
                    & (outcomes["alpha"] == alpha)]
    assert len(rows), (split, direction, run, alpha)
    return rows.set_index("task_id")["passed"].astype(bool).sort_index()


def brute_force_p(target: np.ndarray, controls: list[np.ndarray]) -> float | None:
    """The permutation p by enumerating every assignment of the target label on the tasks where runs differ."""
    values = np.stack([target, *controls], axis=1)
    varying = values[(values != values[:, :1]).any(axis=1)]
    n, k1 = varying.shape
    if k1 ** n > 200_000:
        return None
    if n == 0:
        return 1.0
    choices = np.array(list(np.ndindex(*(k1,) * n)))
    sums = varying[np.arange(n), choices].sum(axis=1)
    return float(np.mean(sums >= varying[:, 0].sum() - 1e-9))


def _mcnemar(b: int, c: int) -> float:
    return 1.0 if b + c == 0 else float(sps.binomtest(b, b + c).pvalue)


def check_run(outcomes: pd.DataFrame, split: str, direction: str, run: str, alpha: float, row: dict[str, Any],
              test: dict[str, Any] | None = None) -> int:
    """Recompute one steered run's McNemar p and p vs controls (and each control's, given ``test``)."""
    base = passed(outcomes, split, "none", "alpha0", 0.0)
    after = passed(outcomes, split, direction, run, alpha).loc[base.index]
    assert row["mcnemar_p"] == pytest.approx(_mcnemar(int((~base & after).sum()), int((base & ~after).sum())))
    controls = [passed(outcomes, split, direction, f"control_{i}", alpha).loc[base.index]
                for i in range(row["n_controls"])]
    sign = 1 if direction == "correct" else -1

    def effect(labels: pd.Series) -> np.ndarray:
        return sign * ((~base & labels).astype(int) - (base & ~labels).astype(int)).to_numpy()

    again = control_comparison(base.to_numpy(), after.to_numpy(), [c.to_numpy() for c in controls], direction,
                               require_both=split != "humaneval")
    assert row["p_vs_controls"] == pytest.approx(again["p_vs_controls"])
    brute = brute_force_p(effect(after), [effect(c) for c in controls])
    if brute is not None:
        assert row["p_vs_controls"] == pytest.approx(brute)
    for mine, control in zip((test or {}).get("per_control", []), controls):
        ahead, behind = int((effect(after) > effect(control)).sum()), int((effect(after) < effect(control)).sum())
        assert (mine["tasks_target_ahead"], mine["tasks_control_ahead"]) == (ahead, behind)
        assert mine["paired_p"] == pytest.approx(_mcnemar(ahead, behind))
    return 1


def check_steering_p_values(doc: dict[str, Any], outcomes: pd.DataFrame, steering: pd.DataFrame) -> int:
    """Every steering p-value in ``doc`` (validation JSON) re-derived from ``outcomes``; returns how many runs."""
    assert not outcomes.duplicated(["split", "direction", "run", "alpha", "task_id"]).any()
    assert (outcomes["degenerate"] == [is_degenerate(t, c) for t, c in
                                       zip(outcomes["generated_text"], outcomes["extracted_code"])]).all()
    checked = 0
    for direction, info in doc["steering"]["directions"].items():
        for experiment, run in ((info, "target"), (info.get("diff_means"), "diffmeans")):
            if experiment is None:
                continue
            for row in experiment["grid_hyperparams"]:
                checked += check_run(outcomes, "hyperparams", direction, run, row["alpha"], row)
            checked += check_run(outcomes, "validation", direction, run, experiment["chosen_alpha"],
                                 experiment["validation"], experiment["control_test"])
        for row in info["opposite_sign"]["grid_hyperparams"]:
            checked += check_run(outcomes, "hyperparams", direction, "target", row["alpha"], row)
    transfer = (doc.get("transfer") or {}).get("steering") or {}
    for direction, info in (transfer.get("directions") or {}).items():
        checked += check_run(outcomes, "humaneval", direction, "target", info["alpha"], info["humaneval"],
                             info["control_test"])
    prompting = doc["steering"]["prompting_baseline"]["rates"]
    base = passed(outcomes, "validation", "none", "alpha0", 0.0)
    after = passed(outcomes, "validation", "none", "prompting", 0.0).loc[base.index]
    assert prompting["mcnemar_p"] == pytest.approx(_mcnemar(int((~base & after).sum()), int((base & ~after).sum())))
    # changed_task_ids is kept: the tasks whose program or label differs from the alpha = 0 rerun.
    roles = steering["role"].isin(["grid", "validation", "opposite", "transfer"])
    for row in steering[roles].itertuples():
        run = "target" if row.vector == "sae_latent" else "diffmeans"
        base_rows = outcomes[(outcomes["split"] == row.split) & (outcomes["run"] == "alpha0")].set_index("task_id")
        mine = outcomes[(outcomes["split"] == row.split) & (outcomes["direction"] == row.direction)
                        & (outcomes["run"] == run) & (outcomes["alpha"] == row.alpha)].set_index("task_id")
        mine = mine.loc[base_rows.index]
        differ = (mine["extracted_code"] != base_rows["extracted_code"]) | (mine["passed"] != base_rows["passed"])
        assert sorted(row.changed_task_ids) == sorted(int(t) for t in base_rows.index[differ])
        assert row.n_degenerate == int(mine["degenerate"].sum())
    return checked
