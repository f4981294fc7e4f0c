"""clean_data.py deletes only what the pipeline wrote, only in a marked data directory, never under a running phase."""

import os
import subprocess
import sys

from common.datadir import DATA_DIR_MARKER, LOCK_NAME, mark_data_dir
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT

HOLD = (
    "import sys, time; sys.path.insert(0, sys.argv[2]); from common.datadir.locking import exclusive\n"
    "with exclusive(sys.argv[1], 'phase 1'):\n    print('held', flush=True); time.sleep(120)\n"
)


def _clean(*args, stdin="", cwd=None):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "clean_data.py"), *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _layout(tmp_path):
    """A marked data directory: two phase folders, a foreign file and folder, links to outside."""
    data = mark_data_dir(tmp_path / "data")
    (data / "phase0").mkdir()
    (data / "phase0" / "x.parquet").write_text("x")
    (data / "phase1_0" / "activations").mkdir(parents=True)
    (data / "phase1_0" / "activations" / "a.npz").write_text("a")
    (data / "notes.txt").write_text("my notes")
    (data / "my_results").mkdir()
    (data / "my_results" / "table.csv").write_text("1,2")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    os.symlink(outside, data / "link_to_outside")
    return data, outside


def _one_error_line(out):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def test_dry_run_lists_only_the_pipelines_entries_and_deletes_nothing(tmp_path):
    data, _ = _layout(tmp_path)
    before = _tree(data)
    out = _clean("--data-dir", str(data), "--dry-run")
    assert out.returncode == 0 and "dry run" in out.stdout
    assert "2 entries" in out.stdout and "3 other entries kept" in out.stdout
    assert f"kept (not written by the pipeline): {data / 'notes.txt'}" in out.stdout
    assert _tree(data) == before


def test_force_removes_phase_folders_and_keeps_foreign_entries(tmp_path):
    data, outside = _layout(tmp_path)
    out = _clean("--data-dir", str(data), "--force")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in data.iterdir()) == sorted([DATA_DIR_MARKER, "notes.txt", "my_results", "link_to_outside"])
    assert (data / "my_results" / "table.csv").read_text() == "1,2"
    assert outside.read_text() == "keep me" and (data / "link_to_outside").is_symlink()


def test_a_linked_phase_folder_is_removed_as_a_link(tmp_path):
    data = mark_data_dir(tmp_path / "data")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("k")
    os.symlink(target, data / "phase2")
    assert _clean("--data-dir", str(data), "--force").returncode == 0
    assert not (data / "phase2").is_symlink() and (target / "keep.txt").read_text() == "k"


def test_asks_first_and_no_means_no(tmp_path):
    data, _ = _layout(tmp_path)
    out = _clean("--data-dir", str(data), stdin="n\n")
    assert out.returncode == 1 and (data / "phase0").exists()
    out = _clean("--data-dir", str(data), stdin="")  # no terminal: never deletes
    assert out.returncode == 1 and (data / "phase0").exists()
    assert _clean("--data-dir", str(data), stdin="y\n").returncode == 0
    assert not (data / "phase0").exists() and (data / "notes.txt").exists()


def test_closed_stdin_deletes_nothing_and_prints_no_traceback(tmp_path):
    data, _ = _layout(tmp_path)
    out = subprocess.run(
        f'"{sys.executable}" "{REPO_ROOT / "clean_data.py"}" --data-dir "{data}" <&-',
        shell=True, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "aborted: nothing deleted" in out.stdout
    assert (data / "phase0" / "x.parquet").exists()


def test_a_copy_of_the_repo_survives_force(tmp_path):
    """The probe that emptied a checkout: ``cd <repo copy> && clean_data.py --data-dir . --force``."""
    repo = tmp_path / "checkout"
    (repo / ".git" / "objects").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "common").mkdir()
    (repo / "common" / "paths.py").write_text("# code\n")
    (repo / "README.md").write_text("# readme\n")
    before = _tree(repo)
    line = _one_error_line(_clean("--data-dir", ".", "--force", cwd=repo))
    assert "is not a PVA-SAE data directory" in line and "nothing deleted" in line
    assert _tree(repo) == before


def test_a_checkout_used_as_data_dir_keeps_everything_but_phase_output(tmp_path):
    """`run.py phase 0 --data-dir .` in a checkout marks it; clean_data then removes phase0 only, never .git."""
    repo = tmp_path / "checkout"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "run.py").write_text("# code\n")
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "phase", "0", "--data-dir", ".", "--mbpp-path", str(DEMO_PROBLEMS)],
        capture_output=True, text=True, timeout=300, cwd=repo,
    )
    assert out.returncode == 0, out.stderr
    assert (repo / DATA_DIR_MARKER).is_file() and any((repo / "phase0").glob("difficulty_*.parquet"))
    assert _clean("--data-dir", ".", "--force", cwd=repo).returncode == 0
    assert sorted(p.name for p in repo.iterdir()) == sorted([".git", "run.py", DATA_DIR_MARKER])
    assert (repo / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_a_home_like_directory_is_refused_and_its_data_dir_cleaned_alone(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("secret")
    (home / "thesis.tex").write_text("\\section{}")
    (home / "phase0").mkdir()  # a folder that happens to share a phase folder's name
    data, _ = _layout(home)
    before = _tree(home)
    line = _one_error_line(_clean("--data-dir", str(home), "--force"))
    assert str(home) in line and "not a PVA-SAE data directory" in line
    assert _tree(home) == before
    assert _clean("--data-dir", str(data), "--force").returncode == 0
    assert (home / ".ssh" / "id_rsa").read_text() == "secret" and (home / "phase0").is_dir()
    assert not (data / "phase0").exists() and (data / "notes.txt").exists()


def test_root_dry_run_is_one_line_and_no_traceback():
    for args in (["--dry-run"], []):
        out = _clean("--data-dir", "/", *args, stdin="")
        line = _one_error_line(out)
        assert "/ is not a PVA-SAE data directory" in line
        assert out.stdout == ""  # nothing listed, nothing read below /


def test_refuses_while_a_phase_holds_its_lock(tmp_path):
    data, _ = _layout(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data / "phase1_0"), str(REPO_ROOT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = _tree(data)
        for args in (["--force"], ["--dry-run"]):
            line = _one_error_line(_clean("--data-dir", str(data), *args))
            assert f"a run holds the lock on {data / 'phase1_0'} (pid {holder.pid})" in line and "nothing deleted" in line
        assert _tree(data) == before
    finally:
        holder.kill()
        holder.wait()
    assert _clean("--data-dir", str(data), "--force").returncode == 0  # the kernel released the lock with the process
    assert not (data / "phase1_0").exists()


def test_refuses_while_a_launcher_worker_holds_a_shard_lock(tmp_path):
    data = mark_data_dir(tmp_path / "data")
    shard = data / "humaneval" / "phase1_0" / "shards" / "m_0-9_abc"
    shard.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(shard), str(REPO_ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = _one_error_line(_clean("--data-dir", str(data), "--force"))
        assert str(shard) in line
        assert (shard / LOCK_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
