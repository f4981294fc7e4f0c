"""Loading the model (hub id or local folder) and its TransformerLens view.

Why one module: every GPU phase loads the model the same way (the attention
kernel its architecture allows, left padding, eval mode), and every failure to load must reach the user as one
line that says what was asked for and what to do (docs/design.md sections 6 and 7).

Attention is chosen per architecture (:func:`attention_implementation`):
Gemma-2 softcaps its attention logits at 50. In transformers 5.23
``eager_attention_forward`` of ``modeling_gemma2`` applies ``tanh(x / 50) * 50``
before the mask; the ``sdpa`` kernel has no softcap (``sdpa_attention_forward``
raises when asked for one, and Gemma-2 declares ``_supports_sdpa = False``), so
Gemma-2 gets eager, or on CUDA in half precision flash-attention 2 when it is
installed (it takes the cap as ``softcap``). Llama and Gemma 3 have no attention
softcap, and SDPA computes the same softmax(QK^T/sqrt(d) + mask)V as eager in
one fused kernel, so they get ``sdpa``. Final logits are softcapped at 30 in
``Gemma2ForCausalLM.forward`` whatever the attention implementation.

``transformer_lens`` is imported inside ``to_hooked_transformer`` only: the GPU
benchmark machine and Phase 1 need nothing but torch and transformers.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers

from common.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

# The kernel for an architecture whose attention logits are softcapped, when nothing faster applies the cap.
ATTN_IMPLEMENTATION = "eager"
MODEL_FLAG_HINT = "`--model` also takes a local folder with config.json, weights and tokenizer files"


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` means the first CUDA GPU when there is one, else the CPU.

    Why fail instead of falling back: a run that silently lands on the CPU takes
    days instead of hours; the user must know at once.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise PipelineError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device {requested!r} asked for, but no CUDA GPU is visible (try --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(
                f"device {requested!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
            )
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (gemma-2 was trained in bf16; half the memory), float32 on CPU (exact, and fast enough there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else is meant as a folder."""
    return (
        model.startswith((".", "/", "~"))
        or "\\" in model
        or model.count("/") > 1
        or Path(model).expanduser().exists()
    )


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return chain


def gated_hint(model: str) -> str:
    """What a user does about a gated hub model: the licence page, then a token."""
    return (
        f"accept its licence on https://huggingface.co/{model} (logged in), then give this machine a token: "
        "`hf auth login`, or the HF_TOKEN environment variable"
    )


