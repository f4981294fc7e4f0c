"""Every preset resolves against SAE Lens's installed pretrained_saes.yaml, and --model PRESET selects it all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.config import PipelineConfig
from common.errors import PipelineError
from common.modeling.model_presets import PRESETS, get_preset, neuronpedia_url, release_layers, resolve_model
from common.saes.neuronpedia import latent_markdown
from tests.helpers import REPO_ROOT

pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def directory():
    """SAE Lens's own parse of its yaml: an independent reader of what common.modeling.model_presets reads."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_resolves_against_the_installed_yaml(name, directory):
    preset = PRESETS[name]
    assert preset.sae_release in directory, f"{preset.sae_release} is not in SAE Lens's yaml"
    lookup = directory[preset.sae_release]
    for layer in preset.layers:
        assert preset.sae_id(layer) in lookup.saes_map, f"{preset.sae_id(layer)} not in {preset.sae_release}"
    # The preset's layers are exactly the release's layers for this id template: none missing, none invented.
    matching = sorted(
        layer for layer in range(preset.n_layers) if preset.sae_id(layer) in lookup.saes_map
    )
    assert list(preset.layers) == matching == release_layers(preset.sae_release, preset.sae_id_template, preset.sae_width)
    assert max(preset.layers) < preset.n_layers
    # The yaml's model is the preset's (or, for the chat model, its base model's) hub id;
    # Gemma Scope 1 names it by its TransformerLens name.
    assert lookup.model in (preset.sae_model, preset.sae_model.split("/")[-1])
    assert (preset.sae_trained_on is not None) == (preset.name == "gemma-2-2b-it")
    assert preset.prompt_format in ("plain", "chat")
    for layer in preset.layers:
        expected = lookup.neuronpedia_id.get(preset.sae_id(layer))
        url = neuronpedia_url(preset.sae_release, preset.sae_id(layer), 7)
        assert url == (f"https://www.neuronpedia.org/{expected}/7" if expected else None)


def test_llama_scope_carries_its_normalisation_factors(directory):
    preset = PRESETS["llama-3.1-8b"]
    factors = directory[preset.sae_release].norm_scaling_factor
    assert all(preset.sae_id(layer) in factors for layer in preset.layers)


def test_preset_expands_and_explicit_flags_win():
    cfg = resolve_model(PipelineConfig(model="gemma-3-1b"), {"model"})
    assert cfg.model == "google/gemma-3-1b-pt" and cfg.model_preset == "gemma-3-1b"
    assert cfg.sae_release == "gemma-scope-2-1b-pt-res" and cfg.layers == [7, 13, 17, 22]
    it = resolve_model(PipelineConfig(model="gemma-2-2b-it"), {"model"})
    assert it.model == "google/gemma-2-2b-it" and it.prompt_format == "chat"
    assert it.sae_release == "gemma-scope-2b-pt-res-canonical" and it.layers == list(range(26))
    own = resolve_model(PipelineConfig(model="gemma-2-2b", sae_width="65k", layers=[3]), {"model", "sae_width", "layers"})
    assert own.sae_width == "65k" and own.layers == [3]
    hub = PipelineConfig(model="someone/some-model")
    assert resolve_model(hub, {"model"}) == hub


def test_bad_preset_and_layers_are_one_line_errors(tmp_path):
    with pytest.raises(PipelineError, match="unknown model preset 'gemma-7'.*gemma-2-2b, gemma-2-2b-it"):
        get_preset("gemma-7")
    with pytest.raises(PipelineError, match=r"no SAE for layers \[3, 30\]; it has layers 5, 9, 12, 15"):
        resolve_model(PipelineConfig(model="gemma-3-270m", layers=[3, 12, 30]), {"model", "layers"})
    with pytest.raises(PipelineError, match=r"gemma-scope-9b-pt-res-canonical has no SAE for layers \[50\]; it has layers 0-41"):
        resolve_model(PipelineConfig(model="google/gemma-2-9b", sae_release="gemma-scope-9b-pt-res-canonical", layers=[50]),
                      {"model", "sae_release", "layers"})
    local = PipelineConfig(model="gemma-3-270m", layers=[3], sae_path=str(tmp_path))
    assert resolve_model(local, {"model", "layers", "sae_path"}).layers == [3]


def test_latent_links_only_for_public_saes():
    public = {"source": "sae_lens", "release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_12/width_16k/canonical"}
    assert latent_markdown(public, 12, 345) == (
        "[L12/345](https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/345)"
    )
    assert latent_markdown({"source": "local", "path": "/x/layer_12"}, 12, 345) == "L12/345"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *args], capture_output=True, text=True, timeout=120)


def test_models_command_and_unknown_preset_cli():
    out = _run("models")
    assert out.returncode == 0, out.stderr
    for name, preset in PRESETS.items():
        assert name in out.stdout and preset.sae_release in out.stdout
    assert "estimates" in out.stdout
    bad = _run("phase", "2", "--model", "gemma-9")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "unknown model preset 'gemma-9'" in bad.stderr


_GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_chat_prompt_format_wraps_once_with_a_single_bos(tiny_model):
    import copy

    from common.modeling.model_presets import apply_prompt_format

    tokenizer = copy.deepcopy(tiny_model[1])
    prompt = "Write a function to add two numbers.\nassert add(1, 2) == 3\n"
    assert apply_prompt_format(tokenizer, prompt, "plain") == prompt
    with pytest.raises(PipelineError, match="no chat template"):
        apply_prompt_format(tokenizer, prompt, "chat")
    tokenizer.chat_template = _GEMMA_STYLE_TEMPLATE
    text = apply_prompt_format(tokenizer, prompt, "chat")
    assert text == f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    with pytest.raises(PipelineError, match="prompt format must be one of"):
        apply_prompt_format(tokenizer, prompt, "markdown")
