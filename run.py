#!/usr/bin/env python3
"""PVA-SAE: one dispatcher for every phase and tool.

    python3 run.py phase 0|0.1|1|1.2|2|3 [options]
    python3 run.py check-mbpp [--workers N] [--timeout S] [--json PATH]
    python3 run.py test-gpu [--model M]
    python3 run.py demo [--data-dir D] [--retrain]
    python3 run.py sweep --models A,B [--backend local|slurm] [phase options]

Every user-facing error is one line on stderr and exit code 2 (DESIGN section 7).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.config import DEFAULT_MODEL, PipelineConfig  # noqa: E402
from common.errors import PipelineError  # noqa: E402

logger = logging.getLogger("run")

# phase -> "module:function"; imported lazily so that `run.py phase 0` does not pay for torch.
PHASES: dict[str, str] = {
    "0": "phase0_difficulty:run",
    "0.1": "phase0_1_splitting:run",
    "1": "phase1_0_generation:run",
    "1.2": "phase1_2_temperature:run",
    "2": "phase2_sae_analysis:run",
    "3": "phase3_validation:run",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (and exit code 2) rather than a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("global options")
    g.add_argument("--data-dir", help="data directory for all outputs (default ./data, env PVA_DATA_DIR)")
    g.add_argument("--mbpp-path", help="local MBPP file, original jsonl or parquet (env PVA_MBPP_PATH); default: the hub")
    g.add_argument("--seed", type=int, help="random seed for splits, sampling, shuffles (default 42)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_phase_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("number", choices=list(PHASES), help="which phase to run")
    parser.add_argument("--input", help="use this earlier-phase output instead of the newest one")

    g = parser.add_argument_group("phase 0.1 (split)")
    g.add_argument("--split-fractions", type=_float_list, help="sae,hyperparams,validation fractions (default 0.5,0.1,0.4)")
    g.add_argument("--n-strata", type=int, help="difficulty strata, quantiles of complexity (default 4)")

    g = parser.add_argument_group("phases 1 and 1.2 (generation)")
    g.add_argument("--model", help=f"hub id or local model folder (default {DEFAULT_MODEL})")
    g.add_argument("--start", type=int, help="first task position, inclusive (default 0)")
    g.add_argument("--end", type=int, help="last task position, inclusive (default: last task)")
    g.add_argument("--layers", type=_int_list, help="layers to capture, e.g. 0,6,12 (default all)")
    g.add_argument("--batch-size", type=int, help="prompts per batch (default: from free GPU memory; 8 on CPU)")
    g.add_argument("--max-new-tokens", type=int, help="generation budget per solution (default 512)")
    g.add_argument("--workers", type=int, help="CPU workers that run the tests (default 4)")
    g.add_argument("--timeout", dest="timeout_s", type=float, help="wall (and CPU) seconds per test program (default 30)")
    g.add_argument("--temperatures", type=_float_list, help="phase 1.2 temperatures (default 0.3,0.6,0.9,1.2)")
    g.add_argument("--samples-per-task", type=int, help="phase 1.2 samples per task and temperature (default 5)")
    g.add_argument("--checkpoint-every", type=int, help="records between checkpoints (default 50)")
    g.add_argument("--autosave-every", type=int, help="records between full autosaves, 3 newest kept (default 100)")
    g.add_argument("--shard-dir", help="(set by multi_gpu_launcher.py) write this slice's table here")

    g = parser.add_argument_group("phase 2 (SAE analysis)")
    g.add_argument("--split", choices=["sae", "validation"], help="which split to analyse (default sae)")
    g.add_argument("--sae-release", help="SAE Lens release (default gemma-scope-2b-pt-res-canonical)")
    g.add_argument("--sae-id-template", help="SAE id, {layer} and {width} filled in (default layer_{layer}/width_{width}/canonical)")
    g.add_argument("--sae-width", help="SAE width in the id (default 16k)")
    g.add_argument("--sae-path", help="local folder with one SAE Lens folder per layer, named layer_{L}")
    g.add_argument("--top-k", type=int, help="latents ranked per direction (default 20)")
    g.add_argument("--permutations", type=int, help="label shuffles of the permutation null (default 200)")
    g.add_argument("--general-corpus", help="local text or jsonl file for the general-text filter (default NeelNanda/pile-10k)")
    g.add_argument("--no-general-filter", dest="general_filter", action="store_const", const=False, help="do not drop latents that fire on general text")
    g.add_argument("--general-filter-threshold", type=float, help="drop latents firing on at least this share of general tokens (default 0.02)")
    g.add_argument("--general-corpus-samples", type=int, help="documents drawn from the general corpus (default 200)")
    g.add_argument("--general-corpus-tokens", type=int, help="tokens kept per general-corpus document (default 128)")

    g = parser.add_argument_group("phase 3 (validation)")
    g.add_argument("--coefficients", type=_float_list, help="steering coefficients in units of the mean residual norm (default -1,-0.5,-0.25,0,0.25,0.5,1)")
    g.add_argument("--hook-point", choices=["resid_pre", "resid_mid", "resid_post"], help="where the steering vector is added (default resid_post)")
    g.add_argument("--steer-positions", choices=["prompt", "all"], help="steer prompt tokens only, or every token (default all)")
    g.add_argument("--n-random-controls", type=int, help="random near-zero-separation control latents (default 3)")
    g.add_argument("--bootstrap", type=int, help="bootstrap resamples for AUROC intervals (default 1000)")
    g.add_argument("--top-latents-validated", type=int, help="top latents per direction given the statistical validation (default 5)")
    g.add_argument("--control-max-separation", type=float, help="largest |separation| a random control latent may have (default 0.01)")
    g.add_argument("--steering-max-new-tokens", type=int, help="generation budget of steered runs (default: Phase 1's)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    phase = sub.add_parser("phase", help="run one phase of the pipeline")
    _add_phase_options(phase)
    _add_global_options(phase)

    check = sub.add_parser("check-mbpp", help="run every reference solution through the executor")
    check.add_argument("--workers", type=int, default=None, help="parallel test workers (default 4)")
    check.add_argument("--timeout", dest="timeout_s", type=float, default=None, help="wall (and CPU) seconds per program (default 30)")
    check.add_argument("--json", dest="json_path", help="write one result per task to this JSON file")
    _add_global_options(check)

    gpu = sub.add_parser("test-gpu", help="devices, memory, dtypes, and a one-batch generation smoke test")
    gpu.add_argument("--model", help=f"hub id or local model folder (default {DEFAULT_MODEL})")
    gpu.add_argument("--batch-size", type=int, help="prompts in the smoke-test batch (default 2)")
    _add_global_options(gpu)

    demo = sub.add_parser("demo", help="the whole pipeline offline on a tiny trained model")
    demo.add_argument("--retrain", action="store_true", help="retrain the demo model and SAEs even if cached")
    demo.add_argument("--size", choices=["demo", "test"], default="demo", help="demo (default) or the smaller test size")
    _add_global_options(demo)
    _add_sweep_parser(sub)
    return parser


def _add_sweep_parser(sub: Any) -> None:
    """``run.py sweep``: its own options come from PipelineConfig's field help; other options go to every phase."""
    import dataclasses

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(PipelineConfig)}
    sweep = sub.add_parser("sweep", allow_abbrev=False, help="Phases 0-3 for several models, locally or as SLURM jobs, and a comparison table")
    sweep.add_argument("--models", required=True, type=lambda t: [m.strip() for m in t.split(",") if m.strip()], help=helps["models"])
    sweep.add_argument("--backend", choices=["local", "slurm"], help=helps["backend"])
    sweep.add_argument("--sae-path", help="local SAE folder per model; {model} is replaced by each model's short name")
    for name in ("partition", "account", "mem"):
        sweep.add_argument(f"--{name}", help=helps[name])
    sweep.add_argument("--time", dest="slurm_time", help=helps["slurm_time"])
    sweep.add_argument("--gpus-per-task", type=int, help=helps["gpus_per_task"])
    sweep.add_argument("--cpus-per-task", type=int, help=helps["cpus_per_task"])
    sweep.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help=helps["slurm_extra"])
    sweep.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    sweep.add_argument("--data-dir", help="data directory: shared Phases 0/0.1 here, each model under models/<name>/")
    sweep.add_argument("-v", "--verbose", action="store_true", help="debug logging")


