"""Submitting pipeline work to SLURM through submitit, and watching it.

Why submitit and not our own sbatch scripts: it writes the batch script, runs a
pickled Python callable inside the job, handles job arrays and requeues a
``Checkpointable`` on preemption or timeout. What this module adds is what the
pipeline needs around it:

- checks before anything is submitted (submitit installed, SLURM answers, the
  partition exists, the account may use it), each failing with one line;
- job states from ``squeue`` rather than submitit's ``sacct`` calls, because
  many clusters (and the CI's single-node one) run without the accounting
  database; a job that left the queue is judged by the result file submitit
  wrote (or its absence: killed);
- a command runner that appends the command's output to the same per-slice log
  file the local backend writes.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import PipelineError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

# squeue's job states, grouped by what the launcher does with them.
ACTIVE_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                 "RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
                  "RESV_DEL_HOLD", "SPECIAL_EXIT"}


@dataclass
class SlurmOptions:
    """What a user can ask of SLURM (the launcher's and the sweep's ``--partition`` ... flags)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None  # SLURM's syntax: minutes, or [D-]HH:MM:SS
    mem: str | None = None  # SLURM's syntax, e.g. 32G
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # any other sbatch option, KEY=VALUE
    max_retries: int = 2

    @property
    def on_cpu(self) -> bool:
        return not self.gpus_per_task


def parse_extra(items: list[str] | None) -> dict[str, str]:
    """``["constraint=a100", "qos=high"]`` -> ``{"constraint": "a100", "qos": "high"}``."""
    extra: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise PipelineError(f"--slurm-extra takes KEY=VALUE (an sbatch option without its dashes), got {item!r}")
        extra[key] = value
    return extra


def require_submitit() -> Any:
    """The submitit module, or one line saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise PipelineError("the SLURM backend needs submitit: pip install submitit==1.5.4") from None
    return submitit


def _slurm_command(args: list[str]) -> str:
    """Run a SLURM client command and return its stdout; any failure is one line."""
    if shutil.which(args[0]) is None:
        raise PipelineError(f"{args[0]} not found: this machine is not a SLURM login node (or SLURM is not on PATH)")
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{' '.join(args)} did not answer within 60 s: is slurmctld up?") from None
    if out.returncode != 0:
        message = (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}").splitlines()[0]
        raise PipelineError(f"{' '.join(args[:2])} failed: {message}")
    return out.stdout


def partitions() -> dict[str, dict[str, str]]:
    """Every partition SLURM knows, with its ``scontrol show partition`` fields."""
    found: dict[str, dict[str, str]] = {}
    for line in _slurm_command(["scontrol", "show", "partition", "--oneliner"]).splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "PartitionName" in fields:
            found[fields["PartitionName"]] = fields
    return found


def _accounting_enabled() -> bool:
    for line in _slurm_command(["scontrol", "show", "config"]).splitlines():
        if line.strip().startswith("AccountingStorageType"):
            return "accounting_storage/none" not in line
    return False


def check_slurm(opts: SlurmOptions) -> None:
    """Refuse, before anything is submitted, what SLURM would refuse or leave pending forever.

    A partition must exist (``sinfo`` lists it). An account must be allowed on
    that partition (its AllowAccounts/DenyAccounts) and, where SLURM keeps an
    accounting database, be one of the user's associations: without this check
    SLURM accepts the job and leaves it pending for ever.
    """
    if opts.max_retries < 0:
        raise PipelineError(f"--max-retries must be >= 0, got {opts.max_retries}")
    if opts.gpus_per_task is not None and opts.gpus_per_task < 0:
        raise PipelineError(f"--gpus-per-task must be >= 0, got {opts.gpus_per_task}")
    known = partitions()
    if not known:
        raise PipelineError("SLURM reports no partition")
    default = next((name for name, f in known.items() if f.get("Default") == "YES"), None)
    name = opts.partition or default
    if name is None:
        raise PipelineError(f"SLURM has no default partition: pass --partition (one of {', '.join(sorted(known))})")
    if name not in known:
        raise PipelineError(f"unknown partition {name!r}: SLURM has {', '.join(sorted(known))}")
    if opts.account:
        fields = known[name]
        allowed = fields.get("AllowAccounts", "ALL")
        denied = fields.get("DenyAccounts", "")
        if allowed != "ALL" and opts.account not in allowed.split(","):
            raise PipelineError(f"account {opts.account!r} may not use partition {name!r} (it allows {allowed})")
        if denied and opts.account in denied.split(","):
            raise PipelineError(f"account {opts.account!r} is denied on partition {name!r}")
        if _accounting_enabled():
            user = getpass.getuser()
            assoc = _slurm_command(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                    f"user={user}", "format=Account"])
            if opts.account not in {a.strip() for a in assoc.splitlines()}:
                raise PipelineError(f"unknown account {opts.account!r}: user {user} has no association with it")


def make_executor(folder: Path, opts: SlurmOptions, job_name: str) -> Any:
    """A submitit SlurmExecutor whose job logs go to ``folder`` and whose Python finds this repo."""
    submitit = require_submitit()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max(opts.max_retries, 0))
    except RuntimeError as exc:  # submitit's "Could not detect srun"
        raise PipelineError(f"cannot submit to SLURM: {exc}") from None
    params: dict[str, Any] = {
        "job_name": job_name,
        "setup": [f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "additional_parameters": {"kill-on-invalid-dep": "yes", **opts.extra},
        "ntasks_per_node": 1,
        "nodes": 1,
    }
    if opts.time is not None:
        params["time"] = opts.time
    else:
        params["time"] = "1-00:00:00"  # submitit's own default is 5 minutes: far too short for a phase
    for name in ("partition", "account", "mem", "cpus_per_task"):
        value = getattr(opts, name)
        if value is not None:
            params[name] = value
    if opts.gpus_per_task:
        params["gpus_per_task"] = opts.gpus_per_task
    executor.update_parameters(**params)
    return executor


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job still in the queue (finished ones stay there for MinJobAge seconds).

    One ``squeue`` call for the user's jobs, array tasks one per line (``-r``);
    ids missing from the answer have left the queue.
    """
    if not job_ids:
        return {}
    out = _slurm_command(["squeue", "--noheader", "--array", "--states=all", "--user", getpass.getuser(),
                          "--format=%i|%T"])
    wanted, states = set(job_ids), {}
    for line in out.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted:
            states[job_id] = state.strip()
    return states


