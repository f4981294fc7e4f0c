"""Phase 3's prompting baseline for steering (does an instruction do what steering does?).

Why: studies that compare steering methods find that simply asking the model
(a fixed instruction in the prompt) often beats steering with an SAE latent.
So beside the steered runs Phase 3 generates the validation problems once
more, greedy and unsteered, with one fixed instruction that asks for care
placed before the problem, and measures correction and corruption against the
same alpha = 0 rerun with the same exact McNemar test. The instruction goes
before the problem text, so the prompt still ends with the template's code
cue (the last prompt token every other run is read and steered at). In a
chat-format run (Phase 1.0's recorded format) the instructed text is the one
user turn, so the prompt still ends with the template's generation cue.

Nothing is tuned: the instruction is fixed in advance (no choice on
hyperparams to report), and its text is recorded in the JSON and metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

from common.datadir import DirectionSteeringResult, RecordCheckpointer
from common.modeling.generation_loop import Job, generate_and_execute
from common.modeling.model_presets import apply_prompt_format
from common.prompts import PROMPT_TEMPLATE_VERSION, build_prompt
from common.tasks import run_key
from phase3_validation.inputs import SplitTasks
from phase3_validation.steering_eval import (
    SplitBaseline,
    SteeredRun,
    SteeringContext,
    finished_run,
    program_changes,
    rates_with_baselines,
    split_jobs,
)

logger = logging.getLogger(__name__)

INSTRUCTION = ("Read the tests below carefully before writing any code: the function must have exactly the name, "
               "arguments and return values the tests use, and must pass every one of them.")


def instructed_prompt(prompt: str, instruction: str = INSTRUCTION) -> str:
    """The instruction as a first paragraph, then the unchanged template prompt (which keeps its code cue last)."""
    return f"{instruction}\n\n{prompt}"


def instructed_jobs(split: SplitTasks, tokenizer: Any, instruction: str = INSTRUCTION) -> list[Job]:
    """The split's jobs (Phase 1.0's prompts, checked) with the instruction added inside Phase 1.0's format.

    Why rebuild from the plain prompt: in chat format the instruction belongs
    inside the user turn, not in front of the chat template's markup.
    """
    return [
        dataclasses.replace(job, prompt=apply_prompt_format(
            tokenizer, instructed_prompt(build_prompt(row.text, list(row.test_list)), instruction), split.prompt_format))
        for job, row in zip(split_jobs(split, tokenizer), split.tasks.itertuples())
    ]


def prompted_generation(ctx: SteeringContext, split: SplitTasks, instruction: str = INSTRUCTION) -> SteeredRun:
    """Greedy, unsteered generation of ``split`` with the instruction; executed; resumable like a steered run."""
    jobs = instructed_jobs(split, ctx.tokenizer, instruction)
    digest = hashlib.sha256(instruction.encode()).hexdigest()[:16]
    identity: dict[str, Any] = {
        "model": ctx.model_id, "split": split.name, "tasks": split.task_ids, "max_new_tokens": ctx.gen_cfg.max_new_tokens,
        "batch_size": ctx.gen_cfg.batch_size, "prompt": PROMPT_TEMPLATE_VERSION, "seed": ctx.gen_cfg.seed,
        "instruction": digest,
    }
    if split.prompt_format != "plain":  # only then: plain runs keep their earlier checkpoint keys
        identity["prompt_format"] = split.prompt_format
    folder = ctx.checkpoint_root / f"{split.name}_prompting_{run_key(identity)}"
    checkpointer = RecordCheckpointer(folder, ctx.checkpoint_every, ctx.autosave_every, ctx.autosave_keep)
    resumed = {r["key"] for r in checkpointer.load()}
    ctx.folders.add(folder)
    records = generate_and_execute(ctx.model, ctx.tokenizer, jobs, ctx.gen_cfg, [], ctx.executor, checkpointer,
                                   desc=f"phase 3 {split.name} prompting baseline")
    return finished_run(ctx, "prompting", records, resumed, folder, split.task_ids)


def prompting_baseline(ctx: SteeringContext, base: SplitBaseline, instruction: str = INSTRUCTION
                       ) -> tuple[dict[str, Any], SteeredRun]:
    """Rates of the instructed run against ``base``'s alpha = 0 rerun (Phase 1.0's beside), and the run itself."""
    run = prompted_generation(ctx, base.split, instruction)
    rates = rates_with_baselines(base.correct, base.split.correct, run.correct,
                                 f"{base.split.name} split, prompting baseline")
    changes = program_changes(base.rerun.records, base.split.task_ids, run)
    result = {
        "instruction": instruction, "placement": "first paragraph, before the problem text; template otherwise unchanged",
        "split": base.split.name, "rates": rates, "changes_vs_alpha0": changes,
        "programs_changed_vs_alpha0": changes["n_programs_changed"],
    }
    logger.info("prompting baseline (%s): corrected %d/%d, corrupted %d/%d, McNemar p %.3g", base.split.name,
                rates["n_corrected"], rates["n_initially_incorrect"], rates["n_corrupted"], rates["n_initially_correct"],
                rates["mcnemar_p"])
    return result, run


def summary_lines(result: dict[str, Any] | None, directions: dict[str, DirectionSteeringResult]) -> list[str]:
    """The summary's prompting-baseline table, beside each direction's steering on the same validation problems."""
    lines = ["### Prompting baseline (validation split, greedy, no steering)", ""]
    if not result:
        return lines + ["Not run.", ""]
    r = result["rates"]
    lines += [f"Instruction ({result['placement']}): \"{result['instruction']}\"", "",
              "| run (validation split) | corrected | corrupted | net correction | McNemar p vs alpha = 0 rerun |",
              "|---|---|---|---|---|",
              f"| prompting baseline | {r['n_corrected']}/{r['n_initially_incorrect']} = {r['correction_rate']:.3f} "
              f"[{r['correction_ci_lo']:.3f}, {r['correction_ci_hi']:.3f}] | {r['n_corrupted']}/{r['n_initially_correct']}"
              f" = {r['corruption_rate']:.3f} [{r['corruption_ci_lo']:.3f}, {r['corruption_ci_hi']:.3f}] | "
              f"{r['net_correction']:+.3f} | {r['mcnemar_p']:.3g} |"]
    for direction, info in directions.items():
        v, t = info.validation, info.target
        lines.append(f"| {direction}-preferring SAE latent L{t.layer}/{t.latent}, alpha {info.chosen_alpha:g} | "
                     f"{v['n_corrected']}/{v['n_initially_incorrect']} = {v['correction_rate']:.3f} | "
                     f"{v['n_corrupted']}/{v['n_initially_correct']} = {v['corruption_rate']:.3f} | "
                     f"{v['correction_rate'] - v['corruption_rate']:+.3f} | {v['mcnemar_p']:.3g} |")
    return lines + ["", f"Programs changed by the instruction against the alpha = 0 rerun: "
                        f"{result['programs_changed_vs_alpha0']} of {r['n_tasks']}.", ""]