# The sweep sets these per model and step; a user passing them would silently be overridden.
_SWEEP_OWNED = ("--model", "--input", "--split", "--start", "--end", "--shard-dir", "--data-dir", "--sae-path")


def _sweep_passthrough(extra: list[str]) -> list[str]:
    """Options for every phase of the sweep, checked against the phase parser before anything runs."""
    owned = [a for a in extra if a.split("=")[0] in _SWEEP_OWNED]
    if owned:
        raise PipelineError(f"run.py sweep sets {owned[0].split('=')[0]} itself for each model and step; drop it")
    phase = OneLineParser(prog="run.py sweep", add_help=False)
    _add_phase_options(phase)
    _add_global_options(phase)

    def refuse(message: str) -> None:
        raise PipelineError(f"run.py sweep: {message} (phase options are passed to every step)")

    phase.error = refuse  # type: ignore[method-assign]
    phase.parse_args(["0", *extra])
    return extra


def _config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig.from_overrides(vars(args))


def _load_entry(spec: str) -> Callable[..., Any]:
    module_name, func_name = spec.split(":")
    module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if func is None:
        raise PipelineError(f"{module_name} is not built yet (see README: which phases exist)")
    return func


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "sweep":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from common.logging_utils import setup_logging

    setup_logging(getattr(args, "verbose", False))
    try:
        cfg = _config_from_args(args)
        if args.command == "sweep":
            from sweep.runner import run_sweep

            return run_sweep(cfg, _sweep_passthrough(extra), poll=args.poll)
        if args.command == "phase":
            return _run_phase(args.number, cfg)
        if args.command == "check-mbpp":
            from common.check_mbpp import check_mbpp_cli

            return check_mbpp_cli(cfg, json_path=args.json_path)
        if args.command == "test-gpu":
            from common.gpu_check import test_gpu_cli

            return test_gpu_cli(cfg)
        if args.command == "demo":
            from demo.pipeline import run_demo_cli

            return run_demo_cli(cfg, retrain=args.retrain, size=args.size)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 2


def _run_phase(number: str, cfg: PipelineConfig) -> int:
    from common.logging_utils import add_file_log, remove_file_log
    from common.paths import phase_dir, timestamp

    threads = os.environ.get("PVA_TORCH_THREADS")
    if threads and number in ("1", "1.2", "2", "3"):
        import torch  # a CPU worker of the launcher: one thread each, or they fight for the cores

        torch.set_num_threads(int(threads))
    entry = _load_entry(PHASES[number])
    log_path = phase_dir(cfg.data_dir, number) / "logs" / f"phase{number}_{timestamp()}.log"
    handler = add_file_log(log_path)
    try:
        logger.info("phase %s: log file %s", number, log_path)
        result = entry(cfg)
    finally:
        remove_file_log(handler)
    print(f"phase {number} done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
