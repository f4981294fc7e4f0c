"""Phase 2 on synthetic Phase 0.1 / 1.0 / 1.2 outputs with a planted signal and local SAE Lens SAEs.

The data: d_model 64 (the tiny Gemma-2's width, so the general filter can run
the same model), 2 layers. Correct tasks get a strong component along a known
unit direction u at layer 1, and SAE ``layer_1``'s latent 7 reads exactly u
with a threshold only the plant crosses; every other latent's encoder column
is orthogonal to u. So latent (1, 7) fires on every correct task and no
incorrect one: separation 1.0, rank 1, and no shuffle of the labels reaches
it (p_family = 1 / (1 + P)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

import phase2_sae_analysis
from common.config import DEFAULT_MODEL, PipelineConfig
from common.datadir import activation_path, save_task_activations
from common.errors import PipelineError
from common.modeling.general_text import collect_resid_post_all_tokens, tokenize_documents
from common.modeling.models import decoder_layers
from phase2_sae_analysis.analysis import TOP_COLUMNS
from phase2_sae_analysis.general_filter import _read_local_corpus, choose_documents
from phase2_sae_analysis.inputs import aggregate_pass_rates
from tests.artifact_builders import write_phase1_run, write_temperature_run

D_MODEL, D_SAE, LAYERS = 64, 32, (0, 1)
PLANT_LAYER, PLANT_LATENT = 1, 7
PERMUTATIONS, TOP_K = 400, 5
SAE_IDS = list(range(11, 43))  # 32 sae-split tasks
STAMP = "20260101_000000_000000"


# ---------------------------------------------------------------- synthetic data


@dataclass
class Plant:
    """Latent ``latent`` of SAE ``layer`` reads unit ``direction`` and fires above ``threshold``."""

    layer: int
    latent: int
    direction: np.ndarray
    threshold: float
    strength: float  # added along direction to the activations of correct tasks


@dataclass
class SaeSpec:
    plants: list[Plant] = field(default_factory=list)
    always_on: list[tuple[int, int]] = field(default_factory=list)  # (layer, latent) with a huge bias
    d_in: dict[int, int] = field(default_factory=dict)  # per-layer override of d_in


def unit(rng: np.random.Generator, d: int = D_MODEL) -> np.ndarray:
    v = rng.normal(size=d)
    return v / np.linalg.norm(v)


def make_sae(layer: int, spec: SaeSpec, seed: int) -> JumpReLUSAE:
    d_in = spec.d_in.get(layer, D_MODEL)
    gen = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(
        d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post")
    ))
    w_enc = torch.randn(d_in, D_SAE, generator=gen) / math.sqrt(d_in)
    plants = [p for p in spec.plants if p.layer == layer and d_in == D_MODEL]
    for p in plants:  # other latents must not see the plant
        u = torch.from_numpy(p.direction).float()
        w_enc -= torch.outer(u, u @ w_enc)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(torch.randn(D_SAE, d_in, generator=gen) / math.sqrt(D_SAE))
        sae.b_enc.copy_(torch.randn(D_SAE, generator=gen) * 0.02)
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.01)
        sae.threshold.fill_(0.05)
        for p in plants:
            sae.W_enc[:, p.latent] = torch.from_numpy(p.direction).float()
            sae.b_enc[p.latent] = 0.0
            sae.threshold[p.latent] = p.threshold
        for lay, latent in spec.always_on:
            if lay == layer:
                sae.b_enc[latent] = 1000.0
                sae.threshold[latent] = 0.0
    return sae


def write_saes(folder: Path, spec: SaeSpec) -> Path:
    for layer in LAYERS:
        make_sae(layer, spec, seed=100 + layer).save_model(folder / f"layer_{layer}")
    return folder


def task_vectors(rng: np.random.Generator, correct: bool, plants: list[Plant]) -> dict[int, np.ndarray]:
    out = {}
    for layer in LAYERS:
        x = rng.normal(0.0, 0.1, size=D_MODEL)
        for p in plants:
            if p.layer == layer and correct:
                x = x + p.strength * p.direction
        out[layer] = x.astype(np.float32)
    return out


def write_split_tables(data: Path, sae_ids: list[int], validation_ids: list[int] | None = None) -> None:
    folder = data / "phase0_1"
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in (("sae", sae_ids), ("validation", validation_ids or [])):
        pd.DataFrame({"task_id": ids, "text": [f"problem {t}" for t in ids]}).to_parquet(folder / f"{name}_mbpp.parquet")


def write_phase1(data: Path, passed: dict[int, bool], plants: list[Plant], seed: int = 0, model: str | None = None) -> Path:
    """Activations and a Phase 1.0 run (metadata naming ``model``, default the pipeline's default)."""
    rng = np.random.default_rng(seed)
    folder = data / "phase1_0"
    folder.mkdir(parents=True, exist_ok=True)
    for task_id, ok in passed.items():
        label = "correct" if ok else "incorrect"
        save_task_activations(folder / "activations", task_id, task_vectors(rng, ok, plants), label)
    rows = pd.DataFrame({"task_id": list(passed), "passed": list(passed.values())})
    return write_phase1_run(data, rows, model=model or DEFAULT_MODEL, stamp=STAMP)


def alternating(ids: list[int]) -> dict[int, bool]:
    return {t: i % 2 == 0 for i, t in enumerate(ids)}


def default_plants() -> list[Plant]:
    return [Plant(PLANT_LAYER, PLANT_LATENT, unit(np.random.default_rng(7)), threshold=2.0, strength=4.0)]


def build_sae_run(data: Path, passed: dict[int, bool] | None = None, spec: SaeSpec | None = None) -> Path:
    """Phase 0.1 + 1.0 outputs and an SAE folder in ``data``; returns the SAE folder."""
    spec = spec or SaeSpec(plants=default_plants())
    passed = passed if passed is not None else alternating(SAE_IDS)
    write_split_tables(data, list(passed))
    write_phase1(data, passed, spec.plants)
    return write_saes(data / "saes", spec)


def cfg_for(data: Path, saes: Path, **over) -> PipelineConfig:
    base = dict(
        data_dir=str(data), sae_path=str(saes), device="cpu", general_filter=False,
        permutations=PERMUTATIONS, top_k=TOP_K, seed=3,
    )
    base.update(over)
    return PipelineConfig(**base)


def phase2_outputs(data: Path) -> list[Path]:
    folder = data / "phase2"
    return sorted(p for p in folder.iterdir() if p.name != "logs") if folder.is_dir() else []


def hand_encode(folder: Path, layer: int, x: np.ndarray) -> np.ndarray:
    """JumpReLU by hand in float64: relu(pre) where pre > threshold, pre = (x - b_dec) W_enc + b_enc."""
    from safetensors.numpy import load_file

    w = load_file(str(folder / f"layer_{layer}" / "sae_weights.safetensors"))
    pre = (x.astype(np.float64) - w["b_dec"]) @ w["W_enc"].astype(np.float64) + w["b_enc"]
    return np.where(pre > w["threshold"], np.maximum(pre, 0.0), 0.0)


def strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------- the planted run


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    data = tmp_path_factory.mktemp("p2")
    saes = build_sae_run(data)
    results_path = phase2_sae_analysis.run(cfg_for(data, saes))
    return data, saes, results_path, strict_json(results_path)


def test_planted_latent_is_rank_one_and_beats_the_null(planted):
    _, _, _, res = planted
    best = res["top_latents"]["correct"][0]
    assert (best["rank"], best["layer"], best["latent"]) == (1, PLANT_LAYER, PLANT_LATENT)
    assert best["separation_score"] == 1.0 and best["f_correct"] == 1.0 and best["f_incorrect"] == 0.0
    assert best["p_family"] == pytest.approx(1 / (1 + PERMUTATIONS))
    assert res["permutation_null"]["beats_null"]["correct"] is True
    for direction in ("correct", "incorrect"):
        entries = res["top_latents"][direction]
        assert [e["rank"] for e in entries] == list(range(1, TOP_K + 1))
        scores = [e["separation_score"] for e in entries]
        assert scores == sorted(scores, reverse=True)
        assert all(1 / (1 + PERMUTATIONS) <= e["p_family"] <= 1 for e in entries)


def test_full_arrays_equal_a_hand_computation(planted):
    data, saes, res_path, res = planted
    scores_dir = res_path.parent / Path(res["scores_dir"]).name
    correct = np.array([alternating(SAE_IDS)[t] for t in SAE_IDS])
    for layer in LAYERS:
        x = np.stack([
            np.load(activation_path(data / "phase1_0" / "activations", t, layer, "correct" if c else "incorrect"))["activation"]
            for t, c in zip(SAE_IDS, correct)
        ])
        acts = hand_encode(saes, layer, x)
        with np.load(scores_dir / f"layer_{layer}.npz") as arrays:
            assert set(arrays.files) == {
                "f_correct", "f_incorrect", "separation_correct", "separation_incorrect", "mean_correct",
                "mean_incorrect", "t_stat", "general_freq", "general_flagged",
            }
            assert np.isnan(arrays["general_freq"]).all() and not arrays["general_flagged"].any()
            fire = acts > 0
            for j in (0, 3, PLANT_LATENT, 20, D_SAE - 1):
                f_c, f_i = fire[correct, j].mean(), fire[~correct, j].mean()
                assert arrays["f_correct"][j] == pytest.approx(f_c, abs=1e-12)
                assert arrays["f_incorrect"][j] == pytest.approx(f_i, abs=1e-12)
                assert arrays["separation_correct"][j] == pytest.approx(f_c - f_i, abs=1e-12)
                assert arrays["separation_incorrect"][j] == pytest.approx(f_i - f_c, abs=1e-12)
                a, b = acts[correct, j], acts[~correct, j]
                assert arrays["mean_correct"][j] == pytest.approx(a.mean(), rel=1e-5, abs=1e-6)
                assert arrays["mean_incorrect"][j] == pytest.approx(b.mean(), rel=1e-5, abs=1e-6)
                if np.ptp(acts[:, j]) > 0:
                    welch = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
                    assert arrays["t_stat"][j] == pytest.approx(welch, rel=1e-4)
    with np.load(scores_dir / f"layer_{PLANT_LAYER}.npz") as arrays:
        assert arrays["separation_correct"][PLANT_LATENT] == 1.0


def test_verdict_names_the_family_and_is_undecided_with_too_few_shuffles(planted, tmp_path):
    """The planted latent beats the null out of N unflagged latents at 400 shuffles, and 50 cannot certify it."""
    _, _, _, res = planted
    null = res["permutation_null"]
    n_family = null["n_latents_in_family"]
    assert f"out of {n_family} unflagged latents" in null["verdict"]
    assert null["mc_verdicts"]["correct"]["decision"] == "below"
    assert len(null["null_max_family"]) == PERMUTATIONS
    np.testing.assert_array_equal(null["null_max_family"],
                                  np.maximum(null["null_max"]["correct"], null["null_max"]["incorrect"]))
    saes = build_sae_run(tmp_path)
    few = strict_json(phase2_sae_analysis.run(cfg_for(tmp_path, saes, permutations=50)))["permutation_null"]
    assert few["mc_verdicts"]["correct"]["decision"] == "undecided" and few["beats_null"]["correct"] is False
    assert "undecided at this number of shuffles (50)" in few["verdict"]
    assert few["mc_verdicts"]["correct"]["more_shuffles_needed"] > 0


def test_top_latents_parquet(planted):
    _, _, _, res = planted
    table = pd.read_parquet(res["top_latents_path"])
    assert list(table.columns) == TOP_COLUMNS
    assert len(table) == 2 * TOP_K and set(table["direction"]) == {"correct", "incorrect"}
    first = table[(table["direction"] == "correct") & (table["rank"] == 1)].iloc[0]
    assert (first["layer"], first["latent"]) == (PLANT_LAYER, PLANT_LATENT)
    assert table["general_freq"].isna().all()
    json_top = res["top_latents"]["incorrect"]
    parquet_top = table[table["direction"] == "incorrect"].sort_values("rank")
    assert [(e["layer"], e["latent"]) for e in json_top] == list(zip(parquet_top["layer"], parquet_top["latent"]))


def test_results_json_and_metadata(planted):
    data, saes, res_path, res = planted
    assert res["split"] == "sae" and res["n_tasks"] == 32 and (res["n_correct"], res["n_incorrect"]) == (16, 16)
    assert res["layers"] == [0, 1]
    assert res["sae"]["local_path"] == str(saes) and res["sae"]["layers"]["1"]["hook_name"] == "blocks.1.hook_resid_post"
    assert res["fvu"]["0"]["neighbour_layer"] == 1 and res["fvu"]["1"]["neighbour_layer"] == 0
    assert all(isinstance(res["fvu"][k][f], float) for k in ("0", "1") for f in ("own", "neighbour"))
    null = res["permutation_null"]
    assert null["n_permutations"] == PERMUTATIONS and null["seed"] == 3
    assert set(null["null_max_quantiles"]["correct"]) == {"50%", "95%", "99%"}
    assert len(null["null_max"]["incorrect"]) == PERMUTATIONS and "verdict" in null
    assert res["general_filter"]["enabled"] is False
    assert "passed" in res["labels"]["rule"] and res["labels"]["source_tables"][0].endswith(f"dataset_{STAMP}.parquet")
    meta = strict_json(res_path.with_name(res_path.stem + "_metadata.json"))
    assert meta["phase"] == "2" and meta["seed"] == 3 and meta["config"]["split"] == "sae"
    assert "sha256" in meta["inputs"]["split_table"] and "sha256" in meta["inputs"]["labels"]
    assert meta["inputs"]["activations"]["files"] == 64
    assert meta["sae_ids"]["1"].endswith("layer_1") and meta["wall_time_s"] >= 0
    assert meta["fvu"]["1"]["neighbour_layer"] == 0


# ---------------------------------------------------------------- bad input: one line, nothing written


def _check_one_line_error(data: Path, cfg: PipelineConfig, pattern: str) -> None:
    with pytest.raises(PipelineError, match=pattern) as info:
        phase2_sae_analysis.run(cfg)
    assert "\n" not in str(info.value)
    assert phase2_outputs(data) == []


def test_split_with_one_class_is_an_error(tmp_path):
    saes = build_sae_run(tmp_path, passed={t: True for t in SAE_IDS})
    _check_one_line_error(tmp_path, cfg_for(tmp_path, saes), r"sae split has no incorrect tasks \(32 correct, 0 incorrect")


def test_missing_activation_file_names_the_layer(tmp_path):
    saes = build_sae_run(tmp_path)
    activation_path(tmp_path / "phase1_0" / "activations", SAE_IDS[3], 1, "incorrect").unlink()
    _check_one_line_error(tmp_path, cfg_for(tmp_path, saes), rf"layer 1 activations are missing for 1 of 32 tasks \(e\.g\. task {SAE_IDS[3]}")
    _check_one_line_error(tmp_path, cfg_for(tmp_path, saes, layers=[0, 5]), r"no layer 5 activations for any sae-split task .*layers present: \[0, 1\]")
    # --layers 0 leaves the gap out, and then the run succeeds.
    assert phase2_sae_analysis.run(cfg_for(tmp_path, saes, layers=[0])).is_file()


def test_sae_width_mismatch_is_an_error(tmp_path):
    saes = build_sae_run(tmp_path, spec=SaeSpec(plants=default_plants(), d_in={1: 32}))
    _check_one_line_error(tmp_path, cfg_for(tmp_path, saes), "SAE for layer 1 expects vectors of width 32, but the activations have width 64")


def test_missing_phase_outputs_name_the_command(tmp_path):
    _check_one_line_error(tmp_path, cfg_for(tmp_path, tmp_path / "saes"), r"run `python3 run\.py phase 0\.1`")
    write_split_tables(tmp_path, SAE_IDS)
    _check_one_line_error(tmp_path, cfg_for(tmp_path, tmp_path / "saes"), r"no Phase 1 output.*python3 run\.py phase 1")
    write_phase1(tmp_path, alternating(SAE_IDS[:-2]), [])
    _check_one_line_error(tmp_path, cfg_for(tmp_path, tmp_path / "saes"), r"2 of 32 sae-split tasks are missing from .*run `python3 run\.py phase 1")


def test_cli_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """In process (a subprocess would pay the torch import again); console logging stays off."""
    import common.logging_utils
    import run as cli

    monkeypatch.setattr(common.logging_utils, "setup_logging", lambda verbose=False: None)
    assert cli.main(["phase", "2", "--data-dir", str(tmp_path), "--no-general-filter"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "python3 run.py phase 0.1" in err and "\n" not in err


def test_unreachable_corpus_hub_is_one_line(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'NeelNanda/pile-10k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    saes = build_sae_run(tmp_path)
    _check_one_line_error(tmp_path, cfg_for(tmp_path, saes, general_filter=True), r"NeelNanda/pile-10k.*--general-corpus PATH.*--no-general-filter")


# ---------------------------------------------------------------- general-text filter on the tiny model

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was a sunny day in the park and everyone was out.",
    "def add(a, b):\n    return a + b",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and so on until the end of the list.",
    "Write a function to find the minimum cost path to reach (m, n) from (0, 0).",
    "In 1905 the physicist published four papers that changed how we think about time and space.",
    "class Pair(object):\n    def __init__(self, a, b):\n        self.a = a",
    "Rain fell all night; by morning the river had risen over its banks.",
    "assert add(1, 2) == 3",
]
CORPUS_TOKENS = 12
BIAS_LATENT, V_LATENT = 3, 11


def test_all_token_capture_equals_unpadded_layer_outputs(tiny_model):
    model, tokenizer = tiny_model
    docs = tokenize_documents(tokenizer, CORPUS, max_tokens=CORPUS_TOKENS)
    got = collect_resid_post_all_tokens(model, docs, [0, 1], tokenizer.pad_token_id, batch_size=3)
    assert docs.counted_tokens == sum(len(d) - 1 for d in docs.ids) and all(d[0] == tokenizer.bos_token_id for d in docs.ids)
    assert max(len(d) for d in docs.ids) == CORPUS_TOKENS + 1
    expected: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    seen: dict[int, torch.Tensor] = {}
    handles = [
        decoder_layers(model)[layer].register_forward_hook(
            lambda _m, _i, out, layer=layer: seen.__setitem__(layer, out if isinstance(out, torch.Tensor) else out[0])
        )
        for layer in (0, 1)
    ]
    try:
        with torch.no_grad():
            for ids in docs.ids:
                out = model(torch.tensor([ids]), output_hidden_states=True)
                for layer in (0, 1):
                    expected[layer].append(seen[layer][0, 1:])
                torch.testing.assert_close(seen[0][0, 1:], out.hidden_states[1][0, 1:])  # rule 1: hidden_states[L+1]
    finally:
        for h in handles:
            h.remove()
    for layer in (0, 1):
        assert got[layer].shape == (docs.counted_tokens, D_MODEL)
        torch.testing.assert_close(got[layer], torch.cat(expected[layer]), rtol=1e-5, atol=1e-5)


def test_general_filter_flags_and_drops_generic_latents(tmp_path, tiny_model_dir, tiny_model):
    model, tokenizer = tiny_model
    assert model.config.hidden_size == D_MODEL
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n\n".join(CORPUS) + "\n")
    # Layer-0 corpus vectors by hand (hidden_states[1] is resid_post(0)), without the BOS position.
    with torch.no_grad():
        c0 = torch.cat([
            model(torch.tensor([tokenizer(t)["input_ids"][: CORPUS_TOKENS + 1]]), output_hidden_states=True).hidden_states[1][0, 1:]
            for t in CORPUS
        ]).numpy().astype(np.float64)
    v = c0.mean(axis=0) / np.linalg.norm(c0.mean(axis=0))
    tau = 0.5 * float(np.median(c0 @ v))
    assert tau > 1.0  # the plant is far above the task noise (0.1 per component)
    plants = [
        Plant(0, V_LATENT, v, threshold=tau, strength=tau + 3.0),  # separates perfectly, but fires on general text
        Plant(PLANT_LAYER, PLANT_LATENT, unit(np.random.default_rng(7)), threshold=40.0, strength=50.0),
    ]
    spec = SaeSpec(plants=plants, always_on=[(0, BIAS_LATENT)])
    passed = alternating(SAE_IDS)
    write_split_tables(tmp_path, SAE_IDS)
    write_phase1(tmp_path, passed, plants, model=str(tiny_model_dir))
    saes = write_saes(tmp_path / "saes", spec)
    cfg = cfg_for(tmp_path, saes, general_filter=True, general_corpus=str(corpus_file), general_corpus_tokens=CORPUS_TOKENS)
    assert cfg.model == "google/gemma-2-2b"  # left at its default: the Phase 1 metadata's model is used

    res_path = phase2_sae_analysis.run(cfg)
    res = strict_json(res_path)
    scores_dir = res_path.parent / Path(res["scores_dir"]).name
    with np.load(scores_dir / "layer_0.npz") as layer0, np.load(scores_dir / "layer_1.npz") as layer1:
        assert layer0["general_freq"][BIAS_LATENT] == 1.0 and layer0["general_flagged"][BIAS_LATENT]
        assert layer0["separation_correct"][V_LATENT] == 1.0 and layer0["general_flagged"][V_LATENT]
        n_tokens = c0.shape[0]
        hand = float(((hand_encode(saes, 0, c0)[:, V_LATENT]) > 0).mean())
        assert hand >= 0.5
        assert layer0["general_freq"][V_LATENT] == pytest.approx(hand, abs=1.5 / n_tokens)
        assert np.array_equal(layer0["general_flagged"], layer0["general_freq"] >= 0.02)
        assert not layer1["general_flagged"][PLANT_LATENT]
        n_flagged = {"0": int(layer0["general_flagged"].sum()), "1": int(layer1["general_flagged"].sum())}
    top = res["top_latents"]
    ranked = {(e["layer"], e["latent"]) for d in ("correct", "incorrect") for e in top[d]}
    assert (0, V_LATENT) not in ranked and (0, BIAS_LATENT) not in ranked
    assert (top["correct"][0]["layer"], top["correct"][0]["latent"]) == (PLANT_LAYER, PLANT_LATENT)
    assert top["correct"][0]["p_family"] == pytest.approx(1 / (1 + PERMUTATIONS))
    assert all(e["general_freq"] < 0.02 for d in ("correct", "incorrect") for e in top[d])
    gf = res["general_filter"]
    assert gf["enabled"] and gf["corpus"] == str(corpus_file) and gf["threshold"] == 0.02
    assert gf["model"] == str(tiny_model_dir) and "Phase 1 metadata" in gf["model_choice"]
    assert gf["n_documents"] == len(CORPUS) and gf["n_tokens"] == n_tokens and gf["tokens_per_document"] == CORPUS_TOKENS
    assert "BOS" in gf["positions"] and gf["n_flagged"] == n_flagged
    assert res["permutation_null"]["n_latents_in_family"] == 2 * D_SAE - sum(n_flagged.values())


def test_local_corpus_files_and_sampling(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first paragraph\nstill first\n\n\nsecond\n\n")
    assert _read_local_corpus(txt) == (["first paragraph\nstill first", "second"], "paragraphs (blank-line separated)")
    lines = tmp_path / "b.txt"
    lines.write_text("one\n\ntwo\n")  # a single blank line splits paragraphs too
    assert _read_local_corpus(lines)[0] == ["one", "two"]
    lines.write_text("one\ntwo\n  \nthree")
    assert _read_local_corpus(lines)[0] == ["one\ntwo", "three"]
    lines.write_text("one\ntwo\nthree\n")
    assert _read_local_corpus(lines) == (["one", "two", "three"], "non-empty lines")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "hello"}\n\n{"text": "world"}\n')
    assert _read_local_corpus(jsonl)[0] == ["hello", "world"]
    jsonl.write_text('{"text": "hello"}\n{"body": "x"}\n')
    with pytest.raises(PipelineError, match="line 2 has no string field"):
        _read_local_corpus(jsonl)
    assert choose_documents(5, 10, seed=0) == [0, 1, 2, 3, 4]
    picked = choose_documents(1000, 20, seed=4)
    assert picked == choose_documents(1000, 20, seed=4) and len(set(picked)) == 20 and picked == sorted(picked)
    assert picked != choose_documents(1000, 20, seed=5)


# ---------------------------------------------------------------- validation split and stability

VAL_IDS = list(range(101, 125))  # 24 tasks
TEMPS = ("0_3", "0_6")


def validation_passes(i: int) -> int:
    """Passes out of 10 samples (2 temperatures x 5): 8 majority-correct, 8 incorrect, 8 at exactly one half."""
    return (7, 2, 5)[i % 3]


def write_phase1_2(data: Path, plants: list[Plant], seed: int = 1) -> dict[int, bool]:
    rng = np.random.default_rng(seed)
    folder = data / "phase1_2"
    rows = {t: [] for t in TEMPS}
    labels = {}
    for i, task_id in enumerate(VAL_IDS):
        k = validation_passes(i)
        outcomes = [s < k for s in range(10)]
        for t_index, temp in enumerate(TEMPS):
            for s in range(5):
                rows[temp].append({"task_id": task_id, "sample_index": s, "passed": outcomes[5 * t_index + s]})
        labels[task_id] = k > 5
        save_task_activations(folder / "activations", task_id, task_vectors(rng, labels[task_id], plants))
    write_temperature_run(data, {float(temp.replace("_", ".")): pd.DataFrame(table) for temp, table in rows.items()})
    return labels


def test_pass_rate_aggregation_rule():
    samples = pd.DataFrame({"task_id": [1] * 4 + [2] * 4 + [3] * 3, "passed": [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1]})
    agg = aggregate_pass_rates(samples.astype({"passed": bool})).set_index("task_id")
    assert agg.loc[1, "pass_rate"] == 0.5 and not agg.loc[1, "correct"]  # exactly one half: incorrect
    assert agg.loc[2, "pass_rate"] == 0.75 and agg.loc[2, "correct"]
    assert agg.loc[3, "n_samples"] == 3 and not agg.loc[3, "correct"]


def test_validation_split_and_stability(tmp_path):
    plants = default_plants()
    write_split_tables(tmp_path, SAE_IDS, VAL_IDS)
    write_phase1(tmp_path, alternating(SAE_IDS), plants)
    _check_one_line_error(tmp_path, cfg_for(tmp_path, tmp_path / "saes", split="validation"), r"no Phase 1\.2 run.*run `python3 run\.py phase 1\.2")
    labels = write_phase1_2(tmp_path, plants)
    saes = write_saes(tmp_path / "saes", SaeSpec(plants=plants))

    first = strict_json(phase2_sae_analysis.run(cfg_for(tmp_path, saes, split="validation")))
    assert first["stability"]["available"] is False and "no sae-split results" in first["stability"]["reason"]
    assert (first["n_correct"], first["n_incorrect"]) == (8, 16) == (sum(labels.values()), 16)
    assert first["labels"]["n_tasks_pass_rate_exactly_half"] == 8 and "exactly 0.5 counts as incorrect" in first["labels"]["rule"]
    assert len(first["labels"]["source_tables"]) == 2

    sae_path = phase2_sae_analysis.run(cfg_for(tmp_path, saes))
    val_path = phase2_sae_analysis.run(cfg_for(tmp_path, saes, split="validation"))
    val = strict_json(val_path)
    best = val["top_latents"]["correct"][0]
    assert (best["layer"], best["latent"]) == (PLANT_LAYER, PLANT_LATENT)
    stab = val["stability"]
    assert stab["available"] is True and stab["reference"] == str(sae_path) and stab["layers_compared"] == [0, 1]
    for direction in ("correct", "incorrect"):
        d = stab["directions"][direction]
        assert d["k"] == TOP_K and 0 <= d["overlap"] <= TOP_K and d["overlap_at_k"] == d["overlap"] / TOP_K
        assert d["n_top_k_compared"] == TOP_K and d["n_all_unflagged"] == 2 * D_SAE
        assert -1.0 <= d["spearman_all_unflagged"] <= 1.0
    assert stab["directions"]["correct"]["overlap"] >= 1  # the planted latent tops both rankings
    # Overlap by hand from the two top-k lists.
    sae_top = {(e["layer"], e["latent"]) for e in strict_json(sae_path)["top_latents"]["incorrect"]}
    val_top = {(e["layer"], e["latent"]) for e in val["top_latents"]["incorrect"]}
    assert stab["directions"]["incorrect"]["overlap"] == len(sae_top & val_top)
    meta = strict_json(val_path.with_name(val_path.stem + "_metadata.json"))
    assert {"labels_0", "labels_1", "stability_reference", "activations"} <= set(meta["inputs"])


def test_default_corpus_is_sampled_with_the_seed(monkeypatch):
    """pile-10k through datasets (faked here: the hub is unreachable): rows drawn with the seed."""
    import datasets

    from phase2_sae_analysis.general_filter import DEFAULT_CORPUS, load_general_corpus

    rows = datasets.Dataset.from_dict({"text": [f"document {i}" for i in range(50)]})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: asked.append((name, split)) or rows)
    corpus = load_general_corpus(PipelineConfig(general_corpus_samples=10, seed=5))
    assert asked == [(DEFAULT_CORPUS, "train")]
    assert corpus.name == DEFAULT_CORPUS and corpus.n_available == 50 and len(corpus.indices) == 10
    assert corpus.indices == choose_documents(50, 10, seed=5)
    assert corpus.texts == [f"document {i}" for i in corpus.indices]
