"""Links from a reported latent of a public SAE to its Neuronpedia dashboard.

Why: a reader of the summary should open a latent's dashboard (top
activations, explanations) in one click. The Neuronpedia id of each public SAE
comes from SAE Lens's ``pretrained_saes.yaml`` (``common/modeling/model_presets.py``
reads it); SAEs trained locally have no dashboard, so they get no link.
"""

from __future__ import annotations

from typing import Any

from common.modeling.model_presets import neuronpedia_url


def latent_url(sae_description: dict[str, Any], latent: int) -> str | None:
    """The dashboard URL of ``latent`` for an SAE described as ``SAESource.describe`` does, or None."""
    if sae_description.get("source") != "sae_lens":
        return None
    return neuronpedia_url(str(sae_description.get("release")), str(sae_description.get("sae_id")), latent)


def latent_markdown(sae_description: dict[str, Any], layer: int, latent: int) -> str:
    """``L{layer}/{latent}``, as a markdown link to Neuronpedia when the SAE has a dashboard."""
    label = f"L{layer}/{latent}"
    url = latent_url(sae_description, latent)
    return f"[{label}]({url})" if url else label
