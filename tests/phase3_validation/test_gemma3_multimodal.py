"""Phase 3 on a Gemma 3 model that loads as ``Gemma3ForConditionalGeneration``, as the 4B-and-larger presets do.

Why its own model: the multimodal ``Gemma3Config`` has no ``hidden_size`` (the
decoder's sizes live in ``text_config``), so any size read straight from
``model.config`` stops Phase 3 before it steers. The model is small and
trained here in seconds: a tiny Gemma 3 text decoder learns half of a dozen
bundled problems (so Phase 1.0 labels both classes, as a real model's run
would), and its weights go into a ``Gemma3ForConditionalGeneration`` with a
one-layer vision tower, saved as a folder that ``--model`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from sklearn.metrics import roc_auc_score

import phase0_difficulty
import phase1_0_generation
import phase3_validation
from common.benchmarks.mbpp import load_mbpp
from common.config import PipelineConfig
from common.datadir import activation_path, load_activation
from common.modeling.models import load_model_and_tokenizer, text_sizes
from common.saes.loading import encode
from demo.tiny_model import save_model_folder
from demo.training import (
    DemoModelConfig,
    _train_loop,
    deterministic_torch,
    encode_examples,
    tokenizer_corpus,
    train_tokenizer,
)
from tests.helpers import DEMO_PROBLEMS
from tests.phase3_validation.builders import latent_item, make_sae, write_phase2_results, write_splits

N_PROBLEMS = 12
D_MODEL = 64
LAYERS = (0, 1)


def _text_config(tokenizer: transformers.PreTrainedTokenizerBase) -> transformers.Gemma3TextConfig:
    return transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=D_MODEL, intermediate_size=256, num_hidden_layers=len(LAYERS),
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, sliding_window=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        final_logit_softcapping=30.0, attn_implementation="eager",
    )


def build_multimodal_gemma3(problems: pd.DataFrame, out_dir: Path) -> Path:
    """Train a tiny Gemma 3 decoder on every other problem, then save it inside a Gemma3ForConditionalGeneration."""
    cfg = DemoModelConfig.for_size("test", prompt_loss_weight=0.0, humaneval_format=False, num_threads=1)
    with deterministic_torch(cfg.num_threads):
        tokenizer = train_tokenizer(tokenizer_corpus(problems), vocab_size=512)
        text_config = _text_config(tokenizer)
        torch.manual_seed(0)
        decoder = transformers.Gemma3ForCausalLM(text_config)
        examples = encode_examples(problems.iloc[::2], tokenizer)
        _, _, memorised, stopped_by, _ = _train_loop(decoder, examples, tokenizer.pad_token_id, cfg)
        assert (memorised, stopped_by) == (1.0, "converged")
        config = transformers.Gemma3Config(
            text_config=text_config.to_dict(),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14),
            mm_tokens_per_image=4, attn_implementation="eager", pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        model = transformers.Gemma3ForConditionalGeneration(config)
        model.model.language_model.load_state_dict(decoder.model.state_dict())
        with torch.no_grad():
            model.lm_head.weight.copy_(decoder.lm_head.weight)
    return save_model_folder(model.eval(), tokenizer, out_dir)


@pytest.fixture(scope="module")
def gemma3_run(tmp_path_factory):
    """Phases 0 and 1.0 on the multimodal model, synthetic splits and Phase 2 results, then Phase 3."""
    root = tmp_path_factory.mktemp("gemma3_multimodal")
    lines = DEMO_PROBLEMS.read_text().splitlines()[:N_PROBLEMS]
    problems_path = root / "problems.jsonl"
    problems_path.write_text("\n".join(lines) + "\n")
    problems = load_mbpp(str(problems_path)).sort_values("task_id").reset_index(drop=True)
    model_dir = build_multimodal_gemma3(problems, root / "model")
    data = root / "data"
    cfg = PipelineConfig(
        data_dir=str(data), mbpp_path=str(problems_path), model=str(model_dir), device="cpu", max_new_tokens=48,
        batch_size=4, workers=2, coefficients=[3.0], n_random_controls=1, bootstrap=100, top_latents_validated=1,
    )
    phase0_difficulty.run(cfg)
    dataset = pd.read_parquet(phase1_0_generation.run(cfg))
    correct = dataset.loc[dataset["passed"], "task_id"].astype(int).tolist()
    incorrect = dataset.loc[~dataset["passed"], "task_id"].astype(int).tolist()
    assert len(correct) >= 4 and len(incorrect) >= 4, dataset[["task_id", "passed", "extracted_code"]]
    hp_ids, val_ids = correct[:2] + incorrect[:2], correct[2:] + incorrect[2:]
    write_splits(data, [r._asdict() for r in problems.itertuples(index=False)], hp_ids, val_ids)
    sae_dir = root / "saes"
    for layer in LAYERS:
        make_sae(sae_dir, layer, D_MODEL, 32, seed=layer)
    top = {"correct": [latent_item(1, 1, 3, 0.4, 0.5)], "incorrect": [latent_item(1, 0, 7, 0.4, 0.6)]}
    write_phase2_results(data, sae_dir, top, 32, list(LAYERS))
    summary = phase3_validation.run(cfg)
    doc = json.loads(summary.with_name(summary.name.replace("summary_", "validation_").replace(".md", ".json")).read_text())
    return {"cfg": cfg, "summary": summary, "doc": doc, "model_dir": model_dir, "val_ids": val_ids, "sae_dir": sae_dir,
            "activations": data / "phase1_0" / "activations"}


def test_the_model_is_multimodal_and_its_config_has_no_hidden_size(gemma3_run):
    """What the Gemma 3 presets of 4B and above load as; the sizes come from the text config."""
    model, _ = load_model_and_tokenizer(str(gemma3_run["model_dir"]), torch.device("cpu"), torch.float32)
    assert type(model) is transformers.Gemma3ForConditionalGeneration
    assert not hasattr(model.config, "hidden_size")
    sizes = text_sizes(model)
    assert (sizes.d_model, sizes.n_layers) == (D_MODEL, len(LAYERS))


def test_phase3_statistics_on_the_multimodal_model_match_sklearn(gemma3_run):
    """The validation AUROC of each chosen latent equals sklearn's on the stored width-64 activations."""
    from sae_lens import JumpReLUSAE

    dataset = pd.read_parquet(next((Path(gemma3_run["cfg"].data_dir) / "phase1_0").glob("dataset_*.parquet")))
    passed = dataset.set_index("task_id")["passed"]
    val_ids = gemma3_run["val_ids"]
    for latent in gemma3_run["doc"]["statistical"]["latents"]:
        row = next(r for r in latent["rows"] if r["split"] == "validation")
        sae = JumpReLUSAE.load_from_disk(str(gemma3_run["sae_dir"] / f"layer_{latent['layer']}"))
        vectors = np.stack([
            load_activation(activation_path(gemma3_run["activations"], t, latent["layer"],
                                            "correct" if passed[t] else "incorrect"))
            for t in val_ids
        ])
        assert vectors.shape == (len(val_ids), D_MODEL)
        scores = encode(sae, vectors)[:, latent["latent"]]
        labels = passed.loc[val_ids].to_numpy() == (latent["direction"] == "correct")
        assert row["n"] == len(val_ids)
        assert row["auroc"] == pytest.approx(roc_auc_score(labels, scores))


def test_phase3_steers_the_multimodal_model_at_one_alpha(gemma3_run):
    steering = gemma3_run["doc"]["steering"]
    for split in ("hyperparams", "validation"):  # a zero vector changes nothing: the hooks sit where they should
        assert steering["alpha0_check"][split]["n_programs_changed"] == 0
        assert steering["alpha0_check"][split]["n_label_flips"] == 0
    changed = 0
    for direction in ("correct", "incorrect"):
        result = steering["directions"][direction]
        assert result["chosen_alpha"] == 3.0
        assert result["validation"]["baseline"] == "alpha = 0 rerun"
        assert result["validation"]["n_tasks"] == len(gemma3_run["val_ids"])
        changed += result["validation"]["n_generations_changed"]
    assert changed > 0  # the vector really reached the decoder inside the multimodal wrapper
    assert gemma3_run["summary"].is_file()
