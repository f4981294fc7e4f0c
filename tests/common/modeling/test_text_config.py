"""The text config and sizes of a model, text-only or multimodal (``common.modeling.models.text_config`` / ``text_sizes``)."""

from __future__ import annotations

import re

import pytest
import torch
import transformers

from common.errors import PipelineError
from common.modeling.models import TextSizes, num_layers, text_config, text_sizes
from tests.helpers import REPO_ROOT

_TEXT = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=8,
)
_EXPECTED = TextSizes(d_model=32, n_layers=3, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64, d_vocab=96)


def _multimodal_gemma3() -> transformers.Gemma3ForConditionalGeneration:
    torch.manual_seed(0)
    return transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=_TEXT,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, attn_implementation="eager",
    ))


def test_multimodal_gemma3_sizes_come_from_its_text_config():
    """The Gemma 3 presets of 4B and above: the top-level config has no hidden_size at all."""
    model = _multimodal_gemma3()
    assert not hasattr(model.config, "hidden_size")
    assert text_config(model) is model.config.text_config
    assert text_config(model.config) is model.config.text_config
    assert text_sizes(model) == text_sizes(model.config) == _EXPECTED
    assert num_layers(model) == 3 == len(model.model.language_model.layers)


@pytest.mark.parametrize("config_class", [transformers.Gemma2Config, transformers.Gemma3TextConfig])
def test_text_only_config_is_its_own_text_config(config_class):
    config = config_class(**_TEXT)
    assert text_config(config) is config
    assert text_sizes(config) == _EXPECTED


def test_the_residual_width_is_what_the_decoder_layers_output():
    model = _multimodal_gemma3().eval()
    seen = []
    handle = model.model.language_model.layers[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(input_ids=torch.tensor([[2, 5, 7]]))
    handle.remove()
    hidden = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    assert hidden.shape[-1] == text_sizes(model).d_model


def test_an_object_without_a_transformers_config_is_one_line():
    with pytest.raises(PipelineError, match="has no transformers config") as err:
        text_sizes(torch.nn.Linear(2, 2))
    assert "\n" not in str(err.value)


_SIZE_READ = re.compile(
    r"\bconfig\.(hidden_size|num_hidden_layers|intermediate_size|vocab_size|num_attention_heads|"
    r"num_key_value_heads|head_dim|text_config)\b|[\"']text_config[\"']"
)


def test_no_size_is_read_from_a_config_outside_the_helper():
    """Every size goes through common.modeling.models.text_sizes: a direct read breaks on multimodal configs."""
    offenders = []
    for path in sorted(REPO_ROOT.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if relative.startswith(("tests/", ".venv/")) or relative == "common/modeling/models.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _SIZE_READ.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []
