"""Phase 3's result document: written and read back through the artifact module, refused when not of this schema.

The round trip of a real Phase 3 run (the demo-size e2e fixture) is in
``tests/phase3_validation/test_validation.py``; here the document is built with
``tests.artifact_builders.phase3_result`` so each refusal is checked on its own.
"""

from __future__ import annotations

import json
import math

import pytest

from common.datadir import (
    PHASE3_VALIDATION,
    SCHEMA_VERSION,
    LatentResult,
    Phase3Result,
    TopLatent,
    from_json,
    read_phase3_result,
    to_json,
    write_phase3_result,
)
from common.errors import PipelineError
from tests.artifact_builders import direction_steering, phase3_result

STAMP = "20260101_000000_000000"


def _result() -> Phase3Result:
    top = TopLatent("correct", 1, 2, 5, 0.3, 0.01, 0.6, 0.2)
    row = {"split": "validation", "temperature": 0.0, "auroc": 0.71, "auroc_ci_lo": float("nan"), "auroc_ci_hi": 0.8}
    latent = LatentResult("correct", 1, 2, 5, 0.3, 0.01, 0.6, 0.2, threshold=0.5, hyperparams_f1=0.6, rows=[row])
    return phase3_result(STAMP, latents=[latent], phase2_top={"correct": top, "incorrect": None},
                         directions={"correct": direction_steering(top, 1.0, {"correction_rate": 0.25})},
                         beats_null={"correct": True, "incorrect": None})


def _written(tmp_path, doc: dict) -> object:
    path = PHASE3_VALIDATION.path(tmp_path, ts=STAMP)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def test_write_then_read_gives_the_same_document(tmp_path):
    result = _result()
    path = write_phase3_result(PHASE3_VALIDATION.path(tmp_path, ts=STAMP), result)
    doc = json.loads(path.read_text())
    # On disk: the fields in declaration order, schema_version first, NaN written as null (strict JSON).
    assert list(doc) == ["schema_version", "phase", "timestamp", "configuration", "inputs", "phase2_null", "phase2_top",
                         "statistical", "small_split_notes", "transfer", "steering", "outputs", "flags"]
    assert doc["schema_version"] == SCHEMA_VERSION and doc["statistical"]["latents"][0]["rows"][0]["auroc_ci_lo"] is None
    assert doc["phase2_top"]["incorrect"] is None and doc["phase2_null"] == {"beats_null": {"correct": True, "incorrect": None}}
    back = read_phase3_result(path)
    assert math.isnan(result.statistical.latents[0].rows[0]["auroc_ci_lo"])
    result.statistical.latents[0].rows[0]["auroc_ci_lo"] = None  # what json_safe writes for NaN
    assert back == result
    assert isinstance(back.steering.directions["correct"].target, TopLatent) and back.phase2_null.beats_null["correct"]
    assert back.statistical.latents[0].validation_row() == doc["statistical"]["latents"][0]["rows"][0]
    write_phase3_result(tmp_path / "again.json", back)
    assert (tmp_path / "again.json").read_text() == path.read_text()  # byte for byte


def test_a_file_written_before_the_version_field_reads_as_version_1(tmp_path):
    doc = json.loads(write_phase3_result(tmp_path / "new.json", _result()).read_text())
    del doc["schema_version"]
    assert read_phase3_result(_written(tmp_path, doc)) == read_phase3_result(tmp_path / "new.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1),
         f"is a Phase 3 result of schema version {SCHEMA_VERSION + 1}; this code reads version {SCHEMA_VERSION}"),
        (lambda d: d.update(schema_version="1"), "schema version '1'"),
        (lambda d: d.update(schema_version=True), "schema version True"),
        (lambda d: d["steering"]["directions"]["correct"].pop("chosen_alpha"),
         "the document.steering.directions.correct lacks 'chosen_alpha'"),
        (lambda d: d["configuration"].update(temperature=0.7), "the document.configuration has an unexpected key 'temperature'"),
        (lambda d: d["statistical"].update(latents={}), "the document.statistical.latents is not a JSON list"),
        (lambda d: d.pop("flags"), "the document lacks 'flags'"),
    ],
)
def test_another_version_or_shape_is_one_line(tmp_path, change, message):
    doc = json.loads(write_phase3_result(tmp_path / "good.json", _result()).read_text())
    change(doc)
    path = _written(tmp_path, doc)
    with pytest.raises(PipelineError) as err:
        read_phase3_result(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_a_file_that_is_not_a_json_object_is_one_line(tmp_path, content):
    path = tmp_path / "validation.json"
    path.write_text(content)
    with pytest.raises(PipelineError, match="Phase 3 result document") as err:
        read_phase3_result(path)
    assert "\n" not in str(err.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="cannot read Phase 3 result document"):
        read_phase3_result(tmp_path / "nothing.json")


def test_the_declared_keys_are_the_dataclass_fields():
    """The artifact's declared keys (checked on every write) are the typed document's fields, in order."""
    assert list(PHASE3_VALIDATION.fields) == list(to_json(_result()))


def test_from_json_builds_nested_dataclasses_and_keeps_free_form_objects():
    top = from_json(TopLatent, {"direction": "correct", "rank": 1, "layer": 0, "latent": 3, "separation_score": 0.2,
                                "p_family": None, "f_correct": 0.5, "f_incorrect": 0.1})
    assert top == TopLatent("correct", 1, 0, 3, 0.2, None, 0.5, 0.1)
    assert from_json(dict[str, TopLatent | None], {"x": None}) == {"x": None}