def is_cached(model: str) -> bool:
    """Whether the local Hugging Face cache holds ``model``'s config.json (the hub then need not be asked)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json"), str)


def check_gated_access(model: str) -> None:
    """Refuse, before any work, a gated preset model that is neither cached nor reachable with a token.

    Why before: otherwise Phase 1 would first set up its outputs and the
    executor, and a launcher would start every worker, only to fail at the
    download. Gated means a preset with this hub id says so
    (``ModelPreset.gated``); for any other hub id the hub's own refusal is
    turned into the same line when the model is loaded.
    """
    from common.modeling.model_presets import PRESETS

    if _looks_like_path(model) or not any(p.gated and p.hub_id == model for p in PRESETS.values()):
        return
    from huggingface_hub import get_token

    if get_token() or is_cached(model):
        return
    raise PipelineError(f"{model!r} is a gated model, not in the local Hugging Face cache, and no token is set: "
                        f"{gated_hint(model)}")


def _hub_error_message(model: str, exc: BaseException) -> str:
    """Turn whatever transformers/huggingface_hub raised into one actionable line."""
    from huggingface_hub import errors as hub_errors

    chain = _exception_chain(exc)
    for err in chain:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, hub_errors.GatedRepoError) or status in (401, 403):
            return f"access to {model!r} was refused by the Hugging Face hub: {gated_hint(model)}"
    text = " ".join(str(err) for err in chain)
    if "gated repo" in text:
        return f"{model!r} is a gated model: {gated_hint(model)}"
    for err in chain:
        if isinstance(err, (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, ConnectionError)):
            return (
                f"cannot reach the Hugging Face hub to load {model!r}, and it is not in the local cache; "
                f"{MODEL_FLAG_HINT}"
            )
    if "couldn't connect" in text or "offline mode" in text:
        return f"cannot reach the Hugging Face hub to load {model!r}, and it is not in the local cache; {MODEL_FLAG_HINT}"
    for err in chain:
        if isinstance(err, hub_errors.RepositoryNotFoundError):
            return f"{model!r} is neither a local folder nor a model id on the Hugging Face hub; {MODEL_FLAG_HINT}"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not load model {model!r}: {first_line}"


def _check_local_folder(folder: Path) -> None:
    if not folder.exists():
        raise PipelineError(f"model folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise PipelineError(f"--model {str(folder)!r} is a file; it must be a folder (config.json, weights, tokenizer)")
    if not (folder / "config.json").is_file():
        raise PipelineError(f"model folder {str(folder)!r} has no config.json: is it a transformers model folder?")
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((folder / name).is_file() for name in tokenizer_files):
        raise PipelineError(
            f"model folder {str(folder)!r} has no tokenizer files ({', '.join(tokenizer_files)}): "
            "save the tokenizer into it with tokenizer.save_pretrained(folder)"
        )


def attention_implementation(
    config: transformers.PretrainedConfig, device: torch.device, dtype: torch.dtype
) -> str:
    """The attention kernel for this architecture: exact for it, and the fastest such one installed.

    No attention softcap (Llama, Gemma 3): ``sdpa``. A softcap (Gemma 2):
    ``flash_attention_2`` on CUDA in fp16/bf16 when flash-attn is installed
    (it applies the cap), else ``eager`` (the only other kernel that applies it).
    """
    if getattr(text_config(config), "attn_logit_softcapping", None) is None:
        return "sdpa"
    half = dtype in (torch.float16, torch.bfloat16)
    if device.type == "cuda" and half and transformers.utils.is_flash_attn_2_available():
        return "flash_attention_2"
    return ATTN_IMPLEMENTATION


def load_model_and_tokenizer(
    model: str, device: torch.device, dtype: torch.dtype
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id or a local folder, ready for batched generation.

    The model uses the attention kernel its architecture allows
    (:func:`attention_implementation`) and is in eval mode; the tokenizer pads on the left (the
    last prompt token is then the last column for every row, which is where
    generation continues and where activations are read) and has a pad token.
    """
    source: str = model
    is_local = _looks_like_path(model)
    if is_local:
        folder = Path(model).expanduser()
        _check_local_folder(folder)
        source = str(folder)
    logger.info("loading %s %s", "model folder" if is_local else "hub model (or its local cache)", source)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        attention = attention_implementation(transformers.AutoConfig.from_pretrained(source), device, dtype)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attention)
    except (OSError, ValueError) as exc:
        if is_local:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"could not load model folder {source!r}: {first_line}") from exc
        raise PipelineError(_hub_error_message(model, exc)) from exc
    hf_model.to(device)
    hf_model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        # Why eos: any id works because padded positions are masked; eos is what HF suggests.
        tokenizer.pad_token = tokenizer.eos_token
    if hf_model.generation_config.pad_token_id is None:
        hf_model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "loaded %s (%s layers, d_model %s) on %s in %s, attention %s",
        model,
        num_layers(hf_model),
        text_sizes(hf_model).d_model,
        device,
        dtype,
        hf_model.config._attn_implementation,
    )
    return hf_model, tokenizer


