"""Model presets: one name selects the model, its public SAEs, their layers, dtype and prompt format.

Why a registry: the study's first question from any reader is whether the
finding holds for other models and sizes, and SAE Lens already knows where
the public residual-stream SAEs of several families live. A preset names the
hub id and the SAE Lens release plus an SAE id template; the ids, the
Neuronpedia ids and the layers that have an SAE come from SAE Lens's own
``pretrained_saes.yaml``, never from memory. The layers are also written
here (Phase 1 runs on machines without sae-lens and must still capture what
Phase 2 can read); ``tests/common/modeling/test_model_presets.py`` checks that every
preset's layers and ids are exactly those of the installed yaml.

The yaml is read without importing ``sae_lens`` (``importlib.util.find_spec``
finds the installed file; importing the package takes seconds and pulls in
the whole training stack).

Download sizes are estimates: weights = parameter count x bytes per
parameter of the hub checkpoint's dtype; SAEs = layers x (encoder + decoder
matrices, d_model x d_sae each) x bytes per stored parameter. Parameter
counts and widths are the published ones, rounded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import PipelineError

logger = logging.getLogger(__name__)

PROMPT_FORMATS: tuple[str, ...] = ("plain", "chat")
_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelPreset:
    """Everything ``--model NAME`` selects."""

    name: str
    hub_id: str
    family: str
    sae_release: str
    sae_id_template: str  # {layer} and {width} are filled in
    sae_width: str
    layers: tuple[int, ...]  # the layers the release has an SAE for (checked against the yaml by a test)
    n_layers: int
    d_model: int
    d_sae: int
    n_params_billion: float
    dtype: str = "bfloat16"
    prompt_format: str = "plain"
    sae_dtype: str = "float32"
    sae_note: str = ""
    sae_trained_on: str | None = None  # hub id of the model the SAEs were trained on, when not this one
    # The hub asks for a licence and a token (Gemma, Llama): refused before any work without either (common.modeling.models).
    gated: bool = False

    @property
    def sae_model(self) -> str:
        return self.sae_trained_on or self.hub_id

    def sae_id(self, layer: int) -> str:
        return self.sae_id_template.format(layer=layer, width=self.sae_width)

    def weights_gb(self) -> float:
        return self.n_params_billion * 1e9 * _BYTES[self.dtype] / 1e9

    def saes_gb(self) -> float:
        return len(self.layers) * 2 * self.d_model * self.d_sae * _BYTES[self.sae_dtype] / 1e9


def _gemma3(size: str, hub_id: str, layers: tuple[int, ...], n_layers: int, d_model: int, params: float) -> ModelPreset:
    return ModelPreset(
        name=f"gemma-3-{size}", hub_id=hub_id, family="Gemma 3", sae_release=f"gemma-scope-2-{size}-pt-res",
        sae_id_template="layer_{layer}_width_{width}_l0_medium", sae_width="16k", layers=layers,
        n_layers=n_layers, d_model=d_model, d_sae=16384, n_params_billion=params, gated=True,
        sae_note=f"Gemma Scope 2 covers {len(layers)} layers here; gemma-scope-2-{size}-pt-res-all has every layer",
    )


_GEMMA2_2B = ModelPreset(
    name="gemma-2-2b", hub_id="google/gemma-2-2b", family="Gemma 2", sae_release="gemma-scope-2b-pt-res-canonical",
    sae_id_template="layer_{layer}/width_{width}/canonical", sae_width="16k", layers=tuple(range(26)),
    n_layers=26, d_model=2304, d_sae=16384, n_params_billion=2.61, gated=True,
)

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        _GEMMA2_2B,
        dataclasses.replace(
            _GEMMA2_2B, name="gemma-2-2b-it", hub_id="google/gemma-2-2b-it", prompt_format="chat",
            sae_trained_on="google/gemma-2-2b",
            sae_note="the base model's Gemma Scope SAEs, read on the chat model (Phase 2 reports FVU per layer)",
        ),
        ModelPreset(
            name="gemma-2-9b", hub_id="google/gemma-2-9b", family="Gemma 2",
            sae_release="gemma-scope-9b-pt-res-canonical", sae_id_template="layer_{layer}/width_{width}/canonical",
            sae_width="16k", layers=tuple(range(42)), n_layers=42, d_model=3584, d_sae=16384, n_params_billion=9.24,
            gated=True,
        ),
        _gemma3("270m", "google/gemma-3-270m", (5, 9, 12, 15), 18, 640, 0.27),
        _gemma3("1b", "google/gemma-3-1b-pt", (7, 13, 17, 22), 26, 1152, 1.0),
        _gemma3("4b", "google/gemma-3-4b-pt", (9, 17, 22, 29), 34, 2560, 4.3),
        _gemma3("12b", "google/gemma-3-12b-pt", (12, 24, 31, 41), 48, 3840, 12.2),
        _gemma3("27b", "google/gemma-3-27b-pt", (16, 31, 40, 53), 62, 5376, 27.4),
        ModelPreset(
            name="llama-3.1-8b", hub_id="meta-llama/Llama-3.1-8B", family="Llama 3.1",
            sae_release="llama_scope_lxr_8x", sae_id_template="l{layer}r_8x", sae_width="32k",
            layers=tuple(range(32)), n_layers=32, d_model=4096, d_sae=32768, n_params_billion=8.03,
            sae_dtype="bfloat16", gated=True,
            sae_note="Llama Scope: SAE Lens folds each SAE's input normalisation factor into its weights",
        ),
    )
}
DEFAULT_PRESET = "gemma-2-2b"


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``, or one line listing the presets."""
    if name not in PRESETS:
        raise PipelineError(f"unknown model preset {name!r}: presets are {', '.join(PRESETS)} (or give a hub id owner/name or a local folder)")
    return PRESETS[name]


