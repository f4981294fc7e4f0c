#!/usr/bin/env python3
"""Run Phase 1 or 1.2 on every visible GPU: one run.py worker per GPU, each on a contiguous slice.

    python3 multi_gpu_launcher.py --phase 1 --start 0 --end 973 --model google/gemma-2-2b
    python3 multi_gpu_launcher.py --phase 1.2 --model google/gemma-2-2b [--gpus N]

Each worker runs ``run.py phase P --start a --end b --shard-dir ...`` with
``CUDA_VISIBLE_DEVICES=k``, logs to its own file, and checkpoints as a single
run does. The launcher waits for all of them, reports each one's fate, and
merges the slices into the same outputs a single-GPU run writes, checking that
no task is missing or duplicated. A failed worker makes it exit non-zero
(naming the worker and its log); rerunning the same command resumes: finished
slices are kept, interrupted ones continue from their checkpoints.

With no GPU (or ``--gpus N`` on a machine without one) the workers run on the
CPU, one torch thread each, so the launcher can be tested anywhere.
Options it does not know are passed to every worker unchanged.

``--backend slurm`` submits the same slices as one SLURM job array through
submitit (``--gpus N`` is then the number of array tasks, default 1), waits
with progress, resubmits a failed or preempted slice up to ``--max-retries``
times (it resumes from its checkpoints), and merges as above:

    python3 multi_gpu_launcher.py --phase 1 --backend slurm --gpus 8 --partition gpu \
        --gpus-per-task 1 --time 12:00:00 --mem 64G --model google/gemma-2-2b
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import DEFAULT_MODEL, GENERATING_PHASES, PipelineConfig
from common.datadir import (
    PHASE1_DATASET,
    PHASE1_METADATA,
    TEMPERATURE_METADATA,
    TEMPERATURE_TABLE,
    RunClock,
    phase_dir,
    timestamp,
    write_json,
)
from common.errors import PipelineError
from common.phases import canonical
from common.phases import phase as spec_of
from common.tasks import model_slug, position_slices, run_key, tasks_in_range

REPO_ROOT = Path(__file__).resolve().parent

if TYPE_CHECKING:
    from common.slurm_backend import SlurmOptions

DONE_MARKER = "worker_done.json"


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", required=True, type=canonical, choices=GENERATING_PHASES,
                        help="which generating phase to run (1.0 is 1)")
    parser.add_argument("--start", type=int, help="first task position among all tasks sorted by task_id, inclusive (default 0); as in run.py")
    parser.add_argument("--end", type=int, help="last task position, inclusive (default: the last task); phase 1.2 runs the validation tasks in start..end")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--gpus", type=int, help="number of workers (default: every visible GPU, or 1 CPU worker); with --backend slurm: array tasks (default 1)")
    parser.add_argument("--data-dir", help="data directory (default ./data, env PVA_DATA_DIR)")
    parser.add_argument("--mbpp-path", help="local MBPP file (env PVA_MBPP_PATH)")
    parser.add_argument("--input", help="earlier-phase output to use instead of the newest")
    parser.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    slurm = parser.add_argument_group("--backend slurm (submitted through submitit)")
    slurm.add_argument("--backend", choices=["local", "slurm"], default="local", help="local processes (default) or a SLURM job array")
    slurm.add_argument("--partition", help="SLURM partition (default: the cluster's default partition)")
    slurm.add_argument("--account", help="SLURM account to charge")
    slurm.add_argument("--time", help="time limit per slice, SLURM syntax (default 1-00:00:00)")
    slurm.add_argument("--mem", help="memory per slice, SLURM syntax, e.g. 64G")
    slurm.add_argument("--gpus-per-task", type=int, help="GPUs per slice (default 0: the slice runs on CPU)")
    slurm.add_argument("--cpus-per-task", type=int, help="CPU cores per slice (default: SLURM's)")
    slurm.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help="any other sbatch option, e.g. qos=high (repeatable)")
    slurm.add_argument("--max-retries", type=int, default=2, help="resubmissions of a failed or preempted slice (default 2)")
    return parser.parse_known_args(argv)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _phase_module(phase: str) -> Any:
    """The phase module whose task list, run settings and publish the launcher uses (the registry names it)."""
    return importlib.import_module(str(spec_of(phase).shard_module))


def _worker_config(args: argparse.Namespace, passthrough: list[str]) -> PipelineConfig:
    """The config every worker will run with, parsed by run.py's own parser (a bad option fails here, once)."""
    from run import config_for

    argv = ["phase", args.phase, "--model", args.model, *passthrough]
    for flag, value in (("--data-dir", args.data_dir), ("--mbpp-path", args.mbpp_path), ("--input", args.input)):
        if value:
            argv += [flag, value]
    return config_for(argv)


