"""The real study as a list of ``run.py`` commands, with every reduced setting declared in one place.

Why commands (as the sweep does): each step is exactly what a user would type,
runs in its own process (so its metadata's peak memory is its own), logs to
its own file and resumes the way that command resumes. The study adds to the
sweep's phases what a real model needs offline: converting the GGUF model,
building the corpora, training SAEs, HumanEval's Phase 1 and the results page.

Why declared settings: a full study of SmolLM2-135M-Instruct on a 2-core CPU
would take days (steering grids, many controls, many Phase 1.2 samples, SAEs
on every layer). Each smaller choice is a ``Setting`` with the full value and
the reason beside it; the plan prints them, the study record and the results
page carry them, so no setting is reduced silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sweep.plan import Step

SMOLLM2_LAYERS = 30


@dataclass(frozen=True)
class Setting:
    """One setting of the study: the value used, what a full study would use, and why they differ (or not)."""

    value: Any
    full: Any
    reason: str

    @property
    def reduced(self) -> bool:
        return self.value != self.full


def _words(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# Estimates behind the reasons, measured on the 2-core development machine with SmolLM2-135M: one decode step
# at batch 8 about 0.08 s, a prefill of 8 prompts of 200 tokens about 5 s; one forward token of the model costs
# about 2 x 135M FLOP.
SMOLLM2_SETTINGS: dict[str, Setting] = {
    "max_new_tokens": Setting(
        256, 512, "MBPP and HumanEval solutions are short (SmolLM2's measured MBPP passes were generated within a 128-token "
        "budget); halving the budget halves the worst-case decode time of Phases 1, 1.2 and 3 on a CPU"),
    "capture_layers": Setting(
        "all", "all",
        "not reduced: every layer's last-prompt-token vector is stored (974 x 30 x 576 floats, 67 MB), so probes "
        "see every layer (Phases 1 and 1.2 get no --layers: all is their default)"),
    "sae_layers": Setting(
        [4, 8, 12, 16, 20, 24], list(range(SMOLLM2_LAYERS)),
        "six layers spread over the depth: training an SAE costs one pass over its corpus per group of layers plus "
        "its own steps, and six layers' activations fit in one pass's memory (6 x 300k tokens x 576 floats, 4 GB)"),
    "sae_tokens": Setting(
        300_000, 2_000_000, "the corpus pass is the cost on a CPU: measured in this study on the loaded 2-core "
        "machine, the pass over 302k tokens (six layers hooked, batches of 32 texts sorted by length) took 12.5 min "
        "and each layer's SAE 0.5 to 4 min, so 2M tokens would take about 1.5 h for the pass alone; the held-out "
        "FVU and L0 per layer say what this buys"),
    "corpus_max_chars": Setting(
        8_000_000, 8_000_000, "not reduced: the builder's default, more characters than the SAE token budget reads"),
    "split_fractions": Setting(
        [0.5, 0.1, 0.4], [0.5, 0.1, 0.4], "not reduced: the pipeline's sae, hyperparams and validation shares"),
    "temperatures": Setting(
        [0.4, 0.8], [0.3, 0.6, 0.9, 1.2], "two temperatures (one low, one high) instead of four: each temperature "
        "is a full pass over the validation split"),
    "samples_per_task": Setting(
        3, 5, "three samples per task and temperature (an odd number, so the majority label has no ties)"),
    "coefficients": Setting(
        [-0.2, 0.0, 0.1, 0.2], [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0],
        "a smaller grid, and a smaller scale: alpha is in units of the mean residual norm at the hook (426 at "
        "SmolLM2's layer 24), and in a pilot on 24 hyperparams tasks steering the correct-preferring latent left "
        "1, 3, 6 and 16 of 24 generations degenerate at alpha 0.05, 0.1, 0.2 and 0.3, and all 50 generated at 0.5 "
        "had no code; where target and controls alike produce no code, the test against the controls cannot "
        "separate them. Two positive coefficients are searched and one negative one is the opposite-sign check; "
        "each is a steered generation over the hyperparams split per direction and per control"),
    "n_random_controls": Setting(
        2, 3, "each control is steered at every searched coefficient and on validation; two keep the paired "
        "comparison at two thirds of the controls' cost with three"),
    "top_latents_validated": Setting(5, 5, "not reduced: statistics only, no generation"),
    "phase3_batch_size": Setting(
        24, 24, "not reduced (a speed setting): rows per batch of Phase 3's generation and forward passes; on this CPU "
        "the engine decoded 57.9 useful tokens/s at 24 rows against 32.1 at 8, the CPU default that Phases 1 and 1.2 "
        "ran at (bench.phase1_throughput, 24 MBPP prompts, 2 threads); greedy decoding does not depend on the batch, "
        "and Phase 3's alpha = 0 check compares its rerun with Phase 1 program by program"),
    "permutations": Setting(2000, 2000, "not reduced: the pipeline's default, enough shuffles that Monte Carlo error "
                            "cannot flip an ordinary verdict at 0.05 (the null costs seconds per hundred shuffles)"),
    "humaneval_prompt_format": Setting(
        "chat", "chat", "not reduced: an instruct model answers HumanEval's bare signature with a code fence "
        "(greedy SmolLM2 passed 0 of the first 32 tasks in the plain format, 3 of 32 in the instruction format), so "
        "the transfer set is generated in the EvalPlus-style instruction format; the label is still the official "
        "harness's verdict on the resulting function"),
    "bootstrap": Setting(1000, 1000, "not reduced: bootstrap intervals cost seconds"),
    "general_corpus_samples": Setting(200, 200, "not reduced: the filter reads 200 documents of the text corpus"),
}

# A tiny study for tests and a first look (any model folder, a few problems): every setting small on purpose.
TINY_SETTINGS: dict[str, Setting] = {
    "max_new_tokens": Setting(48, 512, "tiny study: a smoke run, not a measurement"),
    "capture_layers": Setting("all", "all", "tiny study: every layer"),
    "sae_layers": Setting([0, 1], [0, 1], "tiny study: every layer of a two-layer model"),
    "sae_tokens": Setting(300_000, 2_000_000, "tiny study: the demo's SAE budget (the small corpus is cycled); "
                          "fewer left the SAEs dense, and every latent then fired on general text"),
    "corpus_max_chars": Setting(40_000, 8_000_000, "tiny study: a smoke run"),
    "split_fractions": Setting(
        [0.4, 0.3, 0.3], [0.5, 0.1, 0.4], "tiny study: on a few problems each split needs both classes"),
    "temperatures": Setting([0.8], [0.3, 0.6, 0.9, 1.2], "tiny study: a smoke run"),
    "samples_per_task": Setting(1, 5, "tiny study: a smoke run"),
    "coefficients": Setting([0.0, 3.0], [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0], "tiny study: a smoke run"),
    "n_random_controls": Setting(1, 3, "tiny study: a smoke run"),
    "top_latents_validated": Setting(1, 5, "tiny study: a smoke run"),
    "phase3_batch_size": Setting(8, 8, "tiny study: the CPU default"),
    "permutations": Setting(20, 2000, "tiny study: a smoke run"),
    "humaneval_prompt_format": Setting("plain", "chat", "tiny study: the demo model learned HumanEval's plain format"),
    "bootstrap": Setting(50, 1000, "tiny study: a smoke run"),
    "general_corpus_samples": Setting(20, 200, "tiny study: a smoke run"),
}

PRESETS = {"smollm2": SMOLLM2_SETTINGS, "tiny": TINY_SETTINGS}


@dataclass
class StudyInputs:
    """Where the study reads and writes: the data directory, the benchmark files, the model and the page."""

    data_dir: Path
    mbpp_path: Path
    humaneval_path: Path | None
    model_dir: Path
    convert_gguf: bool
    report: Path
    seed: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def study_root(data_dir: Path) -> Path:
    return data_dir / "study"


def plan_study(inputs: StudyInputs, settings: dict[str, Setting], run_dir: Path, record: Path) -> list[Step]:
    """Every step, in order, each after the one before (a failure stops the steps after it).

    ``record`` is the study record the results page reads (settings and reasons).
    """
    s = {name: _words(setting.value) for name, setting in settings.items()}
    data = str(inputs.data_dir)
    model = str(inputs.model_dir)
    corpora = study_root(inputs.data_dir) / "corpora"
    code, text = corpora / "code.jsonl", corpora / "text.jsonl"
    saes = study_root(inputs.data_dir) / "saes" / inputs.model_dir.name
    common = ["--data-dir", data, "--mbpp-path", str(inputs.mbpp_path), "--seed", str(inputs.seed), "--device", inputs.device]
    # Every layer is captured by leaving --layers out: a model folder given --layers without --sae-path is checked
    # against the default SAE release's layers (gemma-scope's 26), which would refuse SmolLM2's layers 26-29.
    generation = ["--model", model, "--max-new-tokens", s["max_new_tokens"]]
    steps: list[tuple[str, list[str]]] = []
    if inputs.convert_gguf:
        steps.append(("convert-model", ["convert-gguf", "--out", model]))
    steps += [
        ("corpus-code", ["build-corpus", "--kind", "code", "--out", str(code), "--max-chars", s["corpus_max_chars"]]),
        ("corpus-text", ["build-corpus", "--kind", "text", "--out", str(text), "--max-chars", s["corpus_max_chars"]]),
        ("phase0", ["phase", "0", *common]),
        ("phase0.1", ["phase", "0.1", *common, "--split-fractions", s["split_fractions"]]),
        ("phase1", ["phase", "1", *common, *generation]),
        ("phase1.2", ["phase", "1.2", *common, *generation, "--temperatures", s["temperatures"],
                      "--samples-per-task", s["samples_per_task"]]),
        ("train-saes", ["train-saes", "--model", model, "--output", str(saes), "--layers", s["sae_layers"],
                        "--corpus", f"{code},{text}", "--tokens", s["sae_tokens"], "--seed", str(inputs.seed),
                        "--device", inputs.device]),
    ]
    phase2 = ["--model", model, "--sae-path", str(saes), "--layers", s["sae_layers"], "--general-corpus", str(text),
              "--general-corpus-samples", s["general_corpus_samples"], "--permutations", s["permutations"]]
    steps += [
        ("phase2-sae", ["phase", "2", *common, "--split", "sae", *phase2]),
        ("phase2-validation", ["phase", "2", *common, "--split", "validation", *phase2]),
    ]
    if inputs.humaneval_path is not None:
        steps.append(("humaneval-phase1", ["phase", "1", *common, *generation, "--dataset", "humaneval",
                                           "--humaneval-path", str(inputs.humaneval_path),
                                           "--prompt-format", s["humaneval_prompt_format"]]))
    # "=": a list that starts with a minus sign would read as an option.
    phase3 = ["--model", model, "--sae-path", str(saes), f"--coefficients={s['coefficients']}",
              "--n-random-controls", s["n_random_controls"], "--top-latents-validated", s["top_latents_validated"],
              "--bootstrap", s["bootstrap"], "--batch-size", s["phase3_batch_size"],
              # Hours of steered generation stay on disk: a fix to the statistics reruns Phase 3 in minutes.
              "--keep-generations"]
    if inputs.humaneval_path is not None:
        phase3 += ["--humaneval-path", str(inputs.humaneval_path)]
    steps.append(("phase3", ["phase", "3", *common, *phase3]))
    steps.append(("report", ["study-report", "--data-dir", data, "--out", str(inputs.report), "--record", str(record)]))
    planned: list[Step] = []
    for name, args in steps:
        planned.append(Step(name, args, planned[-1].name if planned else None, run_dir / "logs" / f"{name}.log"))
    return planned

