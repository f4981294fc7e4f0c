import os
import subprocess
import sys

from tests.helpers import REPO_ROOT


def _clean(*args, stdin=""):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "clean_data.py"), *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )


def _layout(tmp_path):
    data = tmp_path / "data"
    (data / "phase0").mkdir(parents=True)
    (data / "phase0" / "x.parquet").write_text("x")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    os.symlink(outside, data / "link_to_outside")
    os.symlink(tmp_path, data / "link_to_parent_dir")
    return data, outside


def test_dry_run_deletes_nothing(tmp_path):
    data, outside = _layout(tmp_path)
    out = _clean("--data-dir", str(data), "--dry-run")
    assert out.returncode == 0 and "dry run" in out.stdout
    assert (data / "phase0" / "x.parquet").exists()


def test_asks_first_and_no_means_no(tmp_path):
    data, _ = _layout(tmp_path)
    out = _clean("--data-dir", str(data), stdin="n\n")
    assert out.returncode == 1 and (data / "phase0").exists()
    out = _clean("--data-dir", str(data), stdin="")  # no terminal: never deletes
    assert out.returncode == 1 and (data / "phase0").exists()


def test_force_deletes_inside_only_and_never_follows_links(tmp_path):
    data, outside = _layout(tmp_path)
    out = _clean("--data-dir", str(data), "--force")
    assert out.returncode == 0, out.stderr
    assert data.exists() and not any(data.iterdir())
    assert outside.read_text() == "keep me"
    assert (tmp_path / "precious.txt").exists()


def test_yes_deletes(tmp_path):
    data, _ = _layout(tmp_path)
    assert _clean("--data-dir", str(data), stdin="y\n").returncode == 0
    assert not any(data.iterdir())


def test_closed_stdin_deletes_nothing_and_prints_no_traceback(tmp_path):
    data, _ = _layout(tmp_path)
    out = subprocess.run(
        f'"{sys.executable}" "{REPO_ROOT / "clean_data.py"}" --data-dir "{data}" <&-',
        shell=True, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "aborted: nothing deleted" in out.stdout
    assert (data / "phase0" / "x.parquet").exists()