def _tables(phase: str, shard: Path) -> dict[str, Path]:
    """The tables a finished worker left in its shard folder, by name."""
    if phase == "1":
        found = PHASE1_DATASET.in_folder(shard)
        return {"dataset": found[-1]} if found else {}
    return {p.name: p for p in TEMPERATURE_TABLE.in_folder(shard)}


def _merge(phase: str, shards: list[Path], expected_ids: list[int], samples: int) -> dict[str, Any]:
    import pandas as pd

    names = sorted({name for s in shards for name in _tables(phase, s)})
    merged = {}
    for name in names:
        parts = []
        for shard in shards:
            table = _tables(phase, shard).get(name)
            if table is None:
                raise PipelineError(f"worker folder {shard} has no {name}; rerun the launcher")
            parts.append(pd.read_parquet(table))
        df = pd.concat(parts, ignore_index=True)
        key_cols = ["task_id"] if phase == "1" else ["task_id", "sample_index"]
        dup = df[df.duplicated(key_cols)]
        if len(dup):
            raise PipelineError(f"merge of {name}: task {int(dup['task_id'].iloc[0])} appears twice")
        counts = df["task_id"].value_counts()
        missing = sorted(set(expected_ids) - set(counts.index))
        extra = sorted(set(counts.index) - set(expected_ids))
        if missing or extra:
            raise PipelineError(f"merge of {name}: {len(missing)} task(s) missing (e.g. {missing[:3]}), {len(extra)} unexpected")
        short = counts[counts != samples]
        if len(short):
            raise PipelineError(f"merge of {name}: task {int(short.index[0])} has {int(short.iloc[0])} rows, expected {samples}")
        merged[name] = df.sort_values(key_cols).reset_index(drop=True)
    return merged


def main(argv: list[str] | None = None) -> int:
    args, passthrough = _parse(argv)
    from common.logging_utils import setup_logging

    setup_logging()
    try:
        if args.backend == "local":  # local workers inherit the answer; SLURM nodes may see another network
            from common.modeling.hub import go_offline_if_unreachable

            go_offline_if_unreachable()
        return _launch(args, passthrough)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _refuse_benchmark(dataset: str, phase: str) -> None:
    """A benchmark whose settings, task list and folders the launcher does not know: refused before the lock writes."""
    from common.benchmarks import BENCHMARKS, get_benchmark

    if not get_benchmark(dataset).supports_launcher:
        known = " and ".join(b.label for b in map(get_benchmark, BENCHMARKS) if b.supports_launcher)
        raise PipelineError(f"multi_gpu_launcher.py runs {known} only; run --dataset {dataset} with run.py phase {phase}")


def _launch(args: argparse.Namespace, passthrough: list[str]) -> int:
    from common.datadir import exclusive

    cfg = _worker_config(args, passthrough)
    _refuse_benchmark(cfg.dataset, args.phase)
    from common.modeling.models import check_gated_access

    check_gated_access(cfg.model)  # once, before any worker starts or anything is written
    slurm_opts = _slurm_options(args) if args.backend == "slurm" else None
    if slurm_opts is not None:  # every refusal comes before anything is written or submitted
        from common.slurm_backend import check_slurm, require_submitit

        require_submitit()
        check_slurm(slurm_opts)
    # The launcher holds the phase's lock for the whole run; each worker locks only its own shard folder.
    with exclusive(phase_dir(cfg.data_dir, args.phase), f"phase {args.phase}"):
        return _launch_locked(args, passthrough, cfg, slurm_opts)


