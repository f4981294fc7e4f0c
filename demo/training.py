"""Train the demo's tiny Gemma-2 model on part of the bundled problems.

Why this design (docs/design.md section 6): the demo must give every phase something
real to find. A model trained on *all* problems only separates "memorised
already" from "not memorised yet", a moment in training that churns and that
no latent tracked beyond the shuffled-label null. Instead the model is trained
to convergence on a seeded "seen" subset of the problems and never sees the
rest. At temperature 0 it then writes the memorised (correct) solution for a
seen problem and some wrong, half-remembered program for an unseen one, so
correctness follows from familiarity: something the model can represent
internally at the last prompt token (like the known-entity signal of Ferrando
et al.). Whether Phase 2 finds it is left to its permutation null.

Training is a plain PyTorch loop (AdamW) on
``build_prompt(text, test_list) + code + closing fence + <eos>``, with the
next-token loss on the solution tokens plus, weighted by
``prompt_loss_weight`` (1 in both presets), on the prompt tokens. Why the
prompt loss: with the solution loss alone the model never needs to know
whether a prompt is familiar at the last prompt token (the code cue, where the
next token is "def" for every problem), and measured on the demo preset
(seed 42, 60 seen / 40 unseen) no SAE latent beat Phase 2's permutation null
there (rank-1 correct-preferring separation 0.26, p_family 0.12; a
cross-validated linear probe on the last-token residual separated seen from
unseen with AUROC 0.78-0.82 per layer). A model that also learns the seen
prompts processes them as memorised text, and that shows at the last prompt
token: probe AUROC 0.90-0.93 at every layer, and Phase 2 finds latents that
beat the null in both directions (p_family 0.005, the smallest 200 shuffles
give; validation AUROC 0.90 for the best correct-preferring latent). Prompt and
completion are tokenised separately and concatenated, so the prompt tokens the
model learns from are exactly the tokens Phase 1 feeds it. Training stops
when every seen solution is reproduced token by token under teacher forcing
(which is what greedy decoding needs) and the solution loss is small, or at
``max_steps``: both deterministic, so two runs with the same seed give bitwise
identical weights (no wall-clock stopping rule).

Two prompt formats (``humaneval_format``, on in both presets): each
seen problem is learnt in MBPP's format and also in HumanEval's (the demo's
HumanEval view, ``demo/humaneval_view.py``: signature and docstring as the
prompt, the function body then <eos> as the completion), and the tokenizer
sees every problem in both formats. Why: a model trained on MBPP's format only
solves none of the HumanEval-format problems (it writes MBPP's "Your code
should pass these tests:" line), so the demo's transfer table had one class.
Trained on both, it solves the seen problems in either format and the unseen
ones in neither, so the HumanEval view has both classes. The unseen problems
are still never seen in any format.

The result is judged the way Phase 1 judges any model: greedy generation,
``extract_code``, and the sandboxed executor; in both formats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
import transformers

from common.datadir import read_json, write_json
from common.prompts import build_prompt, extract_code
from demo.humaneval_view import humaneval_row
from demo.presets import PresetConfig
from demo.tiny_model import save_model_folder, tiny_gemma2_config, train_tokenizer

logger = logging.getLogger(__name__)

REPORT_FILENAME = "training_report.json"
# The completion closes the code fence the prompt opened, as a base model does
# (common/prompts.py): generation then ends on the stop sequence or on <eos>.
CLOSING_FENCE = "\n```\n"

# Presets, measured on a 2-core CPU with the 100 bundled problems (60 seen):
# "demo": the shape of docs/design.md section 6 (hidden 128, 4 layers, 4 heads of 32,
#   2 key-value heads, MLP 4x hidden; 1.1M parameters): with the prompt loss
#   (seed 42) converges in 200 steps, about 85 s of training (solution loss
#   only: 140-160 steps, about 46 s).
# "test": hidden 64, 2 layers (0.19M parameters): with the prompt loss (seed 42)
#   280 steps, about 19 s of training, 22 s with the evaluation. Both: seen
#   100% solved, unseen 0%.
# Both formats (humaneval_format), "test" (seed 42), on the shared 2-core
#   machine: 480 steps instead of 340, about the same tokens (HumanEval-format
#   examples average 40 tokens, MBPP-format 94); 111 s against 130 s at a load of
#   3-4 (468 s against 321 s at 5-6). Seen 100% / unseen 0% in MBPP's format
#   (unchanged) and in HumanEval's (was 0 of 100).
# Gradient clipping keeps the larger learning rates (3e-3, 5e-3) free of the loss
# spikes they give without it; at 1e-3 convergence takes about twice the steps.
_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=512, lr=3e-3, batch_size=20, max_steps=600, prompt_loss_weight=1.0, humaneval_format=True,
    ),
    "test": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        intermediate_size=256, lr=5e-3, batch_size=10, max_steps=800, prompt_loss_weight=1.0, humaneval_format=True,
    ),
}


@dataclass
class DemoModelConfig(PresetConfig):
    """Everything that decides the demo model; recorded in the training report."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    size: str = "demo"
    # Architecture (Gemma-2, see demo/tiny_model.py for what is fixed).
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    sliding_window: int = 64
    vocab_size: int = 1024
    # Optimisation.
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 20
    max_steps: int = 600
    check_every: int = 20
    target_loss: float = 0.05
    # Weight of the prompt tokens' next-token loss next to the solution's (0: solution only).
    prompt_loss_weight: float = 0.0
    # Also train on each seen problem in HumanEval's format (demo/humaneval_view.py), so the
    # demo's HumanEval view has both classes; False: MBPP's format only.
    humaneval_format: bool = False
    # Data.
    seen_fraction: float = 0.6
    seed: int = 0
    num_threads: int = 2
    # Evaluation (greedy generation + execution).
    max_new_tokens: int = 128
    eval_batch_size: int = 16
    workers: int = 2
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.seen_fraction < 1.0:
            raise ValueError(f"seen_fraction must be strictly between 0 and 1, got {self.seen_fraction}")
        for name in ("max_steps", "check_every", "batch_size", "num_threads", "max_new_tokens", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class TrainingReport:
    """What training did and how the trained model does at temperature 0."""

    model_dir: str
    config: dict[str, Any]
    seen_task_ids: list[int]
    unseen_task_ids: list[int]
    solved: dict[int, bool]
    share_solved: float
    share_solved_seen: float
    share_solved_unseen: float
    memorised_share_seen: float
    steps: int
    final_loss: float
    train_seconds: float
    eval_seconds: float
    stopped_by: str
    n_parameters: int
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    extracted_code: dict[int, str] = field(default_factory=dict)
    outcomes: dict[int, str] = field(default_factory=dict)
    # The same problems in HumanEval's format (demo/humaneval_view.py); empty in reports of a model trained on MBPP's format only.
    solved_humaneval: dict[int, bool] = field(default_factory=dict)
    share_solved_humaneval_seen: float = math.nan
    share_solved_humaneval_unseen: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("solved", "extracted_code", "outcomes", "solved_humaneval"):
            out[name] = {str(k): v for k, v in getattr(self, name).items()}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingReport:
        values = dict(values)
        for name in ("solved", "solved_humaneval"):
            values[name] = {int(k): bool(v) for k, v in values.get(name, {}).items()}
        for name in ("extracted_code", "outcomes"):
            values[name] = {int(k): str(v) for k, v in values.get(name, {}).items()}
        values["loss_curve"] = [tuple(x) for x in values.get("loss_curve", [])]
        return cls(**values)

    @classmethod
    def load(cls, model_dir: str | Path) -> TrainingReport:
        """The report that ``train_demo_model`` wrote into ``model_dir``."""
        return cls.from_dict(read_json(Path(model_dir) / REPORT_FILENAME))


@contextlib.contextmanager
def deterministic_torch(num_threads: int) -> Iterator[None]:
    """At most ``num_threads`` threads and deterministic kernels for the block; restored afterwards.

    Why the thread count: CPU reductions may split work by thread, and the
    split changes float rounding; a fixed count is part of "same seed, same
    weights".
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, min(num_threads, old_threads)))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def choose_seen(task_ids: list[int], fraction: float, seed: int) -> list[int]:
    """A seeded subset of ``task_ids`` (sorted), of size round(fraction * n)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"seen_fraction must be strictly between 0 and 1, got {fraction}")
    ids = sorted(int(t) for t in task_ids)
    n_seen = round(fraction * len(ids))
    if n_seen == 0 or n_seen == len(ids):
        raise ValueError(f"seen_fraction {fraction} of {len(ids)} problems leaves one side empty")
    return sorted(random.Random(seed).sample(ids, n_seen))


