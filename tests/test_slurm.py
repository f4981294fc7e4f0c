"""The launcher's SLURM backend against a real single-node SLURM (``.ci/start_slurm.sh``), tiny model, CPU.

Each test submits real jobs through submitit: a two-slice job array merged and
skipped on rerun, a slice killed with ``scancel`` that is resubmitted and
resumes from its checkpoints, and refusals that submit nothing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import phase0_difficulty
from common.config import PipelineConfig
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT, default_sigint
from tests.slurm_cluster import slurm_or_skip, squeue_state, wait_for

pytest.importorskip("submitit")


@pytest.fixture(autouse=True)
def _cluster():
    slurm_or_skip()


def _cmd(data, model_dir, *extra):
    return [
        sys.executable, str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1", "--backend", "slurm",
        "--partition", "cpu", "--model", str(model_dir), "--data-dir", str(data), "--mbpp-path", str(DEMO_PROBLEMS),
        "--workers", "1", "--poll", "0.5", *extra,
    ]


def _phase0(tmp_path):
    data = tmp_path / "data"
    phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
    return data


def _problem_ids():
    return sorted(json.loads(line)["task_id"] for line in DEMO_PROBLEMS.read_text().splitlines())


def _user_jobs() -> set[str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i"], capture_output=True, text=True)
    return set(out.stdout.split())


def _new_jobs(before: set[str]) -> set[str]:
    """Jobs SLURM lists now that it did not list before. Why not equality: an earlier test's job may leave the
    queue meanwhile (CI saw a finished job drop out between the two reads)."""
    return _user_jobs() - before


def test_two_slice_array_merges_and_rerun_submits_nothing(tmp_path, tiny_model_dir):
    data = _phase0(tmp_path)
    args = ("--start", "2", "--end", "6", "--gpus", "2", "--max-new-tokens", "8", "--batch-size", "3")
    out = subprocess.run(_cmd(data, tiny_model_dir, *args), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ids = re.findall(r"SLURM job (\d+)_(\d+), log", out.stdout)
    assert len(ids) == 2 and ids[0][0] == ids[1][0], out.stdout  # one array, two tasks
    assert "2 done, 0 running, 0 pending, 0 failed" in out.stdout
    merged = sorted((data / "phase1_0").glob("dataset_*.parquet"))
    assert len(merged) == 1
    assert pd.read_parquet(merged[0])["task_id"].tolist() == _problem_ids()[2:7]
    launcher_logs = data / "phase1_0" / "logs"
    worker_logs = sorted(launcher_logs.glob("launcher_*/worker_*.log"))
    assert len(worker_logs) == 2 and all("slurm job" in p.read_text() for p in worker_logs)
    assert list(launcher_logs.glob("launcher_*/slurm/*_log.out"))  # submitit's own job logs sit beside them
    meta = json.loads(next((data / "phase1_0").glob("dataset_*_metadata.json")).read_text())
    assert meta["launcher"]["backend"] == "slurm" and meta["launcher"]["slurm"]["partition"] == "cpu"

    before = _user_jobs()
    again = subprocess.run(_cmd(data, tiny_model_dir, *args), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done earlier (kept)") == 2 and not re.search(r"SLURM job \d", again.stdout)
    assert _new_jobs(before) == set()


def _interrupt_mid_slice(tmp_path, model_dir, max_retries, interrupt):
    """Run a 60-task slice on SLURM, ``interrupt(job_id)`` once three checkpoint chunks exist, and let it finish.

    Returns the data folder, the job id, the launcher's stdout and its slice's
    worker log, after checking the launcher exited 0 and that the interruption
    came mid-slice (no shard written yet) and the slice resumed from its chunks.
    """
    data = _phase0(tmp_path)
    args = ("--start", "0", "--end", "59", "--gpus", "1", "--max-new-tokens", "24", "--batch-size", "1",
            "--checkpoint-every", "1", "--max-retries", str(max_retries))
    proc = subprocess.Popen(_cmd(data, model_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        jobs_file = wait_for(lambda: next((data / "phase1_0" / "logs").glob("launcher_*/slurm_jobs.json"), None), 120, "submission")
        job_id = json.loads(jobs_file.read_text())["0"][0]
        checkpoints = data / "phase1_0" / "checkpoints"
        wait_for(lambda: len(list(checkpoints.rglob("chunk_*.parquet"))) >= 3, 180, "three checkpoint chunks", poll=0.2)
        assert squeue_state(job_id) == "RUNNING"
        assert not list((data / "phase1_0" / "shards").rglob("dataset_*.parquet"))  # interrupted mid-slice, not after
        interrupt(job_id)
        stdout, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    log = next((data / "phase1_0" / "logs").glob("launcher_*/worker_0.log")).read_text()
    resumed = re.search(r"resuming: (\d+) record\(s\) already checkpointed", log)
    assert resumed and int(resumed.group(1)) > 0, log[-2000:]
    merged = pd.read_parquet(next((data / "phase1_0").glob("dataset_*.parquet")))
    assert merged["task_id"].tolist() == _problem_ids()[:60]
    return data, job_id, stdout, log


def test_scancelled_slice_is_resubmitted_and_resumes(tmp_path, tiny_model_dir):
    def cancel(job_id):
        subprocess.run(["scancel", job_id], check=True, timeout=60)

    _, job_id, stdout, log = _interrupt_mid_slice(tmp_path, tiny_model_dir, 1, cancel)
    assert f"SLURM job {job_id} failed (CANCELLED)" in stdout and "retry 1 of 1" in stdout, stdout[-3000:]
    assert log.count("slurm job") == 2  # one header per attempt, both in the slice's one log


def test_requeued_slice_resumes_in_the_same_job(tmp_path, tiny_model_dir):
    """``scontrol requeue`` is what a preemption with PreemptMode=REQUEUE does: the job restarts and resumes."""
    def requeue(job_id):
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        # SLURM holds a requeued job back for a while (its begin time moves on): let it start now
        wait_for(lambda: squeue_state(job_id) == "PENDING", 120, f"job {job_id} to be requeued")
        # slurmd refuses a credential issued in the same second as the requeue revoked the old one ("Job
        # credential revoked"), which once failed the restarted job: let that second pass before starting it.
        time.sleep(2.0)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)

    _, job_id, stdout, log = _interrupt_mid_slice(tmp_path, tiny_model_dir, 0, requeue)
    assert f"finished (SLURM job {job_id})" in stdout and "resubmitted" not in stdout, stdout[-3000:]
    assert log.count(f"slurm job {job_id} ") == 2  # the same job id ran twice


def test_rerun_refused_while_jobs_queued_and_ctrl_c_cancels_them(tmp_path, tiny_model_dir):
    """A job held back by --begin stays PENDING.

    While its launcher lives, the same command is refused by the phase lock; once
    the launcher is killed (SIGKILL: it cancels nothing), by the still-queued job;
    and SIGINT to a launcher cancels its jobs.
    """
    data = _phase0(tmp_path)
    args = ("--start", "0", "--end", "3", "--max-new-tokens", "4", "--slurm-extra", "begin=now+600")
    jobs_glob = "launcher_*/slurm_jobs.json"
    proc = subprocess.Popen(_cmd(data, tiny_model_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        jobs_file = wait_for(lambda: next((data / "phase1_0" / "logs").glob(jobs_glob), None), 120, "submission")
        job_id = json.loads(jobs_file.read_text())["0"][0]
        assert squeue_state(job_id) == "PENDING"
        twin = subprocess.run(_cmd(data, tiny_model_dir, *args), capture_output=True, text=True, timeout=120)
        assert twin.returncode == 2 and "phase 1 is already running" in twin.stderr, twin.stderr
        proc.kill()
        proc.communicate(timeout=60)
        orphan = subprocess.run(_cmd(data, tiny_model_dir, *args), capture_output=True, text=True, timeout=120)
        assert orphan.returncode == 2 and f"still queued or running: {job_id} (PENDING)" in orphan.stderr, orphan.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    subprocess.run(["scancel", str(job_id)], capture_output=True, check=True)
    wait_for(lambda: squeue_state(job_id) in (None, "CANCELLED"), 60, f"job {job_id} to be cancelled")

    jobs_file.unlink()
    proc = subprocess.Popen(_cmd(data, tiny_model_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        jobs_file = wait_for(lambda: next((data / "phase1_0" / "logs").glob(jobs_glob), None), 120, "second submission")
        second = json.loads(jobs_file.read_text())["0"][0]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "SLURM jobs cancelled" in stderr
    wait_for(lambda: squeue_state(second) in (None, "CANCELLED"), 60, f"job {second} to be cancelled")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--partition", "nosuch"), "unknown partition 'nosuch': SLURM has cpu, restricted"),
        (("--partition", "restricted", "--account", "nosuch"), "account 'nosuch' may not use partition 'restricted'"),
        (("--slurm-extra", "qos"), "--slurm-extra takes KEY=VALUE"),
        (("--max-retries", "-1"), "--max-retries must be >= 0"),
    ],
)
def test_bad_slurm_options_submit_nothing(tmp_path, tiny_model_dir, extra, message):
    data = tmp_path / "data"
    before = _user_jobs()
    out = subprocess.run(_cmd(data, tiny_model_dir, *extra), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {out.stderr.strip()[7:]}"] and message in out.stderr
    assert not data.exists() and _new_jobs(before) == set()


def test_sweep_on_unknown_partition_submits_nothing(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    before = _user_jobs()
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "sweep", "--models", str(tiny_model_dir), "--backend", "slurm",
         "--partition", "nosuch", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: unknown partition 'nosuch': SLURM has cpu, restricted"
    assert not data.exists() and _new_jobs(before) == set()