def looks_like_preset(model: str) -> bool:
    """A bare name (no slash, not an existing path) is meant as a preset; hub ids are owner/name."""
    return "/" not in model and "\\" not in model and not model.startswith((".", "~")) and not Path(model).expanduser().exists()


@functools.cache
def sae_lens_directory() -> dict[str, Any]:
    """SAE Lens's installed ``pretrained_saes.yaml``, parsed (release -> entry); {} when sae-lens is not installed."""
    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / "pretrained_saes.yaml"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def release_sae_ids(release: str) -> dict[str, dict[str, Any]]:
    """{sae id: its yaml entry} of ``release`` ({} when the release or the yaml is unknown)."""
    entry = sae_lens_directory().get(release) or {}
    return {sae["id"]: sae for sae in entry.get("saes", [])}


def release_layers(release: str, id_template: str, width: str) -> list[int]:
    """The layers for which ``release`` has an SAE whose id matches the template (as the yaml lists them)."""
    pattern = re.escape(id_template.replace("{width}", width)).replace(re.escape("{layer}"), r"(\d+)")
    regex = re.compile(f"^{pattern}$")
    return sorted(int(m.group(1)) for sae_id in release_sae_ids(release) if (m := regex.match(sae_id)))


def neuronpedia_id(release: str, sae_id: str) -> str | None:
    """The Neuronpedia id the yaml gives for this SAE, if any."""
    value = release_sae_ids(release).get(sae_id, {}).get("neuronpedia")
    return str(value) if value else None


def neuronpedia_url(release: str, sae_id: str, latent: int) -> str | None:
    """``https://www.neuronpedia.org/{neuronpedia_id}/{latent}``: the latent's dashboard, when the SAE has one."""
    np_id = neuronpedia_id(release, sae_id)
    return f"https://www.neuronpedia.org/{np_id}/{int(latent)}" if np_id else None


def check_layers_have_saes(layers: list[int], available: list[int] | tuple[int, ...], release: str) -> None:
    """One line naming the layers ``release`` has, when a requested layer has no SAE there."""
    missing = sorted(set(layers) - set(available))
    if missing:
        raise PipelineError(
            f"{release} has no SAE for layers {missing}; it has layers {_ranges(sorted(available))}"
        )


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[str] = []
    start: int | None = None
    prev = -2
    for value in values:
        if start is None:
            start = prev = value
        elif value == prev + 1:
            prev = value
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = value
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(parts) or "none"


