"""``run.py sweep``: run the planned steps locally in sequence, or on SLURM as dependent jobs.

A step that finished is marked under ``<data dir>/sweep/sweep_<key>/done/``;
rerunning the same command skips it, and an interrupted step resumes from its
phase's own checkpoints. A failed step stops only its own model's chain.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import PipelineConfig, check_option_limits
from common.datadir import (
    PHASE3_VALIDATION,
    RunClock,
    atomic_write_text,
    build_metadata,
    pipeline_folder,
    read_json,
    timestamp,
    write_json,
)
from common.slurm_backend import SlurmOptions, parse_extra
from common.tasks import run_key
from sweep.plan import Step, SweepModel, link_shared_phases, plan_steps, resolve_models
from sweep.table import comparison_rows, render_table

logger = logging.getLogger(__name__)


@dataclass
class SweepRun:
    """Where one sweep keeps its bookkeeping: step logs, done markers, SLURM job ids, the table."""

    root: Path
    models: list[SweepModel]
    steps: list[Step]

    def marker(self, step: Step) -> Path:
        return self.root / "done" / (step.name.replace("/", "__") + ".json")

    def is_done(self, step: Step) -> bool:
        return self.marker(step).is_file()

    def mark_done(self, step: Step, how: str) -> None:
        """Record a finished step; for Phase 3, also the result it wrote (the table reads exactly that file)."""
        record: dict[str, Any] = {"step": step.name, "args": step.args, "finished": timestamp(), "how": how}
        if step.args[1] == "3":
            data_dir = Path(step.args[step.args.index("--data-dir") + 1])
            record["result"] = str(PHASE3_VALIDATION.newest(data_dir))
        write_json(self.marker(step), record)

    def phase3_result(self, model: SweepModel) -> Path | None:
        """The Phase 3 JSON this sweep's own Phase 3 step wrote for ``model`` (None when it has not finished).

        Why not the newest file in the folder: a model's folder is shared by
        sweeps with other options; the table must show this sweep's numbers.
        """
        step = next(s for s in self.steps if s.model == model.name and s.args[1] == "3")
        if not self.is_done(step):
            return None
        result = read_json(self.marker(step)).get("result")
        return Path(result) if result else None


def slurm_options(cfg: PipelineConfig) -> SlurmOptions:
    """The sweep's SLURM options. A failed step is not resubmitted (its chain is cancelled; a rerun resumes);
    a preempted or timed-out one is requeued by submitit up to ``max_retries`` times."""
    return SlurmOptions(
        partition=cfg.partition, account=cfg.account, time=cfg.slurm_time, mem=cfg.mem, gpus_per_task=cfg.gpus_per_task,
        cpus_per_task=cfg.cpus_per_task, extra=parse_extra(cfg.slurm_extra), max_retries=2,
    )


def run_sweep(cfg: PipelineConfig, passthrough: dict[str, list[str]], poll: float = 2.0) -> int:
    """Check everything, run (or submit and watch) the steps, then print and save the comparison table."""
    clock = RunClock()
    check_option_limits(cfg, "sweep")  # --backend local or slurm, the SLURM sizes, as the config declares them
    opts = slurm_options(cfg) if cfg.backend == "slurm" else None
    if opts is not None:  # every refusal before anything is written or submitted
        from common.slurm_backend import check_slurm, require_submitit

        require_submitit()
        check_slurm(opts)
    data_dir = Path(cfg.data_dir).resolve()
    models = resolve_models(list(cfg.models or []), data_dir, cfg.sae_path)
    key = run_key({"models": [m.spec for m in models], "sae_path": cfg.sae_path, "args": passthrough})
    root = pipeline_folder(data_dir, "sweep") / f"sweep_{key}"
    run = SweepRun(root, models, plan_steps(models, data_dir, passthrough, root / "logs"))
    for model in models:
        link_shared_phases(model, data_dir)
    todo = [s for s in run.steps if not run.is_done(s)]
    print(f"sweep: {len(models)} model(s) ({', '.join(m.name for m in models)}), {len(run.steps)} steps, "
          f"{len(run.steps) - len(todo)} done earlier; backend {cfg.backend}; logs in {root / 'logs'}")
    if opts is None:
        failed = _run_local(run, todo)
    else:
        failed = _run_slurm(run, todo, opts, poll)
    rows = comparison_rows([(m.name, run.phase3_result(m)) for m in models])
    table = render_table(rows)
    stamp = timestamp()
    atomic_write_text(root / f"comparison_{stamp}.md", table + "\n")
    outputs = {"table_md": root / f"comparison_{stamp}.md", "table_json": root / f"comparison_{stamp}.json"}
    write_json(outputs["table_json"], {"rows": rows, "failed_steps": failed})
    sources = {f"{row['model']}_phase3": row["source"] for row in rows if row["source"]}
    meta = build_metadata("sweep", cfg, clock, inputs=sources, outputs=outputs, extra={
        "models": [{"spec": m.spec, "name": m.name, "data_dir": str(m.data_dir), "sae_path": m.sae_path} for m in models],
        "steps": [{"name": s.name, "args": s.args, "after": s.after, "log": str(s.log)} for s in run.steps],
        "passthrough": passthrough, "backend": cfg.backend, "failed_steps": failed,
    })
    write_json(root / f"comparison_{stamp}_metadata.json", meta)
    print(table)
    print(f"comparison table -> {outputs['table_md']}")
    if failed:
        logs = {s.name: s.log for s in run.steps}
        more = f" (and {len(failed) - 1} more: {', '.join(failed[1:])})" if len(failed) > 1 else ""
        print(f"error: sweep step {failed[0]} failed, see {logs[failed[0]]}{more}; "
              "fix it and rerun the same command to resume", file=sys.stderr, flush=True)
        return 2
    return 0


def _run_local(run: SweepRun, todo: list[Step]) -> list[str]:
    """Each step in order on this machine; a failure skips the steps that depend on it."""
    from common.slurm_backend import python_command, run_logged

    failed: list[str] = []
    blocked: set[str] = set()
    for step in todo:
        if step.after in blocked:
            blocked.add(step.name)
            print(f"  {step.name}: not run ({step.after} did not finish)")
            continue
        print(f"  {step.name}: running, log {step.log}", flush=True)
        code = run_logged(python_command(*step.args), str(step.log))
        if code == 0:
            run.mark_done(step, "local")
            print(f"  {step.name}: done")
        else:
            failed.append(step.name)
            blocked.add(step.name)
            print(f"  {step.name}: FAILED (exit {code}), see {step.log}")
    return failed


def _run_slurm(run: SweepRun, todo: list[Step], opts: SlurmOptions, poll: float) -> list[str]:
    """Submit every unfinished step as its own job, ``afterok`` on the step before it; watch until all end."""
    from common.slurm_backend import (
        LoggedCommand,
        cpu_environment,
        job_outcome,
        job_states,
        make_executor,
        python_command,
        refuse_if_still_queued,
    )

    jobs_file = run.root / "slurm_jobs.json"
    refuse_if_still_queued(jobs_file)
    env = cpu_environment(opts.cpus_per_task or 1) if opts.on_cpu else {}
    jobs: dict[str, Any] = {}
    for step in todo:
        executor = make_executor(run.root / "slurm", opts, f"pva-sweep-{step.name.replace('/', '-')}")
        if step.after in jobs:
            executor.update_parameters(dependency=f"afterok:{jobs[step.after].job_id}")
        step.log.parent.mkdir(parents=True, exist_ok=True)
        jobs[step.name] = executor.submit(LoggedCommand(), python_command(*step.args), str(step.log), env)
        print(f"  {step.name}: SLURM job {jobs[step.name].job_id}" + (f" after {step.after}" if step.after in jobs else ""))
        write_json(jobs_file, {name: [str(job.job_id)] for name, job in jobs.items()})
    final: dict[str, str] = {}
    last = None
    while len(final) < len(jobs):
        states = job_states([str(job.job_id) for name, job in jobs.items() if name not in final])
        counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        for step in todo:
            if step.name not in final:
                state = states.get(str(jobs[step.name].job_id))
                outcome = job_outcome(jobs[step.name], state)
                if outcome == "done":
                    run.mark_done(step, f"slurm job {jobs[step.name].job_id}")
                    final[step.name] = "done"
                    print(f"  {step.name}: done (SLURM job {jobs[step.name].job_id})")
                elif outcome == "failed":
                    blocked = final.get(step.after or "") in ("failed", "blocked")
                    final[step.name] = "blocked" if blocked else "failed"
                    print(f"  {step.name}: " + (f"not run ({step.after} did not finish)" if blocked
                                                 else f"FAILED ({state or 'left the queue without a result'}), see {step.log}"))
            fate = final.get(step.name) or outcome
            counts["failed" if fate == "blocked" else fate] += 1
        line = ", ".join(f"{v} {k}" for k, v in counts.items())
        if line != last:
            print(f"sweep: {line}", flush=True)
            last = line
        if len(final) < len(jobs):
            time.sleep(poll)
    return [name for name, fate in final.items() if fate == "failed"]


def run_steps_locally(run: SweepRun, todo: list[Step]) -> list[str]:
    """Run ``todo`` in order on this machine, marking each finished step; returns the failed steps' names.

    Public for ``run.py study``, which plans its own steps and reuses the sweep's markers and local runner.
    """
    return _run_local(run, todo)