def completion_text(code: str) -> str:
    """What the model learns to write after the prompt: the solution, then a closing fence."""
    return code.strip("\n") + CLOSING_FENCE


def humaneval_completion(canonical_solution: str) -> str:
    """What the model learns to write after a HumanEval-format prompt: the function body, ended by <eos>.

    No closing fence: HumanEval's prompt opens none, and Phase 1 labels
    ``prompt + completion`` (common/benchmarks/humaneval.py), which the body completes.
    """
    return canonical_solution.rstrip("\n") + "\n"


def formatted_texts(problem: dict[str, Any], humaneval_format: bool) -> list[tuple[str, str]]:
    """(prompt, completion) for one problem: MBPP's format, then (if asked) HumanEval's.

    Why both: the demo's HumanEval view (demo/humaneval_view.py) asks the same
    problems in HumanEval's format; a model that only learnt MBPP's format
    solves none of them, so the transfer table would have one class.
    """
    pairs = [(build_prompt(problem["text"], list(problem["test_list"])), completion_text(problem["code"]))]
    if humaneval_format:
        row = humaneval_row(problem)
        pairs.append((row["prompt"], humaneval_completion(row["canonical_solution"])))
    return pairs


def tokenizer_corpus(problems: pd.DataFrame, humaneval_format: bool = False) -> list[str]:
    """Texts the tokenizer is trained on: every prompt and every solution (seen or not), in every trained format.

    Why all problems: the tokenizer is a vocabulary, not knowledge of solutions;
    unseen problems must be tokenised as well as seen ones so that "unseen"
    differs only in what the model was trained on.
    """
    texts: list[str] = []
    for problem in problems.to_dict("records"):
        for prompt, completion in formatted_texts(problem, humaneval_format):
            texts.extend((prompt, completion))
    return texts


