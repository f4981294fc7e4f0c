"""Every file one phase writes and a later phase reads, declared once.

Why: phases never import each other; they meet only through these files. When
each reader guessed a file's schema (probing several column names, globbing
every ``dataset_temp_*.parquet`` it could find), tables of two different runs
were silently mixed into one analysis. Here each artifact says which phase
writes it, where (its name pattern under the phase folder, the seed's layout
kept), what it must hold (columns, JSON keys or arrays), and how to write,
find and read it. Writers check the whole schema; readers check the fields
they use and name the file and what is missing in one line.

Runs: the generating phases record in their metadata a :class:`RunRecord`:
the files that belong to the run (with sha256), the settings that make two
runs comparable, and the task slices covered. Readers read exactly the files
a run record lists, and refuse a folder holding files of another run.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from common.datadir.metadata import file_sha256
from common.datadir.paths import PHASE_COMMANDS, PHASE_DIRS, name_timestamp, timestamp
from common.datadir.phase3_result import SCHEMA_VERSION, Phase3Result, Phase3ResultError, from_json, to_json
from common.datadir.storage import atomic_write_bytes, atomic_write_text, json_safe, read_json, write_json, write_parquet
from common.errors import PipelineError

logger = logging.getLogger(__name__)

ARCHIVE_DIR = "archive"

# What each ``{field}`` of a pattern can be, so that only names a phase writes fit (see Artifact.regex).
_FIELD_REGEX: dict[str, str] = {
    "ts": r"\d{8}_\d{6}_\d{6}",
    "temp": r"m?\d+(?:_\d+)?(?:em?\d+)?",  # temperature_label: 0_3, 1_0, m0_5, 1em05
    "split": r"sae|hyperparams|validation",
    "label": r"correct|incorrect",
    "task_id": r"\d+",
    "layer": r"\d+",
}


@dataclass(frozen=True)
class Artifact:
    """One kind of inter-phase file.

    ``pattern`` is relative to the writer's phase folder, with ``{field}``
    placeholders (``ts``, ``split``, ``temp``, ``label``, ``task_id``, ``layer``).
    ``fields`` are the columns of a parquet, the top-level keys of a JSON, or
    the arrays of an npz file, that every such file holds.
    """

    key: str
    phase: str
    pattern: str
    fields: tuple[str, ...]
    description: str
    # True when the writer's metadata (``<stem>_metadata.json``) holds a run record listing the file:
    # discovery then takes only files their run lists (a file dropped beside them is never read).
    run_listed: bool = False

    @property
    def kind(self) -> str:
        return Path(self.pattern).suffix.lstrip(".")

    def glob(self, **values: Any) -> str:
        """The pattern with the given fields filled in and the others as ``*``."""
        return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), "*")), self.pattern)

    def folder(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / PHASE_DIRS[self.phase]

    def path(self, data_dir: str | Path, **values: Any) -> Path:
        """The file's path under ``data_dir``; every placeholder must be given."""
        try:
            name = self.pattern.format(**values)
        except KeyError as exc:
            raise ValueError(f"{self.key}: no value for {exc} in {self.pattern}") from exc
        return self.folder(data_dir) / name

    def file_name(self, **values: Any) -> str:
        """The last part of the path (``layer_3.npz``), for a file in a folder found some other way."""
        try:
            return Path(self.pattern).name.format(**values)
        except KeyError as exc:
            raise ValueError(f"{self.key}: no value for {exc} in {self.pattern}") from exc

    def regex(self, **values: Any) -> re.Pattern[str]:
        """The exact names this artifact can have (given fields fixed): nothing a user or a tool adds fits.

        Why not the glob alone: ``dataset_*.parquet`` also matches
        ``dataset_<ts>_labelled.parquet``, which then passed for the newest dataset.
        """
        def field(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return re.escape(str(values[name]))
            # Grouped: an alternation (``sae|hyperparams|validation``) must not swallow the rest of the name.
            return f"(?:{_FIELD_REGEX.get(name, r'[^/]+?')})"

        pieces = re.split(r"(\{\w+\})", self.pattern)
        return re.compile("".join(field(m) if (m := re.fullmatch(r"\{(\w+)\}", p)) else re.escape(p) for p in pieces))

    def in_folder(self, folder: str | Path, **values: Any) -> list[Path]:
        """Files directly in ``folder`` whose names fit the pattern's last part exactly, sorted by name.

        For a folder that is not the phase folder of a data directory: a
        launcher worker's shard, a Phase 2 scores folder, one label's
        activation folder.
        """
        folder = Path(folder)
        if not folder.is_dir():
            return []
        name = Artifact(self.key, self.phase, Path(self.pattern).name, self.fields, self.description)
        exact = name.regex(**values)
        return sorted(p for p in folder.glob(name.glob(**values)) if exact.fullmatch(p.name))

    def existing(self, data_dir: str | Path, **values: Any) -> list[Path]:
        """Files in the phase folder whose names fit the pattern exactly, sorted by name."""
        folder = self.folder(data_dir)
        if not folder.is_dir():
            return []
        exact = self.regex(**values)
        return sorted(p for p in folder.glob(self.glob(**values)) if exact.fullmatch(p.relative_to(folder).as_posix()))

    def listed_by_its_run(self, path: Path) -> bool:
        """Whether ``path``'s metadata holds a run record that lists it (always True for an artifact without runs)."""
        if not self.run_listed:
            return True
        meta_path = metadata_path_of(path)
        try:
            files = read_json(meta_path)["run"]["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return isinstance(files, dict) and path.name in files

    def newest(self, data_dir: str | Path, **values: Any) -> Path:
        """The newest such file by the timestamp in its name; a PipelineError naming the producer if none.

        Only exact names count, and for an artifact with run records only files
        their run lists: a stray table or metadata file never becomes an input.
        """
        found = self.existing(data_dir, **values)
        candidates = [p for p in found if name_timestamp(p) is not None and self.listed_by_its_run(p)]
        for stray in sorted(set(found) - set(candidates)):
            logger.warning("ignoring %s: no run record in %s lists it", stray, metadata_path_of(stray).name)
        if not candidates:
            unlisted = f" ({found[-1].name} is listed by no run record)" if found else ""
            raise PipelineError(
                f"no Phase {self.phase} output ({self.glob(**values)}) in {self.folder(data_dir)}{unlisted}; "
                f"run `{PHASE_COMMANDS[self.phase]}` first or point --input at a file"
            )
        return max(candidates, key=lambda p: (name_timestamp(p), p.name))

    def latest(self, data_dir: str | Path, **values: Any) -> Path | None:
        """The existing file with the newest timestamp in its name, or None: for readers to whom absence is normal.

        Unlike :meth:`newest`, no run record is asked for and nothing is refused
        (the study's report says "not measured" for a missing piece).
        """
        found = self.existing(data_dir, **values)
        return max(found, key=lambda p: (name_timestamp(p) or "", p.name)) if found else None

    def resolve(self, explicit: str | None, data_dir: str | Path) -> Path:
        """``--input`` when given (must exist), otherwise :meth:`newest`."""
        if explicit:
            path = Path(explicit)
            if not path.exists():
                raise PipelineError(f"--input {explicit} does not exist")
            return path
        return self.newest(data_dir)

    def check(self, present: Sequence[str], path: Path, needed: Sequence[str] | None = None) -> None:
        """One-line error naming ``path`` when a needed field is absent (default: every field)."""
        wanted = self.fields if needed is None else tuple(needed)
        missing = [f for f in wanted if f not in set(present)]
        if missing:
            raise PipelineError(
                f"{path}: missing {', '.join(missing)}; a {self.description} "
                f"(written by `{PHASE_COMMANDS[self.phase]}`) holds {', '.join(self.fields)}"
            )

    def read_table(self, path: str | Path, needed: Sequence[str] | None = None) -> pd.DataFrame:
        """A parquet artifact, checked for ``needed`` columns (default all)."""
        p = Path(path)
        if not p.is_file():
            raise PipelineError(f"{p} is not a file; expected a {self.description}")
        try:
            table = pd.read_parquet(p)
        except Exception as exc:  # pyarrow raises many types for a bad file
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PipelineError(f"cannot read {self.description} {p}: {first}") from exc
        self.check(list(table.columns), p, needed)
        return table

    def read_json(self, path: str | Path, needed: Sequence[str] | None = None) -> dict[str, Any]:
        """A JSON artifact (an object), checked for ``needed`` keys (default all)."""
        p = Path(path)
        try:
            doc = read_json(p)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"cannot read {self.description} {p}: {exc}") from exc
        if not isinstance(doc, dict):
            raise PipelineError(f"{p} is not a {self.description} (not a JSON object)")
        self.check(list(doc), p, needed)
        return doc

    def write(self, obj: pd.DataFrame | dict[str, Any] | str | bytes, path: str | Path) -> Path:
        """Write atomically after checking the whole schema (a writer never leaves a field out).

        Text (a Markdown page) and bytes (a PNG) have no schema; they are
        written atomically like the rest.
        """
        p = Path(path)
        if isinstance(obj, bytes):
            return atomic_write_bytes(p, obj)
        if isinstance(obj, str):
            return atomic_write_text(p, obj)
        if isinstance(obj, pd.DataFrame):
            self.check(list(obj.columns), p)
            return write_parquet(obj, p)
        self.check(list(obj), p)
        return write_json(p, obj)


# --------------------------------------------------------------------------- the declarations

MBPP_COLUMNS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")

DIFFICULTY = Artifact(
    "difficulty", "0", "difficulty_{ts}.parquet", ("task_id", "cyclomatic_complexity"),
    "Phase 0 difficulty mapping",
)
SPLIT = Artifact(
    "split", "0.1", "{split}_mbpp.parquet", (*MBPP_COLUMNS, "cyclomatic_complexity", "stratum"),
    "Phase 0.1 split table",
)
SPLIT_METADATA = Artifact(
    "split_metadata", "0.1", "split_metadata.json", ("phase", "config", "inputs", "outputs", "sizes", "seed"),
    "Phase 0.1 split metadata",
)
PHASE1_DATASET = Artifact(
    "phase1_dataset", "1", "dataset_{ts}.parquet",
    ("task_id", "prompt", "generated_text", "extracted_code", "passed", "outcome", "detail",
     "n_generated_tokens", "mean_logprob", "n_prompt_tokens", "stop_reason", "gen_time_s", "exec_time_s",
     "cyclomatic_complexity"),
    "Phase 1.0 dataset",
    run_listed=True,
)
PHASE1_METADATA = Artifact(
    "phase1_metadata", "1", "dataset_{ts}_metadata.json", ("phase", "config", "inputs", "outputs", "model", "run"),
    "Phase 1.0 metadata",
)
PHASE1_ACTIVATION = Artifact(
    "phase1_activation", "1", "activations/{label}/{task_id}_layer_{layer}.npz", ("activation", "layer", "task_id"),
    "Phase 1.0 activation file",
)
TEMPERATURE_TABLE = Artifact(
    "temperature_table", "1.2", "dataset_temp_{temp}.parquet",
    ("task_id", "temperature", "sample_index", "prompt", "generated_text", "extracted_code", "passed",
     "outcome", "detail", "n_generated_tokens", "stop_reason", "gen_time_s", "exec_time_s"),
    "Phase 1.2 temperature table",
)
TEMPERATURE_METADATA = Artifact(
    "temperature_metadata", "1.2", "temperature_metadata.json", ("phase", "config", "inputs", "outputs", "model", "run"),
    "Phase 1.2 metadata",
)
TEMPERATURE_ACTIVATION = Artifact(
    "temperature_activation", "1.2", "activations/{task_id}_layer_{layer}.npz", ("activation", "layer", "task_id"),
    "Phase 1.2 activation file",
)
PHASE2_RESULTS = Artifact(
    "phase2_results", "2", "results_{split}_{ts}.json",
    ("split", "n_tasks", "layers", "sae", "top_latents", "permutation_null", "scores_dir", "labels",
     "phase1_model", "label_source"),
    "Phase 2 results file",
)
PHASE2_METADATA = Artifact(
    "phase2_metadata", "2", "results_{split}_{ts}_metadata.json", ("phase", "config", "inputs", "outputs"),
    "Phase 2 metadata",
)
PHASE2_TOP = Artifact(
    "phase2_top", "2", "top_latents_{split}_{ts}.parquet",
    ("direction", "rank", "layer", "latent", "f_correct", "f_incorrect", "separation_score",
     "mean_correct", "mean_incorrect", "t_stat", "general_freq", "p_family"),
    "Phase 2 top-latent table",
)
PHASE2_SCORES = Artifact(
    "phase2_scores", "2", "scores_{split}_{ts}/layer_{layer}.npz",
    ("f_correct", "f_incorrect", "separation_correct", "separation_incorrect",
     "mean_correct", "mean_incorrect", "t_stat", "general_freq", "general_flagged"),
    "Phase 2 score arrays",
)
STEERING_OUTCOMES = Artifact(
    "steering_outcomes", "3", "steering_outcomes_{ts}.parquet",
    ("split", "direction", "run", "alpha", "task_id", "passed", "outcome", "degenerate", "degenerate_reason",
     "generated_text", "extracted_code", "layer", "latent", "vector_norm"),
    "Phase 3 per-task steering outcomes (one row per split, direction, run, alpha and task; run is alpha0, target, "
    "control_<i>, diffmeans or prompting)",
)
PHASE3_VALIDATION = Artifact(
    "phase3_validation", "3", "validation_{ts}.json",
    tuple(f.name for f in dataclasses.fields(Phase3Result)),
    "Phase 3 result document (everything machine-readable; the summary is rendered from it)",
)
PHASE3_METADATA = Artifact(
    "phase3_metadata", "3", "validation_{ts}_metadata.json", ("phase", "config", "inputs", "outputs"),
    "Phase 3 metadata",
)
# The tables' columns depend on what was measured (an empty table has none), so only their names are declared.
PHASE3_METRICS = Artifact(
    "phase3_metrics", "3", "metrics_{ts}.parquet", (),
    "Phase 3 latent metrics (one row per latent x split and temperature, HumanEval transfer rows included)",
)
PHASE3_PROBE_METRICS = Artifact(
    "phase3_probe_metrics", "3", "probe_metrics_{ts}.parquet", (),
    "Phase 3 probe metrics (one row per probe x split and temperature)",
)
PHASE3_STEERING = Artifact(
    "phase3_steering", "3", "steering_{ts}.parquet", (),
    "Phase 3 steering table (one row per steered run, control and alpha = 0 rerun)",
)
PHASE3_ROC_PNG = Artifact("phase3_roc_png", "3", "roc_{ts}.png", (), "Phase 3 ROC plot")
PHASE3_METRICS_BY_TEMPERATURE_PNG = Artifact(
    "phase3_metrics_by_temperature_png", "3", "metrics_by_temperature_{ts}.png", (), "Phase 3 metrics-by-temperature plot",
)
PHASE3_STEERING_GRID_PNG = Artifact("phase3_steering_grid_png", "3", "steering_grid_{ts}.png", (), "Phase 3 steering plot")
PHASE3_COVERAGE_PNG = Artifact(
    "phase3_coverage_png", "3", "coverage_{ts}.png", (), "Phase 3 coverage-accuracy plot (only with reviewer coverage)",
)
PHASE3_FLIPPED_EXAMPLES = Artifact(
    "phase3_flipped_examples", "3", "flipped_examples_{ts}.md", (), "Phase 3 flipped-program examples",
)
PHASE3_SUMMARY = Artifact("phase3_summary", "3", "summary_{ts}.md", (), "Phase 3 summary")
PHASE3_SUMMARY_LATEST = Artifact("phase3_summary_latest", "3", "summary.md", (), "copy of the newest Phase 3 summary")
DIFFICULTY_METADATA = Artifact(
    "difficulty_metadata", "0", "difficulty_{ts}_metadata.json", ("phase", "config", "inputs", "outputs"),
    "Phase 0 metadata",
)

# Phase 3's outputs of one run, by the key its result document's ``outputs`` and its metadata use.
PHASE3_OUTPUTS: dict[str, Artifact] = {
    "validation": PHASE3_VALIDATION,
    "metrics": PHASE3_METRICS,
    "steering": PHASE3_STEERING,
    "steering_outcomes": STEERING_OUTCOMES,
    "probe_metrics": PHASE3_PROBE_METRICS,
    "roc_png": PHASE3_ROC_PNG,
    "metrics_by_temperature_png": PHASE3_METRICS_BY_TEMPERATURE_PNG,
    "steering_grid_png": PHASE3_STEERING_GRID_PNG,
    "flipped_examples": PHASE3_FLIPPED_EXAMPLES,
    "summary": PHASE3_SUMMARY,
    "summary_latest": PHASE3_SUMMARY_LATEST,
    "metadata": PHASE3_METADATA,
    "coverage_png": PHASE3_COVERAGE_PNG,
}

ALL: tuple[Artifact, ...] = (
    DIFFICULTY, DIFFICULTY_METADATA, SPLIT, SPLIT_METADATA, PHASE1_DATASET, PHASE1_METADATA, PHASE1_ACTIVATION,
    TEMPERATURE_TABLE, TEMPERATURE_METADATA, TEMPERATURE_ACTIVATION,
    PHASE2_RESULTS, PHASE2_METADATA, PHASE2_TOP, PHASE2_SCORES, *PHASE3_OUTPUTS.values(),
)


def phase3_output_paths(data_dir: str | Path, stamp: str, coverage: bool) -> dict[str, Path]:
    """Where one Phase 3 run writes, by output key; the coverage plot only when it is drawn."""
    keys = [k for k in PHASE3_OUTPUTS if coverage or k != "coverage_png"]
    return {k: PHASE3_OUTPUTS[k].path(data_dir, ts=stamp) for k in keys}


def phase3_summary_of(result: Path) -> Path:
    """The ``summary_<ts>.md`` written beside a ``validation_<ts>.json`` (same run, same timestamp)."""
    return result.parent / PHASE3_SUMMARY.pattern.format(ts=name_timestamp(result))


def write_phase3_result(path: str | Path, result: Phase3Result) -> Path:
    """Write Phase 3's result document atomically: its JSON form, NaN and infinities as null."""
    return PHASE3_VALIDATION.write(json_safe(to_json(result)), path)


def read_phase3_result(path: str | Path) -> Phase3Result:
    """Phase 3's result document, checked against this code's schema; anything else is one line.

    A file without ``schema_version`` was written before the field existed: it is read as version 1
    when its keys are version 1's (they are the same document), and refused otherwise.
    """
    p = Path(path)
    try:
        doc = read_json(p)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read {PHASE3_VALIDATION.description} {p}: {exc}") from exc
    if not isinstance(doc, dict):
        raise PipelineError(f"{p} is not a {PHASE3_VALIDATION.description} (not a JSON object)")
    version = doc.get("schema_version", 1)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise PipelineError(f"{p} is a Phase 3 result of schema version {version!r}; this code reads version "
                            f"{SCHEMA_VERSION}: rerun Phase 3 with this code, or read it with the code that wrote it")
    try:
        return from_json(Phase3Result, {"schema_version": SCHEMA_VERSION, **doc})
    except Phase3ResultError as exc:
        raise PipelineError(f"{p} is not a Phase 3 result of schema version {SCHEMA_VERSION}: {exc}") from exc


def temperature_label(temperature: float) -> str:
    """``0.3`` -> ``0_3``, ``1.0`` -> ``1_0``: the ``{temp}`` of ``dataset_temp_{temp}.parquet``."""
    text = f"{temperature:g}".replace("-", "m").replace(".", "_")
    return text if "_" in text else text + "_0"


def metadata_path_of(dataset_path: Path) -> Path:
    """``dataset_<ts>.parquet`` -> ``dataset_<ts>_metadata.json`` (and likewise for results files)."""
    return dataset_path.with_name(f"{dataset_path.stem}_metadata.json")


def newest_phase2_results(data_dir: str | Path, split: str) -> Path:
    """The newest ``results_<split>_<ts>.json``; a PipelineError naming the command when there is none."""
    return PHASE2_RESULTS.newest(data_dir, split=split)


# --------------------------------------------------------------------------- runs


@dataclass
class RunRecord:
    """Which files belong to one run of a generating phase, and what makes runs comparable.

    ``files`` maps a file name (relative to the phase folder) to its sha256, so a
    table rewritten by another run is detected. ``settings`` are what must be
    equal for two slices to be merged into one run (model, temperatures, seed,
    ...); ``slices`` are the inclusive task-position ranges covered.
    """

    run_id: str
    settings: dict[str, Any]
    slices: list[list[int]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "settings": self.settings, "slices": self.slices, "files": self.files}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: Path) -> RunRecord:
        try:
            return cls(
                run_id=str(values["run_id"]),
                settings=dict(values["settings"]),
                slices=[[int(a), int(b)] for a, b in values["slices"]],
                files={str(k): str(v) for k, v in values["files"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PipelineError(f"{where}: malformed run record ({exc!r})") from exc

    def add_files(self, folder: Path, names: Sequence[str]) -> None:
        for name in names:
            self.files[name] = file_sha256(folder / name)

    def verify(self, folder: Path, meta_path: Path) -> None:
        """Every listed file exists with the recorded hash; else one line naming it."""
        for name, sha in sorted(self.files.items()):
            path = folder / name
            if not path.is_file():
                raise PipelineError(f"{path} is listed by {meta_path} (run {self.run_id}) but missing")
            if file_sha256(path) != sha:
                raise PipelineError(
                    f"{path} was rewritten after run {self.run_id} recorded it in {meta_path} "
                    "(its sha256 differs): the folder mixes tables of two runs; rerun the phase"
                )


def merge_slices(slices: Sequence[Sequence[int]]) -> list[list[int]]:
    """Union of inclusive ranges, as sorted disjoint ranges (adjacent ones joined)."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in slices):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def archive(folder: Path, names: Sequence[str], stamp: str | None = None) -> Path | None:
    """Move ``names`` (files or folders in ``folder``) to ``folder/archive/<stamp>/``; returns it.

    Why move rather than delete or overwrite: an earlier run made with other
    settings is still someone's GPU hours; it stays whole and readable (point
    ``--input`` at it, or move it back) instead of being silently replaced.
    """
    present = [n for n in names if (folder / n).exists()]
    if not present:
        return None
    dest = folder / ARCHIVE_DIR / (stamp or timestamp())
    if dest.exists():
        dest = dest.with_name(f"{dest.name}_{timestamp()}")
    dest.mkdir(parents=True)
    for name in present:
        shutil.move(str(folder / name), str(dest / name))
    return dest


# --------------------------------------------------------------------------- Phase 1.2 runs


@dataclass
class TemperatureRun:
    """One Phase 1.2 run as its metadata records it: tables by temperature, the record, the metadata."""

    folder: Path
    meta_path: Path
    meta: dict[str, Any]
    record: RunRecord
    tables: dict[float, Path]

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def prompt_format(self) -> str:
        return recorded_prompt_format(self.meta)

    def samples(self, needed: Sequence[str]) -> pd.DataFrame:
        """All listed tables' rows (only ``needed`` columns), in temperature order."""
        frames = [TEMPERATURE_TABLE.read_table(p, needed)[list(needed)] for _, p in sorted(self.tables.items())]
        return pd.concat(frames, ignore_index=True)


def load_temperature_run(folder: str | Path) -> TemperatureRun | None:
    """The Phase 1.2 run in ``folder``, verified; None when the folder holds no Phase 1.2 output.

    Refused with one line: tables but no metadata, a listed table missing or
    rewritten, or a ``dataset_temp_*.parquet`` the run does not list (tables of
    two runs in one folder).
    """
    folder = Path(folder)
    meta_path = folder / TEMPERATURE_METADATA.pattern
    exact = TEMPERATURE_TABLE.regex()  # a name no run writes (``..._labelled.parquet``) is not a table: ignored
    found = sorted(p.name for p in folder.glob(TEMPERATURE_TABLE.glob()) if exact.fullmatch(p.name)) if folder.is_dir() else []
    if not meta_path.is_file():
        if found:
            raise PipelineError(
                f"{folder} holds {found[0]} but no {meta_path.name}: which run the tables belong to is unknown; "
                f"rerun `{PHASE_COMMANDS['1.2']}`"
            )
        return None
    meta = TEMPERATURE_METADATA.read_json(meta_path)
    record = RunRecord.from_dict(meta["run"], meta_path)
    unlisted = [name for name in found if name not in record.files]
    if unlisted:
        raise PipelineError(
            f"{folder / unlisted[0]} is not part of the run recorded in {meta_path} (run {record.run_id}, "
            f"tables {', '.join(sorted(record.files))}): the folder holds tables from two runs; "
            "move the stray table away or rerun the phase"
        )
    record.verify(folder, meta_path)
    tables = {float(t): folder / TEMPERATURE_TABLE.pattern.format(temp=temperature_label(float(t)))
              for t in record.settings["temperatures"]}
    return TemperatureRun(folder=folder, meta_path=meta_path, meta=meta, record=record, tables=tables)


def read_phase1_metadata(dataset_path: Path) -> dict[str, Any]:
    """The metadata of a Phase 1.0 dataset; refused when absent (the model would be unknown)."""
    meta_path = metadata_path_of(dataset_path)
    if not meta_path.is_file():
        raise PipelineError(
            f"{meta_path} is missing: the model and settings behind {dataset_path.name} are unknown; "
            f"rerun `{PHASE_COMMANDS['1']}`"
        )
    return PHASE1_METADATA.read_json(meta_path, needed=("model",))


def recorded_prompt_format(meta: dict[str, Any]) -> str:
    """The prompt format (``plain`` or ``chat``) a Phase 1.0 or 1.2 metadata file says its prompts were built in.

    Why the fallbacks: metadata written before the format was recorded on its
    own still holds the whole config (``config.prompt_format``), and metadata
    older than prompt formats could only have used plain prompts.
    """
    value = meta.get("prompt_format") or (meta.get("config") or {}).get("prompt_format") or "plain"
    return str(value)


def settings_with_prompt_format(settings: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A run record's settings with ``prompt_format`` filled in from its metadata when the record predates it.

    Why: the format joined the run settings later; an earlier plain run must
    still merge with a plain rerun rather than be archived as "other settings".
    """
    if "prompt_format" in settings:
        return settings
    return {**settings, "prompt_format": recorded_prompt_format(meta)}
