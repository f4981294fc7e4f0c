"""Loading GemmaScope SAEs with SAE Lens, checking they fit the captured site, and encoding.

Why this module exists: Phase 2 encodes every layer's saved residual-stream
vectors with "the SAE of the same layer", and the published versions of this
study went wrong exactly there (docs/design.md section 3 rule 1: an off-by-one between
hook point and SAE). So an SAE is only used after its own recorded hook name
has been compared with the site the pipeline captures
(``blocks.{L}.hook_resid_post``) and its input width with the activations';
either mismatch is an error, never a warning. All SAE arithmetic is float32
(rule 9).

SAEs come from SAE Lens by release and id (the real run), or from a local
folder holding one ``SAE.save_model`` folder per layer (``--sae-path``; the
offline demo and the tests).

``sae_lens`` is imported lazily: importing it takes about 10 s, which the
callers that only need :class:`SAESource` (CLI parsing, metadata) should not pay.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.errors import PipelineError
from common.modeling.hooks import hook_name

if TYPE_CHECKING:
    from sae_lens import SAE

logger = logging.getLogger(__name__)

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"


@dataclass
class SAESource:
    """Where the SAE of each layer comes from: an SAE Lens release, or a local folder.

    ``local_path``, when set, wins: it is a folder with one subfolder
    ``layer_{L}`` per layer, each as ``SAE.save_model`` writes it
    (``cfg.json`` + ``sae_weights.safetensors``). Otherwise the SAE is
    ``SAE.from_pretrained(release, id_template.format(layer=L, width=width))``.
    """

    release: str = "gemma-scope-2b-pt-res-canonical"
    id_template: str = "layer_{layer}/width_{width}/canonical"
    width: str = "16k"
    local_path: str | None = None

    def sae_id(self, layer: int) -> str:
        """The SAE Lens id of ``layer``'s SAE in :attr:`release`."""
        return self.id_template.format(layer=layer, width=self.width)

    def layer_folder(self, layer: int) -> Path:
        """The folder of ``layer``'s SAE under :attr:`local_path`."""
        if self.local_path is None:
            raise PipelineError("SAESource has no local_path: SAEs come from SAE Lens by release and id")
        return Path(self.local_path) / f"layer_{layer}"

    def describe(self, layer: int) -> dict[str, str]:
        """What the metadata records about the SAE used for ``layer``."""
        if self.local_path is not None:
            return {"source": "local", "path": str(self.layer_folder(layer))}
        return {"source": "sae_lens", "release": self.release, "sae_id": self.sae_id(layer)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAESource:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise PipelineError(f"unknown SAE source keys: {sorted(unknown)}")
        return cls(**data)


def expected_hook_name(layer: int) -> str:
    """The site the pipeline captures for ``layer``, and the one GemmaScope's ``layer_L`` was trained on (rule 1)."""
    return hook_name(layer, "resid_post")


def sae_hook_name(sae: SAE) -> str | None:
    """The hook name the SAE itself records (SAE Lens v6 keeps it in ``cfg.metadata.hook_name``)."""
    return sae.cfg.metadata.hook_name


def check_hook_name(sae: SAE, layer: int, origin: str = "") -> None:
    """Refuse an SAE trained on another site than the one captured for ``layer``.

    An SAE that records no hook name is refused too: the check is the point,
    and a demo or hand-built SAE can set ``cfg.metadata.hook_name``.
    """
    expected = expected_hook_name(layer)
    actual = sae_hook_name(sae)
    where = f" ({origin})" if origin else ""
    if actual is None:
        raise PipelineError(
            f"SAE for layer {layer}{where} records no hook name; expected {expected} "
            "(set cfg.metadata.hook_name when saving it)"
        )
    if actual != expected:
        raise PipelineError(
            f"SAE for layer {layer}{where} was trained on {actual}, but layer {layer} activations "
            f"are captured at {expected}: wrong SAE for this layer"
        )


def check_d_in(sae: SAE, width: int, layer: int | None = None) -> None:
    """Refuse activations whose width is not the SAE's input width (e.g. another model's SAEs)."""
    if int(sae.cfg.d_in) != int(width):
        hook = sae_hook_name(sae)
        at = f" for layer {layer}" if layer is not None else (f" of {hook}" if hook else "")
        raise PipelineError(
            f"SAE{at} expects vectors of width {sae.cfg.d_in}, but the activations have width {width}: "
            "SAEs and model do not match"
        )


def load_sae(source: SAESource, layer: int, device: str = "cpu") -> SAE:
    """Load ``layer``'s SAE in float32, from the local folder or SAE Lens, and check its hook name.

    Raises:
        PipelineError: one line, for a missing local layer folder, an unknown
            release or id, an unreachable hub (naming what was asked for and
            ``--sae-path``), access denied, or an SAE trained on another site.
    """
    origin = json.dumps(source.describe(layer))
    if source.local_path is not None:
        sae = _load_local(source, layer, device)
        _fold_input_normalisation(sae, _recorded_norm_factor(source.layer_folder(layer)), origin)
    else:
        sae = _load_from_sae_lens(source, layer, device)
        # SAE Lens folds the yaml's norm_scaling_factor in from_pretrained; one it could not fold is refused.
        _fold_input_normalisation(sae, None, origin)
    check_hook_name(sae, layer, origin)
    sae.eval()
    sae.requires_grad_(False)
    logger.info("loaded SAE for layer %d: %s (d_in=%d, d_sae=%d)", layer, origin, sae.cfg.d_in, sae.cfg.d_sae)
    return sae


NORM_FACTOR_KEY = "norm_scaling_factor"


def _recorded_norm_factor(folder: Path) -> float | None:
    """The input normalisation factor a local SAE folder records in its cfg.json (``norm_scaling_factor``)."""
    try:
        value = json.loads((folder / SAE_CFG_FILENAME).read_text(encoding="utf-8")).get(NORM_FACTOR_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if value is not None else None


def _fold_input_normalisation(sae: SAE, factor: float | None, origin: str) -> None:
    """Make an SAE trained on scaled inputs take raw residual vectors, as SAE Lens does for Llama Scope.

    Why: Llama Scope SAEs were trained on x * f (f = sqrt(d_in) / mean ||x||);
    their cfg says ``normalize_activations = "expected_average_only_in"``, which
    SAE Lens does *not* apply at run time: ``SAE.from_pretrained`` folds f into
    the weights (``fold_activation_norm_scaling_factor``: W_enc * f, W_dec / f,
    b_dec / f) from the yaml's ``norm_scaling_factor``; ``load_from_disk`` does
    not. Unfolded, the SAE silently reads raw vectors as if scaled, and its
    reconstructions are wrong by orders of magnitude. So a local folder must
    record f in its cfg.json (``norm_scaling_factor``), and an SAE still
    marked unfolded is refused.
    """
    if sae.cfg.normalize_activations != "expected_average_only_in":
        return
    if factor is None:
        raise PipelineError(
            f"SAE {origin} expects inputs scaled to an average norm of sqrt(d_in) (normalize_activations "
            f"expected_average_only_in) but records no factor: add \"{NORM_FACTOR_KEY}\" to its {SAE_CFG_FILENAME}"
        )
    sae.fold_activation_norm_scaling_factor(factor)
    logger.info("SAE %s: folded input normalisation factor %.6g into its weights", origin, factor)


def _load_local(source: SAESource, layer: int, device: str) -> SAE:
    from sae_lens import SAE

    folder = source.layer_folder(layer)
    if source.local_path is None or not Path(source.local_path).is_dir():
        raise PipelineError(f"--sae-path {source.local_path} is not a directory")
    missing = [name for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME) if not (folder / name).is_file()]
    if missing:
        raise PipelineError(
            f"no SAE for layer {layer} under {source.local_path}: {folder} lacks {', '.join(missing)} "
            "(one SAE.save_model folder per layer, named layer_{L}, is expected)"
        )
    try:
        return SAE.load_from_disk(folder, device=device, dtype="float32")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise PipelineError(f"could not load the SAE in {folder}: {_one_line(exc)}") from exc


def _load_from_sae_lens(source: SAESource, layer: int, device: str) -> SAE:
    from huggingface_hub import errors as hf_errors
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    sae_id = source.sae_id(layer)
    asked = f"SAE {sae_id!r} of release {source.release!r}"
    directory = get_pretrained_saes_directory()
    # SAE Lens also accepts a hub repo id ("owner/name") as the release; only
    # names in its directory can be checked before reaching the hub.
    if source.release not in directory and "/" not in source.release:
        raise PipelineError(
            f"unknown SAE release {source.release!r}: not in SAE Lens's pretrained SAEs "
            "(see sae_lens/pretrained_saes.yaml) nor a hub repo id, or give --sae-path"
        )
    if source.release in directory and sae_id not in directory[source.release].saes_map:
        raise PipelineError(f"unknown SAE id {sae_id!r} in release {source.release!r} (layer {layer}, width {source.width})")

    offline_hint = f"the Hugging Face hub cannot be reached to fetch {asked}; point --sae-path at a local copy (one SAE Lens folder per layer)"
    try:
        return SAE.from_pretrained(source.release, sae_id, device=device, dtype="float32")
    except hf_errors.GatedRepoError as exc:
        raise PipelineError(_access_denied(asked)) from exc
    except (hf_errors.RepositoryNotFoundError, hf_errors.RemoteEntryNotFoundError) as exc:
        raise PipelineError(f"{asked} not found on the hub: {_one_line(exc)}") from exc
    except hf_errors.LocalEntryNotFoundError as exc:  # raised when the hub is unreachable and nothing is cached
        raise PipelineError(offline_hint) from exc
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise PipelineError(_access_denied(asked)) from exc
        raise PipelineError(f"hub error while fetching {asked}: {_one_line(exc)}") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise PipelineError(offline_hint) from exc


def _access_denied(asked: str) -> str:
    return (
        f"access to {asked} was denied by the hub (401/403): accept the repository's licence on "
        "huggingface.co and log in (`huggingface-cli login` or env HF_TOKEN), or use --sae-path"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_float32(sae: SAE) -> None:
    if sae.dtype != torch.float32:
        raise PipelineError(f"SAE arithmetic must be float32 (rule 9), this SAE is {sae.dtype}; load it with load_sae")


def _as_matrix(activations: np.ndarray) -> np.ndarray:
    x = np.asarray(activations)
    if x.ndim != 2:
        raise PipelineError(f"activations must be (n, d_model), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


@torch.no_grad()
def encode(sae: SAE, activations: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """SAE latents of each row of ``activations``, as float32 (n, d_sae).

    Runs SAE Lens's own ``encode`` (for JumpReLU: ReLU(pre) where pre >
    threshold, strictly, else 0), in float32, in batches so that the (batch,
    d_sae) intermediates stay small. A latent is active where the result is > 0.
    """
    _check_float32(sae)
    x = _as_matrix(activations)
    check_d_in(sae, x.shape[1])
    out = np.empty((x.shape[0], int(sae.cfg.d_sae)), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        batch = torch.from_numpy(x[start : start + batch_size]).to(device=sae.device, dtype=torch.float32)
        out[start : start + batch.shape[0]] = sae.encode(batch).float().cpu().numpy()
    return out


@torch.no_grad()
def fraction_of_variance_unexplained(sae: SAE, activations: np.ndarray, batch_size: int = 256) -> float:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, with x_hat = decode(encode(x)).

    Why: a quick sanity check that an SAE fits the activations it is applied
    to (GemmaScope on gemma-2-2b's residual stream is well below 1; the wrong
    layer or model is near or above 1). Sums are accumulated in float64.
    """
    _check_float32(sae)
    x = _as_matrix(activations)
    check_d_in(sae, x.shape[1])
    if x.shape[0] < 2:
        raise PipelineError("FVU needs at least two activation vectors")
    mean = x.astype(np.float64).mean(axis=0)
    err = 0.0
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        batch = torch.from_numpy(xb).to(device=sae.device, dtype=torch.float32)
        recon = sae.decode(sae.encode(batch)).double().cpu().numpy()
        err += float(((xb.astype(np.float64) - recon) ** 2).sum())
        total += float(((xb.astype(np.float64) - mean) ** 2).sum())
    if total == 0.0:
        raise PipelineError("FVU undefined: all activation vectors are identical")
    return err / total
