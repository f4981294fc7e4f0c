
import os
import stat

import numpy as np
import pandas as pd
import pytest

from common.storage import (
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
    from common.storage import current_umask

    assert current_umask() == umask
    assert os.umask(umask) == umask  # still the one the fixture set