def text_config(model_or_config: Any) -> transformers.PretrainedConfig:
    """The config of a model's text decoder, from the model or from its config.

    Why: the Gemma 3 presets of 4B and above load as
    ``Gemma3ForConditionalGeneration``, whose ``Gemma3Config`` holds no sizes of
    its own (no ``hidden_size``); the decoder's live in ``config.text_config``.
    transformers' ``get_text_config(decoder=True)`` returns that, and the config
    itself for a text-only model. Read every size through here or ``text_sizes``.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, transformers.PretrainedConfig):
        raise PipelineError(f"{type(model_or_config).__name__} has no transformers config to read sizes from")
    return config.get_text_config(decoder=True)


@dataclass(frozen=True)
class TextSizes:
    """The text decoder's sizes, as TransformerLens names them (``d_model`` is the residual stream's width)."""

    d_model: int
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


def text_sizes(model_or_config: Any) -> TextSizes:
    """The sizes of a model's text decoder (see ``text_config``); a config without ``head_dim`` derives it."""
    config = text_config(model_or_config)
    n_heads = int(config.num_attention_heads)
    return TextSizes(
        d_model=int(config.hidden_size),
        n_layers=int(config.num_hidden_layers),
        n_heads=n_heads,
        n_key_value_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
        d_head=int(getattr(config, "head_dim", None) or config.hidden_size // n_heads),
        d_mlp=int(config.intermediate_size),
        d_vocab=int(config.vocab_size),
    )


def num_layers(model: transformers.PreTrainedModel) -> int:
    """Number of decoder layers (26 for gemma-2-2b): layers are 0 .. num_layers - 1."""
    return text_sizes(model).n_layers


def decoder_layers(model: transformers.PreTrainedModel) -> torch.nn.ModuleList:
    """The ModuleList whose layer L outputs resid_post(L), the input of GemmaScope ``layer_L``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise PipelineError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


def _rope_theta(config: transformers.PretrainedConfig) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def hooked_config_dict(config: transformers.Gemma2Config) -> dict[str, Any]:
    """The HookedTransformerConfig fields for any Gemma-2 config, as TransformerLens sets them for gemma-2-2b.

    Why our own: TransformerLens only knows the named Gemma-2 checkpoints; the
    demo and the tests use smaller Gemma-2 models. For gemma-2-2b's shapes this
    gives the same fields as TransformerLens's own config, name aside (tested).
    """
    if config.model_type != "gemma2":
        raise PipelineError(f"the TransformerLens view supports Gemma-2 models only, not {config.model_type!r}")
    attn_types = ["local" if t == "sliding_attention" else "global" for t in config.layer_types]
    sizes = text_sizes(config)
    return {
        "d_model": sizes.d_model,
        "d_head": sizes.d_head,
        "n_heads": sizes.n_heads,
        "d_mlp": sizes.d_mlp,
        "n_layers": sizes.n_layers,
        "n_ctx": config.max_position_embeddings,
        "eps": config.rms_norm_eps,
        "d_vocab": sizes.d_vocab,
        "act_fn": config.hidden_activation,
        "initializer_range": config.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(config),
        "rotary_dim": sizes.d_head,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": float(config.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": sizes.n_key_value_heads,
        "window_size": config.sliding_window,
        "use_local_attn": True,
        "attn_types": attn_types,
        "attn_scores_soft_cap": config.attn_logit_softcapping,
        "output_logits_soft_cap": config.final_logit_softcapping,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
        "default_prepend_bos": True,
    }


def to_hooked_transformer(
    hf_model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase
) -> HookedTransformer:
    """A TransformerLens HookedTransformer with the same weights, unprocessed.

    No weight processing (no fold_ln, no centering, no value-bias folding), so
    ``blocks.L.hook_resid_pre|mid|post`` hold exactly the residual stream of the
    HF model: ``hook_resid_post`` of block L equals the output of HF decoder
    layer L, which is what GemmaScope ``layer_L`` was trained on. This is what
    ``HookedTransformer.from_pretrained_no_processing("gemma-2-2b", hf_model=...)``
    does, without its name lookup: weights go through TransformerLens's own
    ``convert_gemma_weights``, and the config comes from ``hooked_config_dict``,
    which for gemma-2-2b's shapes equals TransformerLens's own gemma-2-2b config
    in every field but the name (tested). So one code path serves the tiny
    test models and the real one, and nothing is fetched from the hub (a local
    folder works offline). The model keeps the HF model's device and dtype.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    config = text_config(hf_model)
    param = next(hf_model.parameters())
    device, dtype = param.device, param.dtype
    name = Path(getattr(config, "_name_or_path", "") or "gemma2").name
    cfg = HookedTransformerConfig(
        **hooked_config_dict(config), model_name=name, device=str(device), dtype=dtype, init_weights=False
    )
    logger.info("building the TransformerLens view of %s (%d layers)", name, cfg.n_layers)
    with torch.no_grad():
        state_dict = convert_gemma_weights(hf_model, cfg)
    with warnings.catch_warnings():
        # TL 3.9 suggests TransformerBridge; HookedTransformer stays: its hook names are our contract.
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        hooked = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left")
    hooked.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    hooked.to(device)
    hooked.eval()
    return hooked
