"""Phase 0.1: split the problems into sae 50% / hyperparams 10% / validation 40%.

Why three splits (docs/design.md rule 6): latents are *chosen* on the sae split,
thresholds and steering coefficients are *tuned* on the hyperparams split, and
every *reported* number comes from the validation split. Stratifying by
difficulty keeps the three splits comparable.

A rerun with the same settings rewrites the same splits; one with other
settings (seed, fractions, strata, difficulty mapping) first moves the earlier
split tables and their metadata to ``archive/<run id>/``, never replacing them
silently: later phases' outputs may have been made against them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.benchmarks.mbpp import load_mbpp, mbpp_source_description
from common.config import PipelineConfig
from common.datadir import (
    DIFFICULTY,
    SPLIT,
    SPLIT_METADATA,
    RunClock,
    RunRecord,
    archive,
    build_metadata,
    file_sha256,
    phase_dir,
    timestamp,
)
from common.errors import PipelineError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("sae", "hyperparams", "validation")


def difficulty_strata(complexity: pd.Series, n_strata: int) -> pd.Series:
    """Quantile bins of complexity; equal complexities always share a stratum."""
    codes = pd.qcut(complexity, q=n_strata, labels=False, duplicates="drop")
    return codes.astype(int)


def allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Sizes summing to ``n``, each within one of ``n * fraction`` (largest remainder)."""
    raw = np.asarray(fractions, dtype=float) * n
    sizes = np.floor(raw).astype(int)
    remainder = n - int(sizes.sum())
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[:remainder]] += 1
    return sizes.tolist()


def split_tasks(
    difficulty: pd.DataFrame, fractions: tuple[float, ...], n_strata: int, seed: int
) -> pd.DataFrame:
    """Assign every task to one split; returns task_id, stratum, split."""
    if len(fractions) != len(SPLIT_NAMES) or any(f <= 0 for f in fractions):
        # Every split is read: sae by Phase 2, hyperparams and validation by Phase 3.
        raise PipelineError(
            f"--split-fractions needs {len(SPLIT_NAMES)} numbers greater than 0 ({', '.join(SPLIT_NAMES)}: "
            f"Phase 2 reads sae, Phase 3 hyperparams and validation), got {','.join(f'{f:g}' for f in fractions)}"
        )
    total = float(sum(fractions))
    if not np.isclose(total, 1.0):
        raise PipelineError(f"--split-fractions must sum to 1, got {total:g}")
    df = difficulty[["task_id", "cyclomatic_complexity"]].copy()
    df["stratum"] = difficulty_strata(df["cyclomatic_complexity"], n_strata)
    rng = np.random.default_rng(seed)
    parts = []
    for stratum in sorted(df["stratum"].unique()):
        members = df[df["stratum"] == stratum].sort_values("task_id")
        shuffled = members.iloc[rng.permutation(len(members))]
        sizes = allocate(len(shuffled), fractions)
        labels = np.repeat(np.array(SPLIT_NAMES), sizes)
        parts.append(shuffled.assign(split=labels))
    out = pd.concat(parts).sort_values("task_id").reset_index(drop=True)
    empty = [name for name in SPLIT_NAMES if not (out["split"] == name).any()]
    if empty:
        raise PipelineError(
            f"--split-fractions {','.join(f'{f:g}' for f in fractions)} leaves the {empty[0]} split of {len(out)} tasks "
            "empty; give it a larger fraction"
        )
    return out


