
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.datadir import (
    RecordCheckpointer,
    atomic_path,
    atomic_write_text,
    read_json,
    save_npz,
    write_json,
    write_parquet,
)


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(2)})
    assert read_json(target) == {"a": 3, "b": 0.5, "c": [0, 1]}
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failure_midway_keeps_the_old_file(tmp_path):
    target = tmp_path / "table.parquet"
    write_parquet(pd.DataFrame({"x": [1, 2]}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a parq")
            raise RuntimeError("killed")
    assert pd.read_parquet(target)["x"].tolist() == [1, 2]
    assert len(list(tmp_path.iterdir())) == 1


def test_npz_round_trip(tmp_path):
    vec = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    save_npz(tmp_path / "a.npz", activation=vec)
    with np.load(tmp_path / "a.npz") as data:
        np.testing.assert_array_equal(data["activation"], vec)


def _records(n, start=0):
    return [{"task_id": i, "passed": i % 3 == 0} for i in range(start, start + n)]


def test_checkpointer_chunks_autosaves_and_keeps_three(tmp_path):
    ck = RecordCheckpointer(tmp_path, checkpoint_every=5, autosave_every=10, keep=3)
    for r in _records(47):
        ck.add(r)
    names = sorted(p.name for p in tmp_path.iterdir())
    autosaves = [n for n in names if n.startswith("autosave_") and n.endswith(".parquet")]
    assert autosaves == ["autosave_00000020.parquet", "autosave_00000030.parquet", "autosave_00000040.parquet"]
    # 47 records: 40 in the newest autosave, one chunk of 5 after it, 2 not yet checkpointed
    assert [n for n in names if n.startswith("chunk_")] == ["chunk_000008.parquet"]
    restored = RecordCheckpointer(tmp_path, 5, 10, 3).load()
    assert [r["task_id"] for r in restored] == list(range(45))


def test_checkpointer_skips_a_corrupt_newest_autosave(tmp_path):
    ck = RecordCheckpointer(tmp_path, checkpoint_every=5, autosave_every=10, keep=3)
    for r in _records(30):
        ck.add(r)
    (tmp_path / "autosave_00000030.parquet").write_bytes(b"garbage")
    restored = RecordCheckpointer(tmp_path, 5, 10, 3).load()
    # falls back to the 20-record autosave; the chunks it covered were deleted, so 20 remain
    assert [r["task_id"] for r in restored] == list(range(20))


def test_resume_continues_numbering(tmp_path):
    ck = RecordCheckpointer(tmp_path, checkpoint_every=2, autosave_every=100, keep=3)
    for r in _records(4):
        ck.add(r)
    ck2 = RecordCheckpointer(tmp_path, 2, 100, 3)
    assert len(ck2.load()) == 4
    for r in _records(3, start=4):
        ck2.add(r)
    ck2.flush()
    assert [r["task_id"] for r in RecordCheckpointer(tmp_path, 2, 100, 3).load()] == list(range(7))
    ck2.clear()
    assert not tmp_path.exists()


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_give_the_mode_a_plain_write_gives(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the reference: what open(..., "w") gives under this umask
    assert _mode(plain) == 0o666 & ~umask
    written = [
        write_json(tmp_path / "a.json", {"a": 1}),
        write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "b.parquet"),
        save_npz(tmp_path / "c.npz", x=np.arange(3)),
        atomic_write_text(tmp_path / "d.txt", "d"),
    ]
    assert {p.name: _mode(p) for p in written} == {p.name: _mode(plain) for p in written}


def test_rewriting_keeps_an_existing_files_mode_as_a_plain_write_does(tmp_path, umask):
    target = tmp_path / "shared.json"
    reference = tmp_path / "reference.json"
    for path in (target, reference):
        path.write_text("{}")
        path.chmod(0o644)
    reference.write_text('{"a": 1}')  # a plain rewrite keeps 0644 whatever the umask
    write_json(target, {"a": 1})
    assert _mode(target) == _mode(reference) == 0o644
    assert read_json(target) == {"a": 1}


def test_the_umask_is_read_without_being_changed(umask):
    from common.datadir import current_umask

    assert current_umask() == umask
    assert os.umask(umask) == umask  # still the one the fixture set


def test_jsonl_objects_numbers_lines_and_refuses_in_the_callers_words() -> None:
    import ast as _ast

    from common.datadir import jsonl_objects
    from common.errors import PipelineError

    def not_json(number: int, error: str) -> str:
        return f"f line {number}: bad ({error})"

    def not_object(number: int) -> str:
        return f"f line {number}: no object"

    assert jsonl_objects(['{"a": 1}', "  ", '{"b": 2}\n'], not_json, not_object) == [(1, {"a": 1}), (3, {"b": 2})]
    with pytest.raises(PipelineError, match=r"^f line 2: bad \(Expecting value\)$"):
        jsonl_objects(['{"a": 1}', "nope"], not_json, not_object)
    with pytest.raises(PipelineError, match="^f line 1: no object$"):
        jsonl_objects(["[1, 2]"], not_json, not_object)
    # The one reader: no other module decodes JSON lines in a loop of its own (the executor's pipe protocol aside).
    repo = Path(__file__).resolve().parents[3]
    loops = []
    for path in sorted(repo.rglob("*.py")):
        rel = path.relative_to(repo).as_posix()
        if rel.split("/")[0] in {"tests", ".venv", "shared", "data"} or rel in {"common/datadir/storage.py", "common/sandbox/executor.py"}:
            continue
        tree = _ast.parse(path.read_text(encoding="utf-8"))
        for node in _ast.walk(tree):
            if not isinstance(node, (_ast.For, _ast.ListComp, _ast.GeneratorExp)):
                continue
            targets = [node.target] if isinstance(node, _ast.For) else [g.target for g in node.generators]
            names = {n.id for t in targets for n in _ast.walk(t) if isinstance(n, _ast.Name)}
            for call in _ast.walk(node):  # json.loads(<the loop's own line>)
                if (isinstance(call, _ast.Call) and _ast.unparse(call.func) == "json.loads" and call.args
                        and isinstance(call.args[0], _ast.Name) and call.args[0].id in names):
                    loops.append(f"{rel}:{call.lineno}")
    assert loops == [], loops