def job_outcome(job: Any, state: str | None) -> str:
    """``done``, ``failed``, ``running`` or ``pending`` for one submitit job.

    While SLURM still lists the job as active (COMPLETING included) it is not
    over: resubmitting then could put two processes on one slice's checkpoints.
    Once it is over, the result file submitit writes at the end of the job
    decides success, so a COMPLETED job whose command failed counts as failed. A
    job that ended without a result file was killed (scancel, node failure,
    out of memory).
    """
    if state in PENDING_STATES:
        return "pending"
    if state in ACTIVE_STATES:
        return "running"
    result_file = Path(job.paths.result_pickle)
    if result_file.is_file():
        from submitit.core.utils import pickle_load

        try:
            outcome, value = pickle_load(result_file)
        except Exception:  # a result file still being written: look again next poll
            return "running"
        return "done" if outcome == "success" and value == 0 else "failed"
    return "failed"


def cancel(job_ids: list[str]) -> None:
    if job_ids and shutil.which("scancel"):
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def cpu_environment(threads: int = 1) -> dict[str, str]:
    """Environment of a CPU worker: no GPU, ``threads`` torch/OpenMP threads (they fight for cores otherwise)."""
    n = str(max(threads, 1))
    return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PVA_TORCH_THREADS": n}


def run_logged(cmd: list[str], log_path: str, env: dict[str, str] | None = None, cwd: str | None = None) -> int:
    """Run ``cmd``, appending its output to ``log_path``; its exit code is the result."""
    from common.datadir import timestamp

    full_env = {**os.environ, **(env or {})}
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as handle:
        job = os.environ.get("SLURM_JOB_ID", "")
        handle.write(f"\n=== {timestamp()}{' slurm job ' + job if job else ''} {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=full_env, cwd=cwd or str(REPO_ROOT))
    return proc.returncode


class LoggedCommand:
    """A picklable job body: ``run_logged`` on SLURM, requeued by submitit on preemption or timeout.

    Why a class: submitit calls ``checkpoint`` when SLURM signals a preemption or
    the time limit; returning the same call makes submitit requeue the job, and
    the phase resumes from its own checkpoints on the next start.
    """

    def __call__(self, cmd: list[str], log_path: str, env: dict[str, str] | None = None) -> int:
        return run_logged(cmd, log_path, env)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def python_command(*args: str) -> list[str]:
    """``python run.py ...`` with this interpreter (the job runs on a node that shares the file system)."""
    return [sys.executable, str(REPO_ROOT / "run.py"), *args]


def refuse_if_still_queued(jobs_file: Path) -> None:
    """Refuse to submit while jobs recorded in ``jobs_file`` by an earlier launch are still queued or running.

    Why: two jobs on one slice would write the same checkpoints.
    """
    import json

    if not jobs_file.is_file():
        return
    earlier = json.loads(jobs_file.read_text())
    states = job_states([job_id for ids in earlier.values() for job_id in ids])
    active = {job_id: s for job_id, s in states.items() if s in ACTIVE_STATES}
    if active:
        listing = ", ".join(f"{j} ({s})" for j, s in sorted(active.items()))
        raise PipelineError(f"jobs of an earlier launch are still queued or running: {listing}; "
                            f"wait for them or scancel them, then rerun")


class SliceWatcher:
    """Submits keyed commands (slices, sweep steps) as one job array and sees each to an end.

    A slice that fails (non-zero exit, killed, preempted and not requeued) is
    resubmitted alone, up to ``max_retries`` times; it resumes from whatever
    checkpoints its command left. Every job id is recorded in ``jobs_file`` so
    a rerun can refuse to start while an earlier launch's jobs still run (two
    jobs writing one slice's checkpoints would corrupt it).
    """

    def __init__(self, opts: SlurmOptions, folder: Path, job_name: str, jobs_file: Path,
                 work: dict[Any, tuple[list[str], str, dict[str, str]]]) -> None:
        self.opts, self.folder, self.job_name, self.jobs_file, self.work = opts, folder, job_name, jobs_file, work
        self.jobs: dict[Any, Any] = {}
        self.history: dict[str, list[str]] = {}
        self.attempts: dict[Any, int] = {}

    def refuse_if_still_queued(self) -> None:
        refuse_if_still_queued(self.jobs_file)

    def _save(self) -> None:
        from common.datadir import write_json

        write_json(self.jobs_file, self.history)

    def _record(self, key: Any, job: Any) -> None:
        self.jobs[key] = job
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.history.setdefault(str(key), []).append(str(job.job_id))

    def submit_array(self) -> None:
        """All pending keys as one job array (one submission, one sbatch call)."""
        executor = make_executor(self.folder, self.opts, self.job_name)
        executor.update_parameters(array_parallelism=len(self.work))
        keys = list(self.work)
        jobs = executor.map_array(LoggedCommand(), [self.work[k][0] for k in keys], [self.work[k][1] for k in keys],
                                  [self.work[k][2] for k in keys])
        for k, job in zip(keys, jobs):
            self._record(k, job)
            print(f"  worker {k}: SLURM job {job.job_id}, log {self.work[k][1]}")
        self._save()

    def _resubmit(self, key: Any) -> None:
        executor = make_executor(self.folder, self.opts, self.job_name)
        cmd, log_path, env = self.work[key]
        self._record(key, executor.submit(LoggedCommand(), cmd, log_path, env))
        self._save()

    def cancel_all(self) -> None:
        cancel([str(job.job_id) for job in self.jobs.values()])

    def wait(self, poll: float, on_done: Any) -> dict[Any, str]:
        """Poll until every key is finished or out of retries; print progress when it changes.

        ``on_done(key)`` checks a successful job's outputs; False counts as a failure.
        """
        final: dict[Any, str] = {}
        last = None
        while len(final) < len(self.jobs):
            states = job_states([str(job.job_id) for k, job in self.jobs.items() if k not in final])
            counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
            for key, job in self.jobs.items():
                if key in final:
                    counts["failed" if final[key].startswith("FAILED") else "done"] += 1
                    continue
                state = states.get(str(job.job_id))
                outcome = job_outcome(job, state)
                if outcome == "done" and not on_done(key):
                    outcome, state = "failed", "finished without its outputs"
                if outcome == "failed":
                    log = self.work[key][1]
                    why = state or "left the queue without a result"
                    if self.attempts[key] <= self.opts.max_retries:
                        self._resubmit(key)
                        print(f"  worker {key}: SLURM job {job.job_id} failed ({why}); resubmitted as job "
                              f"{self.jobs[key].job_id} (retry {self.attempts[key] - 1} of {self.opts.max_retries}), see {log}")
                        outcome = "pending"
                    else:
                        final[key] = f"FAILED (SLURM job {job.job_id}: {why}; {self.attempts[key]} attempt(s)), see {log}"
                elif outcome == "done":
                    final[key] = f"finished (SLURM job {job.job_id})"
                counts[outcome if key not in final else ("failed" if outcome == "failed" else "done")] += 1
            line = ", ".join(f"{v} {k}" for k, v in counts.items())
            if line != last:
                print(f"slurm: {line}", flush=True)
                last = line
            if len(final) < len(self.jobs):
                import time

                time.sleep(poll)
        return final