def set_aside_other_splits(out_dir: Path, settings: dict[str, object]) -> RunRecord | None:
    """The earlier run's record when its settings are these; else move its splits to ``archive/`` (None)."""
    meta_path = out_dir / SPLIT_METADATA.pattern
    names = [SPLIT.pattern.format(split=n) for n in SPLIT_NAMES] + [SPLIT_METADATA.pattern]
    if not any((out_dir / n).exists() for n in names):
        return None
    earlier: RunRecord | None = None
    try:
        earlier = RunRecord.from_dict(SPLIT_METADATA.read_json(meta_path, needed=("run",))["run"], meta_path)
    except PipelineError as exc:
        logger.warning("phase 0.1: earlier splits of unknown settings (%s)", exc)
    if earlier is not None and earlier.settings == settings:
        return earlier  # the same settings give the same splits: rewriting them loses nothing
    dest = archive(out_dir, names, earlier.run_id if earlier is not None else None)
    changed = sorted(k for k in settings if earlier is None or earlier.settings.get(k) != settings[k])
    logger.warning(
        "phase 0.1: the earlier splits used other %s; moved to %s (nothing deleted). Phase 1.2 and 2 outputs made "
        "on them stay valid for those splits only: move the folder's files back to use them again",
        ", ".join(changed), dest,
    )
    return None


def run(cfg: PipelineConfig) -> Path:
    """Write the three split parquets and ``split_metadata.json``; return the folder."""
    clock = RunClock()
    difficulty_path = DIFFICULTY.resolve(cfg.input, cfg.data_dir)
    difficulty = DIFFICULTY.read_table(difficulty_path)
    problems = load_mbpp(cfg.mbpp_path)
    unknown = set(difficulty["task_id"]) ^ set(problems["task_id"])
    if unknown:
        raise PipelineError(
            f"{difficulty_path} and the MBPP source disagree on {len(unknown)} task ids "
            f"(e.g. {sorted(unknown)[0]}); rerun phase 0 with the same --mbpp-path"
        )
    assignment = split_tasks(difficulty, tuple(cfg.split_fractions), cfg.n_strata, cfg.seed)
    merged = problems.merge(assignment, on="task_id", validate="one_to_one")

    out_dir = phase_dir(cfg.data_dir, "0.1")
    settings = {
        "seed": cfg.seed, "split_fractions": list(cfg.split_fractions), "n_strata": cfg.n_strata,
        "difficulty_sha256": file_sha256(difficulty_path), "mbpp": mbpp_source_description(cfg.mbpp_path),
    }
    same = set_aside_other_splits(out_dir, settings)
    record = RunRecord(run_id=same.run_id if same is not None else timestamp(), settings=settings)
    outputs: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    for name in SPLIT_NAMES:
        part = merged[merged["split"] == name].drop(columns="split").reset_index(drop=True)
        path = SPLIT.path(cfg.data_dir, split=name)
        SPLIT.write(part, path)
        record.add_files(out_dir, [path.name])
        outputs[name] = path
        sizes[name] = len(part)
    per_stratum = (
        merged.groupby(["stratum", "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLIT_NAMES), fill_value=0)
    )
    bounds = (
        merged.groupby("stratum")["cyclomatic_complexity"].agg(["min", "max", "size"]).reset_index()
    )
    meta = build_metadata(
        "0.1",
        cfg,
        clock,
        inputs={"difficulty": difficulty_path, **({"mbpp": cfg.mbpp_path} if cfg.mbpp_path else {})},
        outputs=outputs,
        extra={
            "mbpp_source": mbpp_source_description(cfg.mbpp_path),
            "run": record.to_dict(),
            "sizes": sizes,
            "n_tasks": int(len(merged)),
            "fractions": dict(zip(SPLIT_NAMES, cfg.split_fractions)),
            "strata": [
                {
                    "stratum": int(r["stratum"]),
                    "complexity_min": int(r["min"]),
                    "complexity_max": int(r["max"]),
                    "n": int(r["size"]),
                    **{name: int(per_stratum.loc[r["stratum"], name]) for name in SPLIT_NAMES},
                }
                for _, r in bounds.iterrows()
            ],
        },
    )
    SPLIT_METADATA.write(meta, out_dir / SPLIT_METADATA.pattern)
    logger.info("phase 0.1: split %s -> %s", sizes, out_dir)
    return out_dir