def _launch_locked(
    args: argparse.Namespace, passthrough: list[str], cfg: PipelineConfig, slurm_opts: SlurmOptions | None
) -> int:
    clock = RunClock()
    module = _phase_module(args.phase)
    all_ids, own_ids = module.task_universe(cfg)
    what = "MBPP" if args.phase == "1" else "the validation split"
    start, end, chosen = tasks_in_range(all_ids, own_ids, args.start, args.end, what)
    gpus = _visible_gpus() if slurm_opts is None else 0
    n_workers = args.gpus if args.gpus is not None else (max(gpus, 1) if slurm_opts is None else 1)
    if n_workers < 1:
        raise PipelineError("--gpus must be at least 1")
    on_cpu = gpus == 0 if slurm_opts is None else slurm_opts.on_cpu
    if slurm_opts is None and not on_cpu and n_workers > gpus:
        raise PipelineError(f"--gpus {n_workers} asked for, but only {gpus} GPU(s) are visible")
    slices = position_slices(all_ids, chosen, n_workers)
    if args.phase == "1":
        settings = module.run_settings(cfg)
    else:
        settings = module.run_settings(cfg, module.load_validation_tasks(cfg)[1])
    # Before any worker writes an activation: add to the earlier run, or move one with other settings aside.
    earlier = module.prepare_outputs(cfg.data_dir, settings)

    root = phase_dir(cfg.data_dir, args.phase)
    key = run_key({"phase": args.phase, "model": args.model, "start": start, "end": end, "workers": len(slices), "args": passthrough})
    run_dir = root / "shards" / f"{model_slug(args.model)}_{start}-{end}_{key}"
    log_dir = root / "logs" / f"launcher_{key}"
    log_dir.mkdir(parents=True, exist_ok=True)
    where = f"SLURM job array (partition {slurm_opts.partition or 'default'})" if slurm_opts else ("CPU" if on_cpu else "GPU")
    print(f"launcher: phase {args.phase}, tasks {start}..{end}, {len(slices)} worker(s) on {where}; logs in {log_dir}")

    fates: dict[int, str] = {}
    todo: dict[int, tuple[list[str], dict[str, str], Path, Path]] = {}
    for k, (lo, hi) in enumerate(slices):
        shard = run_dir / f"worker_{k}_{lo}-{hi}"
        if (shard / DONE_MARKER).is_file():
            fates[k] = "done earlier (kept)"
            continue
        shard.mkdir(parents=True, exist_ok=True)
        cmd, env = _worker_command(args, cfg, passthrough, shard, lo, hi, k, on_cpu, slurm_opts is not None)
        todo[k] = (cmd, env, shard, log_dir / f"worker_{k}.log")

    if slurm_opts is None:
        code = _run_local(args, todo, fates)
    else:
        code = _run_slurm(args, slurm_opts, todo, fates, log_dir, key)
    if code:
        return code
    failed = sorted(k for k, fate in fates.items() if fate.startswith("FAILED"))
    for k in sorted(fates):
        lo, hi = slices[k]
        print(f"  worker {k} ({lo}..{hi}): {fates[k]}")
    if failed:
        print(f"error: worker(s) {', '.join(map(str, failed))} failed; rerun the same command to resume", file=sys.stderr)
        return 1

    samples = 1 if args.phase == "1" else cfg.samples_per_task
    shards = [run_dir / f"worker_{k}_{lo}-{hi}" for k, (lo, hi) in enumerate(slices)]
    merged = _merge(args.phase, shards, chosen, samples)
    worker_meta = {}
    for shard in shards:
        for meta_path in [*PHASE1_METADATA.in_folder(shard), *TEMPERATURE_METADATA.in_folder(shard)]:
            worker_meta[shard.name] = json.loads(meta_path.read_text())
    extra = {
        "launcher": {"workers": len(slices), "device": "cpu" if on_cpu else "cuda", "slices": slices, "passthrough": passthrough,
                     "run_dir": str(run_dir), "backend": args.backend,
                     "slurm": None if slurm_opts is None else dataclasses.asdict(slurm_opts)},
        "n_rows": {name: len(df) for name, df in merged.items()},
        "workers": worker_meta,
        "slice": {"start": start, "end": end, "n_tasks": len(chosen)},
    }
    if args.phase == "1":
        out = module.publish(cfg, merged["dataset"], settings, earlier, (start, end), {}, clock, extra)
        print(f"merged dataset: {len(merged['dataset'])} rows of this slice -> {out} ({_rows_in(out)} rows in all)")
    else:
        by_temperature = {float(t): merged[module.temperature_table_name(t)] for t in cfg.temperatures}
        out = module.publish(cfg, by_temperature, settings, earlier, (start, end), {}, clock, extra)
        for name, df in merged.items():
            print(f"merged {name}: {len(df)} rows of this slice -> {out / name} ({_rows_in(out / name)} rows in all)")
    return 0