# Config fields a preset sets, unless the user gave them on the command line.
_PRESET_FIELDS = ("sae_release", "sae_id_template", "sae_width", "prompt_format")


def resolve_model(cfg: Any, explicit: set[str]) -> Any:
    """The config with ``--model PRESET`` expanded into hub id, SAE release/template/width and prompt format.

    ``explicit`` names the fields given on the command line; they win over the
    preset. Layers: with a preset and no ``--layers``, the preset's layers
    (Phase 1 then captures what Phase 2 can read); given layers must have an
    SAE in the release unless ``--sae-path`` supplies the SAEs. A model that
    is not a preset (hub id or folder) is left alone.
    """
    model = str(cfg.model)
    if not looks_like_preset(model):
        return _check_release_layers(cfg, explicit)
    preset = get_preset(model)
    updates: dict[str, Any] = {"model": preset.hub_id, "model_preset": preset.name}
    for name in _PRESET_FIELDS:
        if name not in explicit:
            updates[name] = getattr(preset, name)
    if "layers" not in explicit or cfg.layers is None:
        updates["layers"] = list(preset.layers)
    resolved = dataclasses.replace(cfg, **updates)
    if cfg.sae_path is None and "layers" in explicit and cfg.layers is not None:
        if resolved.sae_release == preset.sae_release and resolved.sae_id_template == preset.sae_id_template:
            check_layers_have_saes(list(cfg.layers), preset.layers, f"{preset.name}'s release {preset.sae_release}")
        else:
            _check_release_layers(resolved, explicit)
    logger.info("model preset %s: %s, SAEs %s (%s)", preset.name, preset.hub_id, preset.sae_release, preset.sae_id_template)
    return resolved


def _check_release_layers(cfg: Any, explicit: set[str]) -> Any:
    """With a release SAE Lens knows and explicit ``--layers``, refuse layers it has no SAE for."""
    if cfg.sae_path is not None or "layers" not in explicit or not cfg.layers:
        return cfg
    if cfg.sae_release not in sae_lens_directory():
        return cfg
    available = release_layers(cfg.sae_release, cfg.sae_id_template, cfg.sae_width)
    check_layers_have_saes(list(cfg.layers), available, cfg.sae_release)
    return cfg


def presets_table() -> str:
    """What ``run.py models`` prints: one row per preset, sizes marked as estimates."""
    header = f"{'preset':<14} {'hub id':<26} {'SAE release':<34} {'layers with SAEs':<18} {'weights GB*':>11} {'SAEs GB*':>9}  prompt"
    rows = [header, "-" * len(header)]
    for p in PRESETS.values():
        layers = _ranges(list(p.layers))
        rows.append(
            f"{p.name:<14} {p.hub_id:<26} {p.sae_release:<34} {layers:<18} {p.weights_gb():>11.1f} {p.saes_gb():>9.1f}  {p.prompt_format}"
        )
        if p.sae_note:
            rows.append(f"{'':<14} note: {p.sae_note}")
    rows.append("")
    rows.append("* estimates: weights = parameters x bytes of the checkpoint dtype; SAEs = layers x 2 x d_model x d_sae x bytes.")
    rows.append("Any other model: --model HUB_ID_OR_FOLDER with --sae-release/--sae-id-template, or --sae-path from `run.py train-saes`.")
    return "\n".join(rows)


def apply_prompt_format(tokenizer: Any, prompt: str, prompt_format: str) -> str:
    """The text the model is given for ``prompt``: as is (``plain``), or as one user turn of its chat template.

    Why strip a leading BOS: the chat template writes ``<bos>`` into the text,
    and the pipeline's tokenizer call adds BOS again; a doubled BOS changes
    every activation that follows it.
    """
    if prompt_format == "plain":
        return prompt
    if prompt_format != "chat":
        raise PipelineError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise PipelineError("--prompt-format chat, but the model's tokenizer has no chat template: use --prompt-format plain")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if bos and adds_bos and text.startswith(bos):
        text = text[len(bos):]
    return text
