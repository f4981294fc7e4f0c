"""Every phase file name is spelled only in ``common/datadir/artifacts.py``; Phase 3's outputs are declared there.

Why a scan: a reader that globs ``validation_*.json`` itself also picks up
``validation_<ts>_metadata.json`` or a stray copy, and a renamed output then
breaks it silently. The scan reads every non-test module's string literals
(f-string fields count as ``*``) and fails on one that is a declared
artifact's name or a glob of it.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pandas as pd
import pytest

from common.datadir import (
    PHASE1_ACTIVATION,
    PHASE2_SCORES,
    PHASE3_OUTPUTS,
    PHASE3_VALIDATION,
    SPLIT,
    Artifact,
    artifacts,
    phase3_output_paths,
    phase3_summary_of,
)
from common.errors import PipelineError

REPO = Path(__file__).resolve().parents[3]
SKIPPED = {"tests", ".venv", "shared", "data"}


def _literals(source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)))
    return out


def _names() -> list[tuple[str, str, object]]:
    out = []
    for a in artifacts.ALL:
        name = Artifact(a.key, a.phase, Path(a.pattern).name, a.fields, a.description)
        out.append((a.key, name.glob(), name.regex()))
    return out


def hand_written_names(source: str) -> list[str]:
    """``line: literal (artifact)`` for each literal naming or globbing a declared artifact's file."""
    found = []
    for line, text in _literals(source):
        if "\n" in text or " " in text:  # prose, not a file name
            continue
        tail = text.rsplit("/", 1)[-1]
        for key, glob, regex in _names():
            if ("*" in tail and fnmatch.fnmatchcase(tail, glob)) or regex.fullmatch(tail):  # type: ignore[attr-defined]
                found.append(f"{line}: {text!r} ({key})")
                break
    return found


def test_the_scan_finds_hand_written_globs_and_names() -> None:
    bad = (
        'a = folder.glob("validation_*.json")\n'
        'b = out / f"summary_{stamp}.md"\n'
        'c = shard.glob("dataset_temp_*.parquet")\n'
        'd = scores / f"layer_{layer}.npz"\n'
        'e = folder / "sae_mbpp.parquet"\n'
    )
    assert len(hand_written_names(bad)) == 5
    assert hand_written_names('x = "validation split"\ny = "results"\nz = "sae"\n') == []


def test_no_phase_file_name_is_written_outside_the_artifact_module() -> None:
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in SKIPPED or rel.as_posix() == "common/datadir/artifacts.py":
            continue
        offenders += [f"{rel}:{hit}" for hit in hand_written_names(path.read_text(encoding="utf-8"))]
    assert offenders == [], "use the declarations in common/datadir/artifacts.py:\n" + "\n".join(offenders)


def test_phase3_outputs_keep_their_names(tmp_path: Path) -> None:
    stamp = "20260101_120000_000001"
    paths = phase3_output_paths(tmp_path, stamp, coverage=True)
    names = {k: p.name for k, p in paths.items()}
    assert names == {
        "validation": f"validation_{stamp}.json", "metrics": f"metrics_{stamp}.parquet",
        "steering": f"steering_{stamp}.parquet", "steering_outcomes": f"steering_outcomes_{stamp}.parquet",
        "probe_metrics": f"probe_metrics_{stamp}.parquet", "roc_png": f"roc_{stamp}.png",
        "metrics_by_temperature_png": f"metrics_by_temperature_{stamp}.png",
        "steering_grid_png": f"steering_grid_{stamp}.png", "flipped_examples": f"flipped_examples_{stamp}.md",
        "summary": f"summary_{stamp}.md", "summary_latest": "summary.md",
        "metadata": f"validation_{stamp}_metadata.json", "coverage_png": f"coverage_{stamp}.png",
    }
    assert {p.parent for p in paths.values()} == {tmp_path / "phase3"}
    assert "coverage_png" not in phase3_output_paths(tmp_path, stamp, coverage=False)
    assert all(a in artifacts.ALL for a in PHASE3_OUTPUTS.values())
    assert phase3_summary_of(paths["validation"]) == paths["summary"]


def test_newest_phase3_result_is_not_its_metadata_or_a_copy(tmp_path: Path) -> None:
    folder = tmp_path / "phase3"
    folder.mkdir()
    older, newer = "20260101_120000_000001", "20260102_120000_000001"
    for name in (f"validation_{older}.json", f"validation_{newer}_metadata.json", f"validation_{newer}_copy.json"):
        (folder / name).write_text("{}")
    assert PHASE3_VALIDATION.newest(tmp_path).name == f"validation_{older}.json"
    assert PHASE3_VALIDATION.latest(tmp_path) == folder / f"validation_{older}.json"
    assert artifacts.PHASE3_METADATA.latest(tmp_path) == folder / f"validation_{newer}_metadata.json"
    assert artifacts.PHASE3_SUMMARY.latest(tmp_path) is None


def test_an_alternation_field_matches_the_whole_name(tmp_path: Path) -> None:
    """``{split}`` is ``sae|hyperparams|validation``: grouped, so ``sae`` alone is no split table's name."""
    assert SPLIT.regex().fullmatch("sae") is None
    for split in ("sae", "hyperparams", "validation"):
        path = SPLIT.path(tmp_path, split=split)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    assert [p.name for p in SPLIT.existing(tmp_path)] == ["hyperparams_mbpp.parquet", "sae_mbpp.parquet",
                                                          "validation_mbpp.parquet"]
    assert PHASE1_ACTIVATION.regex().fullmatch("activations/correct/11_layer_3.npz")
    assert not PHASE1_ACTIVATION.regex().fullmatch("activations/maybe/11_layer_3.npz")


def test_in_folder_and_file_name(tmp_path: Path) -> None:
    for name in ("layer_3.npz", "layer_12.npz", "layer_x.npz", "layer_3.npz.bak"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in PHASE2_SCORES.in_folder(tmp_path)] == ["layer_12.npz", "layer_3.npz"]
    assert PHASE2_SCORES.file_name(layer=5) == "layer_5.npz"
    assert PHASE1_ACTIVATION.file_name(task_id=7, layer=2) == "7_layer_2.npz"
    assert [p.name for p in PHASE1_ACTIVATION.in_folder(tmp_path, task_id=3)] == []
    assert PHASE2_SCORES.in_folder(tmp_path / "absent") == []
    with pytest.raises(ValueError, match="layer"):
        PHASE2_SCORES.file_name()


def test_write_text_bytes_and_checked_documents(tmp_path: Path) -> None:
    stamp = "20260101_120000_000001"
    paths = phase3_output_paths(tmp_path, stamp, coverage=False)
    paths["summary"].parent.mkdir()
    PHASE3_OUTPUTS["summary"].write("# summary\n", paths["summary"])
    PHASE3_OUTPUTS["roc_png"].write(b"\x89PNG", paths["roc_png"])
    PHASE3_OUTPUTS["metrics"].write(pd.DataFrame(), paths["metrics"])
    assert paths["summary"].read_text() == "# summary\n"
    assert paths["roc_png"].read_bytes() == b"\x89PNG"
    assert pd.read_parquet(paths["metrics"]).empty
    with pytest.raises(PipelineError, match="missing .*configuration"):
        PHASE3_VALIDATION.write({"phase": "3"}, paths["validation"])
    assert not paths["validation"].exists()