def _rows_in(table: Path) -> int:
    """Rows of a published table: with an earlier run's slices merged in, more than this launch merged."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(table).metadata.num_rows)


def _slurm_options(args: argparse.Namespace) -> SlurmOptions:
    from common.slurm_backend import SlurmOptions, parse_extra

    return SlurmOptions(
        partition=args.partition, account=args.account, time=args.time, mem=args.mem, gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task, extra=parse_extra(args.slurm_extra), max_retries=args.max_retries,
    )


def _worker_command(
    args: argparse.Namespace, cfg: PipelineConfig, passthrough: list[str], shard: Path, lo: int, hi: int, k: int,
    on_cpu: bool, on_slurm: bool,
) -> tuple[list[str], dict[str, str]]:
    """The ``run.py phase`` command of one slice and the environment it needs (same for both backends)."""
    cmd = [
        sys.executable, str(REPO_ROOT / "run.py"), "phase", args.phase, "--start", str(lo), "--end", str(hi),
        "--model", args.model, "--data-dir", str(cfg.data_dir), "--shard-dir", str(shard), *passthrough,
    ]
    if cfg.mbpp_path:
        cmd += ["--mbpp-path", cfg.mbpp_path]
    if args.input:
        cmd += ["--input", args.input]
    env: dict[str, str] = {}
    if on_cpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PVA_TORCH_THREADS="1")
        if "--device" not in passthrough:
            cmd += ["--device", "cpu"]
    elif not on_slurm:
        env["CUDA_VISIBLE_DEVICES"] = str(k)  # on SLURM the job's GPU allocation sets it
    return cmd, env


def _finished(phase: str, shard: Path) -> bool:
    """A worker that exited 0 and left its tables is done for good: mark it so a rerun keeps it."""
    if not _tables(phase, shard):
        return False
    write_json(shard / DONE_MARKER, {"returncode": 0, "finished": timestamp()})
    return True


def _run_local(args: argparse.Namespace, todo: dict[int, tuple[list[str], dict[str, str], Path, Path]], fates: dict[int, str]) -> int:
    """One subprocess per slice on this machine; waits for all of them. Returns 130 when interrupted."""
    procs: dict[int, tuple[subprocess.Popen, Path, Path]] = {}
    for k, (cmd, env, shard, log_path) in todo.items():
        handle = open(log_path, "a", encoding="utf-8")
        handle.write(f"\n=== {timestamp()} {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, cwd=REPO_ROOT)
        procs[k] = (proc, shard, log_path)
        handle.close()
        print(f"  worker {k}: tasks {cmd[cmd.index('--start') + 1]}..{cmd[cmd.index('--end') + 1]} -> pid {proc.pid}, log {log_path}")
    try:
        while any(p.poll() is None for p, _, _ in procs.values()):
            time.sleep(args.poll)
    except KeyboardInterrupt:
        for p, _, _ in procs.values():
            p.terminate()
        print("launcher interrupted: workers stopped; rerun the same command to resume", file=sys.stderr)
        return 130
    for k, (proc, shard, log_path) in procs.items():
        if proc.returncode == 0 and _finished(args.phase, shard):
            fates[k] = "finished"
        else:
            fates[k] = f"FAILED (exit {proc.returncode}), see {log_path}"
    return 0


def _run_slurm(
    args: argparse.Namespace, opts: SlurmOptions, todo: dict[int, tuple[list[str], dict[str, str], Path, Path]],
    fates: dict[int, str], log_dir: Path, key: str,
) -> int:
    """Submit the unfinished slices as one job array; resubmit failures; wait. Returns 130 when interrupted."""
    from common.slurm_backend import SliceWatcher

    watcher = SliceWatcher(
        opts, log_dir / "slurm", f"pva-phase{args.phase}-{key}", log_dir / "slurm_jobs.json",
        {k: (cmd, str(log_path), env) for k, (cmd, env, _, log_path) in todo.items()},
    )
    watcher.refuse_if_still_queued()
    if todo:
        watcher.submit_array()
    try:
        outcomes = watcher.wait(args.poll, lambda k: _finished(args.phase, todo[k][2]))
    except KeyboardInterrupt:
        watcher.cancel_all()
        print("launcher interrupted: SLURM jobs cancelled; rerun the same command to resume", file=sys.stderr)
        return 130
    for k, outcome in outcomes.items():
        fates[k] = outcome
    return 0


if __name__ == "__main__":
    sys.exit(main())
