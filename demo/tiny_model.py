"""Tiny Gemma-2-architecture models and tokenizers built locally, without the hub.

Why: the real google/gemma-2-2b can never be fetched on the development
machines, yet every piece of the pipeline (generation, capture, the
TransformerLens view, SAE training) must be exercised on a real model of the
same architecture. These helpers build one that differs from gemma-2-2b only in
size: same attention softcap (50), final-logit softcap (30), sliding window on
alternate layers, tied embeddings, eager attention. The result is saved as an
ordinary local folder, i.e. exactly what ``--model PATH`` accepts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
# Ids are fixed by the order given to the BPE trainer; Gemma's own order is
# pad=0, eos=1, bos=2, unk=3, and we keep it so ids look familiar.
SPECIAL_TOKENS: list[str] = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN]
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


def train_tokenizer(texts: list[str], vocab_size: int = 1024) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Why byte-level: every byte has a token, so any Python source (tabs, blank
    lines, non-ASCII) round-trips exactly through encode/decode, which code
    extraction and execution depend on. Like Gemma's tokenizer it prepends
    ``<bos>`` in its post-processor and pads on the left (decoder-only batched
    generation needs left padding).
    """
    if not texts:
        raise ValueError("train_tokenizer needs at least one text")
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # add_prefix_space=False: a leading space must not be invented (round-trip).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for name, expected in zip(SPECIAL_TOKENS, (PAD_ID, EOS_ID, BOS_ID, UNK_ID)):
        assert tok.token_to_id(name) == expected, (name, tok.token_to_id(name))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        # Default cleanup would turn " ." into "." and break exact round-trips of code.
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


def tiny_gemma2_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    sliding_window: int = 64,
    initializer_range: float = 0.02,
    pad_token_id: int = PAD_ID,
    bos_token_id: int = BOS_ID,
    eos_token_id: int = EOS_ID,
) -> transformers.Gemma2Config:
    """A Gemma-2 config that differs from gemma-2-2b only in its sizes.

    Why these choices: softcaps 50/30, gelu-tanh MLP, query_pre_attn_scalar =
    head_dim and sliding window on every other layer (layer 0 sliding, as in
    gemma-2) are what gemma-2-2b has, so bugs that depend on them show up
    here. The window is small (64 by default) so that prompts of a few hundred
    tokens actually exercise it. Eager attention is the implementation that
    applies the attention-logit softcap.
    """
    config = transformers.Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
        query_pre_attn_scalar=head_dim,
        sliding_window=sliding_window,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        attention_bias=False,
        attention_dropout=0.0,
        initializer_range=initializer_range,
    )
    config._attn_implementation = "eager"
    return config


def save_model_folder(
    model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase, out_dir: str | Path
) -> Path:
    """Save model and tokenizer as one plain folder that ``--model`` accepts.

    Why: ``AutoModelForCausalLM.from_pretrained(folder)`` and
    ``AutoTokenizer.from_pretrained(folder)`` must load it with no network, the
    same way a downloaded hub snapshot is loaded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    logger.info("saved model and tokenizer to %s", out)
    return out


def build_random_tiny_model(
    out_dir: str | Path,
    texts: list[str],
    seed: int = 0,
    vocab_size: int = 1024,
    **size_kwargs: Any,
) -> Path:
    """Train a tokenizer on ``texts``, randomly initialise a tiny Gemma-2, save both.

    Why: tests need a real model folder quickly (seconds) and deterministically
    (same seed => same weights); its outputs are meaningless but every code
    path through generation, capture and hooks is real. A larger
    ``initializer_range`` (e.g. 0.2) gives peakier logits, so greedy outputs
    vary from prompt to prompt instead of repeating one token.
    """
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = tiny_gemma2_config(vocab_size=len(tokenizer), **size_kwargs)
    torch.manual_seed(seed)
    model = transformers.Gemma2ForCausalLM(config)
    # Gemma's RMSNorm multiplies by (1 + weight) and initialises weight to 0; random
    # weights make every norm matter, so a conversion or hook that skips one shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.1)
    model.eval()
    return save_model_folder(model, tokenizer, out_dir)