def encode_examples(
    problems: pd.DataFrame, tokenizer: transformers.PreTrainedTokenizerBase, humaneval_format: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with <bos>, completion ids ending in <eos>) per problem and format, in row order."""
    examples = []
    for problem in problems.to_dict("records"):
        for prompt, completion in formatted_texts(problem, humaneval_format):
            prompt_ids = tokenizer(prompt)["input_ids"]
            completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            examples.append((list(prompt_ids), list(completion_ids) + [tokenizer.eos_token_id]))
    return examples


def collate(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels (-100 on prompt and padding).

    Right padding is harmless under a causal mask: no real token attends to a
    later pad. ``labels[i, t]`` is the token at position t (as in transformers);
    the loss compares it with the prediction made at t - 1.
    """
    length = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return ids, mask, labels


def _solution_logits(
    model: transformers.PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a solution token, and those tokens.

    Why not ``model(..., labels=...)``: that projects every position (prompts
    are most of each sequence) onto the vocabulary and softcaps it, the largest
    cost of a step at this size. This computes the same thing only where a
    label exists, with Gemma-2's final-logit softcap as in
    ``Gemma2ForCausalLM.forward``.
    """
    hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    cap = model.config.final_logit_softcapping
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits, target[keep]


def solution_loss(
    model: transformers.PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the solution tokens only."""
    logits, target = _solution_logits(model, ids, mask, labels)
    return torch.nn.functional.cross_entropy(logits.float(), target)


def training_loss(
    model: transformers.PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    prompt_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(solution loss + prompt_weight * prompt loss, solution loss) for one batch.

    The prompt loss is the mean next-token cross-entropy over the prompt tokens
    after <bos> (real tokens without a label). With ``prompt_weight`` 0 this is
    exactly ``solution_loss``.
    """
    if prompt_weight == 0.0:
        loss = solution_loss(model, ids, mask, labels)
        return loss, loss
    hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target_ids = ids[:, 1:]
    sol = labels[:, 1:] != -100
    prompt = (mask[:, 1:] == 1) & ~sol
    cap = model.config.final_logit_softcapping

    def ce(keep: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = model.lm_head(hidden[:, :-1][keep])
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return torch.nn.functional.cross_entropy(logits.float(), target[keep])

    sol_loss = ce(sol, labels[:, 1:])
    return sol_loss + prompt_weight * ce(prompt, target_ids), sol_loss


@torch.no_grad()
def memorised_flags(
    model: transformers.PreTrainedModel, examples: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 32
) -> list[bool]:
    """Per example: does the argmax at every completion position equal the completion token?

    Why this check: if it holds, greedy decoding from the prompt reproduces the
    solution exactly, token by token. It costs one forward pass, not a generation.
    """
    was_training = model.training
    model.eval()
    flags: list[bool] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask, labels = collate(chunk, pad_id)
        logits, target = _solution_logits(model, ids, mask, labels)
        wrong = (logits.argmax(-1) != target).long()
        # Map each kept position back to its row: rows are in order in the boolean mask.
        rows = (labels[:, 1:] != -100).nonzero()[:, 0]
        errors = torch.zeros(len(chunk), dtype=torch.long).index_add_(0, rows, wrong)
        flags.extend(bool(e == 0) for e in errors)
    model.train(was_training)
    return flags


def _train_loop(
    model: transformers.PreTrainedModel,
    examples: list[tuple[list[int], list[int]]],
    pad_id: int,
    cfg: DemoModelConfig,
) -> tuple[int, float, float, str, list[tuple[int, float]]]:
    """AdamW over seeded shuffled epochs until memorised and the solution loss is below target, or max_steps.

    Returns (steps, final loss, memorised share, stop reason, loss curve).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    step = 0
    window: list[float] = []
    curve: list[tuple[int, float]] = []
    memorised = 0.0
    stopped_by = "max_steps"
    while step < cfg.max_steps:
        order = torch.randperm(len(examples), generator=order_gen).tolist()
        for start in range(0, len(order), cfg.batch_size):
            batch = [examples[i] for i in order[start : start + cfg.batch_size]]
            ids, mask, labels = collate(batch, pad_id)
            loss, sol_loss = training_loss(model, ids, mask, labels, cfg.prompt_loss_weight)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window.append(sol_loss.item())
            if step % cfg.check_every == 0 or step >= cfg.max_steps:
                mean_loss = sum(window) / len(window)
                window = []
                curve.append((step, mean_loss))
                flags = memorised_flags(model, examples, pad_id)
                memorised = sum(flags) / len(flags)
                logger.info("step %d: loss %.4f, memorised %.0f%% of seen problems", step, mean_loss, 100 * memorised)
                if memorised == 1.0 and mean_loss <= cfg.target_loss:
                    stopped_by = "converged"
                    return step, mean_loss, memorised, stopped_by, curve
            if step >= cfg.max_steps:
                break
    final = curve[-1][1] if curve else math.nan
    logger.warning(
        "training stopped at max_steps=%d before convergence (loss %.4f, memorised %.0f%%)",
        cfg.max_steps, final, 100 * memorised,
    )
    return step, final, memorised, stopped_by, curve


def _greedy_texts(
    model: transformers.PreTrainedModel, tokenizer: Any, prompts: list[str], cfg: DemoModelConfig,
    stop_sequences: tuple[str, ...] | None = None,
) -> list[str]:
    """The generated text per prompt (same order), at temperature 0, as Phase 1 generates (its stop sequences)."""
    from common.modeling.generation import GenerationConfig, generate_batches

    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size, seed=cfg.seed)
    if stop_sequences is not None:
        gen_cfg = dataclasses.replace(gen_cfg, stop_sequences=stop_sequences)
    texts: dict[int, str] = {}
    for batch in generate_batches(model, tokenizer, prompts, [], gen_cfg):
        for result in batch:
            texts[result.index] = result.generated_text
    return [texts[i] for i in range(len(prompts))]


def _run_items(items: list[dict[str, Any]], cfg: DemoModelConfig) -> tuple[dict[int, bool], dict[int, str]]:
    """Run the programs in the sandboxed executor: task_id -> passed, and task_id -> outcome."""
    from common.sandbox.executor import Executor, ExecutorConfig

    with Executor(ExecutorConfig(workers=cfg.workers, timeout_s=cfg.timeout_s, cpu_time_s=cfg.timeout_s)) as ex:
        results = ex.run_many(items, progress=False)
    return {int(r.task_id): bool(r.passed) for r in results}, {int(r.task_id): str(r.outcome) for r in results}


def evaluate_model(
    model_dir: str | Path, problems: pd.DataFrame, cfg: DemoModelConfig
) -> tuple[dict[int, bool], dict[int, str], dict[int, str], dict[int, bool]]:
    """Judge the saved model as Phase 1 judges any model: task_id -> passed, extracted code, outcome (MBPP's
    format), and task_id -> passed in HumanEval's format (the demo's HumanEval view).

    Why from the folder: it proves the saved folder loads through the same
    code path as ``--model PATH`` and that the numbers describe that artifact.
    Greedy generation (temperature 0), ``extract_code``, sandboxed execution;
    in HumanEval's format the completion is cut at HumanEval's stop sequences
    and judged as the official harness judges it, as ``phase 1 --dataset humaneval`` does.
    """
    from common.benchmarks.humaneval import HUMANEVAL_STOP_SEQUENCES, humaneval_completion, program_pieces
    from common.modeling.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(model_dir), torch.device("cpu"), torch.float32)
    rows = problems.to_dict("records")
    ids = [int(r["task_id"]) for r in rows]
    texts = _greedy_texts(model, tokenizer, [build_prompt(r["text"], list(r["test_list"])) for r in rows], cfg)
    codes = {t: extract_code(text) for t, text in zip(ids, texts, strict=True)}
    solved, outcomes = _run_items([
        {"task_id": t, "code": codes[t], "test_setup_code": r["test_setup_code"], "tests": list(r["test_list"])}
        for t, r in zip(ids, rows, strict=True)
    ], cfg)
    views = [humaneval_row(r) for r in rows]
    he_texts = _greedy_texts(model, tokenizer, [v["prompt"] for v in views], cfg, HUMANEVAL_STOP_SEQUENCES)
    solved_he, _ = _run_items([
        program_pieces({**v, "task_id": t}, humaneval_completion(v, text, "plain"))
        for t, v, text in zip(ids, views, he_texts, strict=True)
    ], cfg)
    return solved, codes, outcomes, solved_he


