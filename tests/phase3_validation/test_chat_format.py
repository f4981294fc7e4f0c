"""Chat-format runs: Phase 1.0 records its prompt format, Phase 1.2 and Phase 3 rebuild prompts in it.

A real Phase 1.0 (and Phase 1.2) runs on the tiny model with a Gemma-style
chat template; Phase 3's steered and instructed prompts are then compared
with the prompts Phase 1.0 stored, token for token.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import transformers

import phase0_difficulty
import phase1_0_generation
import phase1_2_temperature
from common.benchmarks.mbpp import load_mbpp
from common.config import PipelineConfig
from common.datadir import PHASE1_DATASET, metadata_path_of, write_parquet
from common.errors import PipelineError
from phase3_validation.inputs import load_inputs
from phase3_validation.prompting import INSTRUCTION, instructed_jobs
from phase3_validation.steering_eval import split_jobs
from tests.artifact_builders import write_temperature_run
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT
from tests.phase3_validation.builders import latent_item, make_sae, write_phase2_results

GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SPLITS = {"sae": slice(0, 3), "hyperparams": slice(3, 6), "validation": slice(6, 9)}


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, its tokenizer given a chat template (saved into the folder, as a chat model ships it)."""
    folder = tmp_path_factory.mktemp("chat_model") / "model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = GEMMA_STYLE_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_run(chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Phase 0 and a chat-format Phase 1.0 on 9 tasks, split 3/3/3, plus a Phase 2 results file."""
    data = tmp_path_factory.mktemp("chat_data")
    cfg = PipelineConfig(
        data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS), model=str(chat_model_dir), device="cpu", start=0, end=8,
        max_new_tokens=6, batch_size=3, workers=2, prompt_format="chat",
    )
    phase0_difficulty.run(cfg)
    dataset_path = phase1_0_generation.run(cfg)
    rows = load_mbpp(str(DEMO_PROBLEMS)).sort_values("task_id").reset_index(drop=True).iloc[:9]
    for name, part in SPLITS.items():
        write_parquet(rows.iloc[part].reset_index(drop=True), data / "phase0_1" / f"{name}_mbpp.parquet")
    sae_dir = data.parent / "saes"
    make_sae(sae_dir, 1, 64, 32)
    write_phase2_results(data, sae_dir, {"correct": [latent_item(1, 1, 3, 0.5)], "incorrect": [latent_item(1, 1, 5, 0.5)]},
                         32, [1])
    return cfg, dataset_path


def test_phase1_records_and_stores_chat_prompts(chat_run):
    cfg, dataset_path = chat_run
    meta = json.loads(metadata_path_of(dataset_path).read_text())
    assert meta["prompt_format"] == "chat" and meta["run"]["settings"]["prompt_format"] == "chat"
    prompts = PHASE1_DATASET.read_table(dataset_path)["prompt"]
    assert prompts.str.startswith("<start_of_turn>user\n").all()
    assert prompts.str.endswith("<end_of_turn>\n<start_of_turn>model\n").all()


def test_phase3_rebuilds_phase1s_chat_prompts_whatever_its_config_says(chat_run, chat_model_dir):
    cfg, dataset_path = chat_run
    stored = PHASE1_DATASET.read_table(dataset_path).set_index("task_id")["prompt"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_model_dir)
    # A config saying plain (the default, or another preset's) changes nothing: the format is Phase 1.0's.
    inputs = load_inputs(PipelineConfig(data_dir=cfg.data_dir, prompt_format="plain"))
    for split in (inputs.hyperparams, inputs.validation, inputs.sae):
        assert split is not None and split.prompt_format == "chat"
        jobs = split_jobs(split, tokenizer)
        assert [j.prompt for j in jobs] == [stored[t] for t in split.task_ids]
    # The prompting baseline puts its instruction inside the user turn; the prompt still ends with the model cue.
    for job in instructed_jobs(inputs.validation, tokenizer):
        assert job.prompt.startswith(f"<start_of_turn>user\n{INSTRUCTION}\n\n")
        assert job.prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")
        assert tokenizer(job.prompt)["input_ids"].count(tokenizer.bos_token_id) == 1
    # Rebuilding the chat run's prompts as plain text is caught, not generated from.
    plain = dataclasses.replace(inputs.validation, prompt_format="plain")
    with pytest.raises(PipelineError, match="differs from the one Phase 1.0 used"):
        split_jobs(plain, tokenizer)


def test_phase3_takes_no_prompt_format_flag(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "phase", "3", "--data-dir", str(tmp_path), "--prompt-format", "plain"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert out.returncode == 2
    assert "--prompt-format does not apply to phase 3" in out.stderr
    assert not any(tmp_path.iterdir())


def test_phase1_2_uses_phase1s_format_and_phase3_refuses_a_mismatch(chat_run):
    cfg, dataset_path = chat_run
    folder = phase1_2_temperature.run(dataclasses.replace(
        cfg, prompt_format="plain", temperatures=[0.7], samples_per_task=1, start=None, end=None, layers=[1],
    ))
    meta = json.loads((folder / "temperature_metadata.json").read_text())
    assert meta["prompt_format"] == "chat" and meta["run"]["settings"]["prompt_format"] == "chat"
    table = pd.read_parquet(folder / "dataset_temp_0_7.parquet")
    stored = PHASE1_DATASET.read_table(dataset_path).set_index("task_id")["prompt"]
    assert len(table) == 3 and all(row.prompt == stored[row.task_id] for row in table.itertuples())
    assert load_inputs(PipelineConfig(data_dir=cfg.data_dir)).temperature.temperatures == [0.7]
    # A Phase 1.2 run in plain format beside a chat Phase 1.0 is refused before any work.
    shutil.rmtree(folder)
    model = json.loads(metadata_path_of(dataset_path).read_text())["model"]
    write_temperature_run(Path(cfg.data_dir), {0.7: table[["task_id", "sample_index", "passed"]]}, model=model)
    with pytest.raises(PipelineError, match="Phase 1.2 prompts are in the plain format .* used chat"):
        load_inputs(PipelineConfig(data_dir=cfg.data_dir))


def test_phase1_merges_an_older_plain_run_and_archives_it_for_chat(chat_model_dir, tmp_path):
    """A record written before the format was a run setting still merges with plain; a chat rerun moves it aside."""
    data = tmp_path / "data"
    cfg = PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS), model=str(chat_model_dir), device="cpu",
                         start=0, end=2, max_new_tokens=4, batch_size=3, workers=1)
    phase0_difficulty.run(cfg)
    first = phase1_0_generation.run(cfg)
    meta_path = metadata_path_of(first)
    meta = json.loads(meta_path.read_text())
    for doc in (meta, meta["run"]["settings"], meta["config"]):  # as Phase 1.0 wrote it before formats were recorded
        doc.pop("prompt_format")
    meta_path.write_text(json.dumps(meta))
    merged = phase1_0_generation.run(dataclasses.replace(cfg, start=3, end=4))
    assert len(PHASE1_DATASET.read_table(merged)) == 5 and not (data / "phase1_0" / "archive").exists()
    chat = phase1_0_generation.run(dataclasses.replace(cfg, start=0, end=1, prompt_format="chat"))
    assert len(PHASE1_DATASET.read_table(chat)) == 2
    archived = list((data / "phase1_0" / "archive").glob("*/dataset_*.parquet"))
    assert {p.name for p in archived} == {first.name, merged.name}
    assert json.loads(metadata_path_of(chat).read_text())["run"]["slices"] == [[0, 1]]
