"""Confidence baselines known before generation: read at the last prompt token, one forward pass per prompt.

Why: the model's confidence is the baseline a hidden-state predictor must
beat, but ``mean_logprob`` (the mean log-probability of the model's own
tokens) is only known after the whole answer is written, which a predictor
read at the last prompt token is not. Comparing the two mixes a forecast with
a post-mortem. So beside it Phase 3 measures three baselines that are known at
the same moment as the SAE latents and the probes, before any token is
generated:

* ``first_token_logprob``: the log-probability of the first token greedy
  decoding writes (the largest next-token log-probability after Phase 1.0's
  own prompt);
* ``first_token_entropy``: the entropy (nats) of that next-token distribution;
* ``self_assessment``: the model's probability of answering yes when asked,
  right after the task, whether the code it writes will pass the tests:
  P(yes) / (P(yes) + P(no)) over the next token, where yes and no are each
  the first tokens of a few spellings (``Yes``, `` Yes``, ``yes``, `` yes``).
  The question prompt is ``SELF_ASSESSMENT_TEMPLATE`` (recorded in the
  results); no solution is written first, so it is a forecast too.

Where: Phase 3, which loads the model for steering anyway; the prompts are
Phase 1.0's stored ones (and the split tables' problems), so any earlier
Phase 1 dataset gets these baselines without regenerating. The batch is left
padded with explicit position ids, as generation pads it, so the numbers are
those of the first generation step.

Rules (the reviewer baselines' own): each baseline's sign is learnt on the sae
split, the one compared with the latent and the probe is chosen by hyperparams
AUROC, and every reported number is on validation.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.datadir import read_json, save_npz, write_json
from common.modeling.generation import padding_capped_batches
from common.modeling.model_presets import apply_prompt_format
from common.prompts import CODE_CUE, build_prompt
from phase3_validation.inputs import Phase3Inputs, SplitTasks

logger = logging.getLogger(__name__)

SELF_ASSESSMENT_VERSION = "self-assessment-yes-no-v1"
SELF_ASSESSMENT_QUESTION = (
    "Question: if you write the Python code for this task now, will it pass all of these tests? Answer Yes or No."
)
# Plain prompts end with an answer cue; chat prompts put the question in the user turn and the
# template's assistant header is the cue.
SELF_ASSESSMENT_TEMPLATE = "<task text>\n" "Your code should pass these tests:\n\n<asserts>\n\n" + SELF_ASSESSMENT_QUESTION
PLAIN_ANSWER_CUE = "\nAnswer:"
YES_SPELLINGS = ("Yes", " Yes", "yes", " yes")
NO_SPELLINGS = ("No", " No", "no", " no")

# When each reviewer predictor is known: before generation (from the prompt alone) or after it.
BEFORE = "before generation"
AFTER = "after generation"
KNOWN = {
    "latent": BEFORE, "probe": BEFORE, "probe_length_residualised": BEFORE, "first_token_logprob": BEFORE, "first_token_entropy": BEFORE,
    "self_assessment": BEFORE, "mean_logprob": AFTER,
}
NAMES = {
    "first_token_logprob": "log-probability of the first generated token",
    "first_token_entropy": "entropy of the first-token distribution",
    "self_assessment": "self-assessment P(yes: my code will pass)",
}
SPLITS = ("sae", "hyperparams", "validation")


@dataclass
class PromptConfidence:
    """Per baseline, per split (``sae``, ``hyperparams``, ``validation``): one value per task, in the split's order."""

    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def pair(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(sae, validation) values: what the reviewer baselines fit on and report on."""
        return self.scores[key]["sae"], self.scores[key]["validation"]


def self_assessment_prompt(split_row: Any, prompt_format: str, tokenizer: Any) -> str:
    """The question asked after one MBPP task: its text and asserts (Phase 1's wording), then the yes/no question."""
    task = build_prompt(split_row.text, list(split_row.test_list))
    task = task[: -len(CODE_CUE)] if task.endswith(CODE_CUE) else task
    if prompt_format == "plain":
        return task + SELF_ASSESSMENT_QUESTION + PLAIN_ANSWER_CUE
    return apply_prompt_format(tokenizer, task + SELF_ASSESSMENT_QUESTION, prompt_format)


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First token ids of the yes and of the no spellings; a token both start with is dropped (it says neither)."""
    def first(spelling: str) -> int | None:
        ids = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else None

    yes = {i for i in (first(s) for s in YES_SPELLINGS) if i is not None}
    no = {i for i in (first(s) for s in NO_SPELLINGS) if i is not None}
    return sorted(yes - no), sorted(no - yes)


def _log_probs(model: Any, tokenizer: Any, prompts: list[str]) -> np.ndarray:
    """log-softmax of the next-token logits after each prompt of one batch (float32, batch x vocabulary)."""
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    mask = enc["attention_mask"]
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding, positioned as generate() positions it
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                       logits_to_keep=1).logits[:, -1, :]
    return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()


def _in_prompt_order(model: Any, tokenizer: Any, prompts: list[str], batch_size: int,
                     reduce: Callable[[np.ndarray], tuple[np.ndarray, ...]], desc: str) -> list[np.ndarray]:
    """``reduce`` of each batch's next-token log-probabilities, gathered back into prompt order.

    Why reduced batch by batch: a whole split's distributions would not fit
    (974 prompts x a 256k vocabulary is 1 GB in float32). Why batches of
    similar length (``padding_capped_batches``): a batch is padded to its
    longest prompt, and MBPP's one 3,716-token prompt among prompts of about
    100 would pad whichever batch it fell in.
    """
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    batches = padding_capped_batches(lengths, batch_size)
    out: list[np.ndarray] = []
    for members in tqdm(batches, desc=desc, unit="batch", disable=len(batches) <= 1):
        parts = reduce(_log_probs(model, tokenizer, [prompts[i] for i in members]))
        if not out:
            out = [np.empty((len(prompts), *part.shape[1:]), dtype=part.dtype) for part in parts]
        for array, part in zip(out, parts):
            array[members] = part
    return out


def next_token_log_probs(model: Any, tokenizer: Any, prompts: list[str], batch_size: int) -> np.ndarray:
    """log-softmax of the next-token logits after each prompt (float32, prompts x vocabulary)."""
    out = _in_prompt_order(model, tokenizer, prompts, batch_size, lambda b: (b,), "next-token distributions")
    return out[0] if out else np.zeros((0, 0), dtype=np.float32)


def _first_token(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(greedy first token's log-probability, entropy in nats) per row."""
    log_probs = log_probs.astype(np.float64)
    probs = np.exp(log_probs)
    terms = np.where(probs > 0, probs * np.where(np.isfinite(log_probs), log_probs, 0.0), 0.0)  # 0 log 0 = 0
    return log_probs.max(axis=1), -terms.sum(axis=1)


def _p_yes(log_probs: np.ndarray, yes: list[int], no: list[int]) -> np.ndarray:
    p = np.exp(log_probs.astype(np.float64))
    p_yes, p_no = p[:, yes].sum(axis=1), p[:, no].sum(axis=1)
    return p_yes / np.maximum(p_yes + p_no, np.finfo(np.float64).tiny)


def _splits(inputs: Phase3Inputs) -> dict[str, SplitTasks]:
    found = {"hyperparams": inputs.hyperparams, "validation": inputs.validation}
    if inputs.sae is not None:
        found["sae"] = inputs.sae
    return found


def compute(model: Any, tokenizer: Any, inputs: Phase3Inputs, batch_size: int) -> PromptConfidence:
    """Every before-generation baseline on every split Phase 3 reads (MBPP's), from Phase 1.0's prompts."""
    result = PromptConfidence()
    if inputs.sae is None:  # nothing could be fitted: the reviewer section is a note, so no pass is spent
        result.info = {"note": "not computed: no sae split to fit on"}
        return result
    splits = _splits(inputs)
    yes, no = answer_token_ids(tokenizer)
    fmt = inputs.validation.prompt_format
    result.info = {
        "rule": "read at the last prompt token of Phase 1.0's prompt (first token) or of the self-assessment "
                "question (asked right after the task, no solution written); sign fitted on sae, the baseline "
                "compared with the latent and probe chosen by hyperparams AUROC, numbers on validation",
        "self_assessment_version": SELF_ASSESSMENT_VERSION,
        "self_assessment_template": SELF_ASSESSMENT_TEMPLATE + (PLAIN_ANSWER_CUE if fmt == "plain" else ""),
        "self_assessment_format": fmt,
        "yes_token_ids": yes, "no_token_ids": no,
        "yes_tokens": [tokenizer.decode([i]) for i in yes], "no_tokens": [tokenizer.decode([i]) for i in no],
        "note": None,
    }
    for name, split in splits.items():
        prompts = [str(p) for p in split.baseline["prompt"]]
        first = _in_prompt_order(model, tokenizer, prompts, batch_size, _first_token, f"first token, {name}")
        result.scores.setdefault("first_token_logprob", {})[name] = first[0] if first else np.zeros(0)
        result.scores.setdefault("first_token_entropy", {})[name] = first[1] if first else np.zeros(0)
        if yes and no:
            questions = [self_assessment_prompt(row, fmt, tokenizer) for row in split.tasks.itertuples()]
            if name == "validation":
                result.info["self_assessment_example"] = questions[0] if questions else None
            asked = _in_prompt_order(
                model, tokenizer, questions, batch_size,
                lambda b: (_p_yes(b, yes, no), np.exp(b[:, yes + no].astype(np.float64)).sum(axis=1)),
                f"self-assessment, {name}")
            result.scores.setdefault("self_assessment", {})[name] = asked[0] if asked else np.zeros(0)
            # How much of the next token's probability the yes and no tokens hold: a small mass means the
            # model would rather answer otherwise (a fence, prose), and P(yes) is read from a thin slice.
            mass = asked[1] if asked else np.zeros(0)
            result.info.setdefault("yes_no_mass_mean", {})[name] = float(mass.mean()) if len(mass) else None
    if not (yes and no):
        result.info["note"] = "self-assessment unavailable: the tokenizer gives yes and no the same first token"
    logger.info("phase 3: before-generation baselines on %s", ", ".join(f"{k} ({len(v.baseline)})" for k, v in splits.items()))
    return result


def chosen_before_generation(prompt_time: PromptConfidence, y_sae: np.ndarray, y_hp: np.ndarray) -> str | None:
    """The before-generation baseline with the highest hyperparams AUROC (sign learnt on sae); None if none."""
    from sklearn.metrics import roc_auc_score

    from phase3_validation.baselines import oriented_score

    if len(np.unique(y_hp)) < 2:
        return None
    best, best_auc = None, -1.0
    for key, by_split in prompt_time.scores.items():
        if "sae" not in by_split or "hyperparams" not in by_split:
            continue
        auc = float(roc_auc_score(y_hp, oriented_score(by_split["sae"], y_sae, by_split["hyperparams"])))
        prompt_time.info.setdefault("hyperparams_auroc", {})[key] = auc
        if auc > best_auc:
            best, best_auc = key, auc
    return best


def summary_lines(section: dict[str, Any] | None) -> list[str]:
    """When each predictor of the summary is known, and how the before-generation baselines were read."""
    lines = ["### When each predictor is known", "",
             "A predictor available before generation can decide whether to generate at all; one known only after "
             "generation is a check on an answer already written.", "",
             "| predictor | available before generation | read from |", "|---|---|---|",
             "| SAE latents (sections 1-2) | yes | residual stream at the last prompt token |",
             "| logistic and difference-of-means probes | yes | residual stream at the last prompt token |",
             "| confounds (prompt length, reference complexity, asserts) | yes | the prompt and the task |",
             f"| {NAMES['first_token_logprob']} | yes | next-token distribution after the prompt |",
             f"| {NAMES['first_token_entropy']} | yes | next-token distribution after the prompt |",
             f"| {NAMES['self_assessment']} | yes | next token after a yes/no question about the task (no code written) |",
             "| mean log-probability of the model's own tokens (mean_logprob) | **no**: after generation | "
             "every generated token |", ""]
    info = (section or {}).get("prompt_time")
    if not info:
        note = (section or {}).get("prompt_time_note") or "not computed"
        return lines + [f"Before-generation confidence baselines: {note}.", ""]
    lines.append(f"Self-assessment question ({info['self_assessment_version']}, {info['self_assessment_format']} "
                 f"format; yes tokens {info['yes_tokens']}, no tokens {info['no_tokens']}): "
                 f"\"{info['self_assessment_template']}\"")
    if info.get("yes_no_mass_mean"):
        lines.append("Mean probability of a yes or no token as the answer's first token: " + ", ".join(
            f"{k} {v:.3f}" for k, v in info["yes_no_mass_mean"].items() if v is not None) + ".")
    if info.get("note"):
        lines.append(f"{info['note'][0].upper()}{info['note'][1:]}.")
    chosen = (section or {}).get("prompt_time_chosen")
    if chosen:
        aucs = info.get("hyperparams_auroc", {})
        lines.append(f"Before-generation confidence compared with the latent and the probe: {NAMES[chosen]} (highest "
                     "hyperparams AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()) + ").")
        for p in (section or {}).get("predictors", {}).values():
            c = p.get("beyond_prompt_confidence")
            if c:
                lines.append(f"The {p['name']} beside it: AUROC of {NAMES[chosen]} alone {c['auroc_confounds']:.3f}, "
                             f"with the predictor added {c['auroc_with_predictor']:.3f}, gain {c['delta']:+.3f} "
                             f"[{c['delta_low']:+.3f}, {c['delta_high']:+.3f}] "
                             f"({'adds information' if c['adds_information'] else '**adds no information shown**'}).")
    return lines + [""]


CACHE_PREFIX = "before_generation_"


def compute_cached(model: Any, tokenizer: Any, inputs: Phase3Inputs, batch_size: int, folder: Path,
                   model_id: str) -> PromptConfidence:
    """:func:`compute`, kept in ``folder`` (Phase 3's checkpoints) so that a rerun after a kill reads it back.

    Why: the pass reads every MBPP prompt twice (first token, self-assessment),
    about 17 minutes for SmolLM2 on two CPU cores, and a Phase 3 killed during
    hours of steering would pay it again at every restart. The key holds what
    the numbers depend on: the model, its dtype, the batch size, the question's
    version and format, and every prompt and question of every split. Phase 3
    deletes the file with its steering checkpoints once its outputs are written.
    """
    key = _cache_key(model, tokenizer, inputs, batch_size, model_id)
    arrays, info = folder / f"{CACHE_PREFIX}{key}.npz", folder / f"{CACHE_PREFIX}{key}.json"
    if arrays.is_file() and info.is_file():
        logger.info("phase 3: before-generation baselines read back from %s", arrays)
        return _read_cache(arrays, info)
    result = compute(model, tokenizer, inputs, batch_size)
    save_npz(arrays, **{f"{name}__{split}": values for name, by_split in result.scores.items()
                        for split, values in by_split.items()})
    write_json(info, result.info)  # written last: a cache without it is never read
    return result


def _cache_key(model: Any, tokenizer: Any, inputs: Phase3Inputs, batch_size: int, model_id: str) -> str:
    digest = hashlib.sha256()
    fmt = inputs.validation.prompt_format
    for part in (model_id, str(next(model.parameters()).dtype), str(batch_size), SELF_ASSESSMENT_VERSION, fmt):
        digest.update(part.encode() + b"\0")
    for name, split in _splits(inputs).items():
        digest.update(name.encode() + b"\0")
        for prompt in split.baseline["prompt"]:
            digest.update(str(prompt).encode() + b"\0")
        for row in split.tasks.itertuples():
            digest.update(self_assessment_prompt(row, fmt, tokenizer).encode() + b"\0")
    return digest.hexdigest()[:16]


def _read_cache(arrays: Path, info: Path) -> PromptConfidence:
    result = PromptConfidence(info=read_json(info))
    with np.load(arrays) as saved:
        for name in saved.files:
            baseline, split = name.split("__")
            result.scores.setdefault(baseline, {})[split] = saved[name]
    return result


def clear_cache(folder: Path) -> None:
    """Delete the kept baselines (Phase 3 calls this once its outputs are written)."""
    for path in folder.glob(f"{CACHE_PREFIX}*"):
        path.unlink()