def train_demo_model(problems: pd.DataFrame, out_dir: str | Path, cfg: DemoModelConfig | None = None) -> TrainingReport:
    """Train tokenizer and model on the seen part of ``problems``, evaluate on all, save the folder.

    ``out_dir`` becomes a model folder that ``AutoModelForCausalLM`` and
    ``AutoTokenizer`` load offline (and ``--model`` accepts), with
    ``training_report.json`` beside the weights.
    """
    cfg = cfg or DemoModelConfig()
    missing = {"task_id", "text", "code", "test_list", "test_setup_code"} - set(problems.columns)
    if missing:
        raise ValueError(f"problems lack the MBPP columns {sorted(missing)}")
    if len(problems) < 2:
        raise ValueError("train_demo_model needs at least two problems (some seen, some unseen)")
    problems = problems.sort_values("task_id").reset_index(drop=True)
    seen_ids = choose_seen(problems["task_id"].tolist(), cfg.seen_fraction, cfg.seed)
    seen_set = set(seen_ids)
    unseen_ids = [int(t) for t in problems["task_id"] if int(t) not in seen_set]
    with deterministic_torch(cfg.num_threads):
        tokenizer = train_tokenizer(tokenizer_corpus(problems, cfg.humaneval_format), vocab_size=cfg.vocab_size)
        config = tiny_gemma2_config(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            intermediate_size=cfg.intermediate_size,
            sliding_window=cfg.sliding_window,
        )
        torch.manual_seed(cfg.seed)
        model = transformers.Gemma2ForCausalLM(config)
        n_params = sum(p.numel() for p in model.parameters())
        seen_rows = problems[problems["task_id"].isin(seen_set)]
        examples = encode_examples(seen_rows, tokenizer, cfg.humaneval_format)
        logger.info(
            "training a %.2fM-parameter Gemma-2 on %d seen problems (%d examples; %d unseen kept out)",
            n_params / 1e6, len(seen_ids), len(examples), len(unseen_ids),
        )
        t0 = time.perf_counter()
        steps, final_loss, memorised, stopped_by, curve = _train_loop(model, examples, tokenizer.pad_token_id, cfg)
        train_seconds = time.perf_counter() - t0
        model.eval()
        out = save_model_folder(model, tokenizer, out_dir)
        t1 = time.perf_counter()
        solved, codes, outcomes, solved_he = evaluate_model(out, problems, cfg)
        eval_seconds = time.perf_counter() - t1

    def share(ids: list[int], verdicts: dict[int, bool] = solved) -> float:
        return sum(verdicts[t] for t in ids) / len(ids) if ids else math.nan

    report = TrainingReport(
        model_dir=str(out),
        config=cfg.to_dict(),
        seen_task_ids=seen_ids,
        unseen_task_ids=unseen_ids,
        solved=solved,
        share_solved=share(seen_ids + unseen_ids),
        share_solved_seen=share(seen_ids),
        share_solved_unseen=share(unseen_ids),
        memorised_share_seen=memorised,
        steps=steps,
        final_loss=final_loss,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        stopped_by=stopped_by,
        n_parameters=n_params,
        loss_curve=curve,
        extracted_code=codes,
        outcomes=outcomes,
        solved_humaneval=solved_he,
        share_solved_humaneval_seen=share(seen_ids, solved_he),
        share_solved_humaneval_unseen=share(unseen_ids, solved_he),
    )
    write_json(Path(out) / REPORT_FILENAME, report.to_dict())
    logger.info(
        "demo model: %d steps in %.1f s, solved %.0f%% overall (seen %.0f%%, unseen %.0f%%)",
        steps, train_seconds, 100 * report.share_solved, 100 * report.share_solved_seen,
        100 * report.share_solved_unseen,
    )
    logger.info(
        "in HumanEval's format: solved %d of %d (seen %.0f%%, unseen %.0f%%)", sum(solved_he.values()), len(solved_he),
        100 * report.share_solved_humaneval_seen, 100 * report.share_solved_humaneval_unseen,
    )
    return report
