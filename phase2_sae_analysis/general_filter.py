"""The general-text filter (docs/design.md section 4): drop latents that fire on ordinary text.

Why: a latent that fires on 2% or more of all tokens of general text (the
Pile, by default) is a frequent, generic feature; that it also separates
correct from incorrect programs says little about program validity. Such
latents are kept and flagged in the full score arrays but never ranked.

Corpus: ``--general-corpus PATH`` (a ``.jsonl`` file: the ``text`` field of
every row; any other file is read as text: its blank-line separated
paragraphs are the documents, or its non-empty lines when it has no blank
line), else ``NeelNanda/pile-10k`` (train split) through ``datasets``. Either
way ``general_corpus_samples`` documents are drawn with the run's seed and
each is truncated to ``general_corpus_tokens`` text tokens.

Activations come from the model that produced Phase 1's activations, at the
same site (resid_post of decoder layer L), at every token but padding and the
leading BOS. Memory: the vectors of all layers are kept on the CPU in the
model's dtype (bf16 on GPU) as long as they fit ``CORPUS_MEMORY_BUDGET_BYTES``
(gemma-2-2b, 200 x 128 tokens: 118 MB a layer, 3.1 GB for all 26 in bf16:
one pass over the corpus); otherwise layers are taken in groups that fit,
one corpus pass per group, computed when the layer loop reaches the group.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import PipelineConfig, check_option_limits
from common.corpora.files import HUB_CORPUS, HUB_CORPUS_UNIT, hub_corpus_texts, load_hub_corpus, read_documents
from common.errors import PipelineError
from common.modeling.general_text import TokenizedDocuments, collect_resid_post_all_tokens, tokenize_documents
from common.modeling.models import default_dtype, load_model_and_tokenizer, text_sizes
from common.saes.loading import encode

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = HUB_CORPUS
CORPUS_MEMORY_BUDGET_BYTES = 4 * 2**30
ENCODE_CHUNK_TOKENS = 1024
DEFAULT_CORPUS_BATCH = 16
POSITIONS_RULE = "every token position except padding and the leading BOS token"


@dataclass
class GeneralCorpus:
    """The documents of the general corpus that the filter reads, and where they came from."""

    name: str
    source: str
    unit: str
    n_available: int
    indices: list[int]
    texts: list[str]


def choose_documents(n_available: int, n_samples: int, seed: int) -> list[int]:
    """``n_samples`` document indices drawn without replacement with ``seed`` (all when fewer), sorted."""
    if n_samples < 1:
        raise PipelineError(f"general corpus samples must be >= 1, got {n_samples}")
    if n_available <= n_samples:
        return list(range(n_available))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_available, size=n_samples, replace=False))


def _read_local_corpus(path: Path) -> tuple[list[str], str]:
    """Documents of a local corpus file and what one document is (the reader SAE training uses too)."""
    return read_documents(path, "--general-corpus")


def _load_hub_corpus() -> Any:
    """pile-10k's train split (texts are read only for the sampled rows)."""
    return load_hub_corpus(lambda error: (
        f"cannot load the general-text corpus {DEFAULT_CORPUS} through datasets ({error}); "
        "use --general-corpus PATH (a local .txt or .jsonl file) or --no-general-filter"
    ))


def load_general_corpus(cfg: PipelineConfig) -> GeneralCorpus:
    """The filter's documents: the local file when given, else pile-10k; sampled with ``cfg.seed``."""
    if cfg.general_corpus:
        path = Path(cfg.general_corpus)
        texts, unit = _read_local_corpus(path)
        indices = choose_documents(len(texts), cfg.general_corpus_samples, cfg.seed)
        return GeneralCorpus(
            name=str(path), source="local file", unit=unit, n_available=len(texts), indices=indices,
            texts=[texts[i] for i in indices],
        )
    rows = _load_hub_corpus()
    indices = choose_documents(len(rows), cfg.general_corpus_samples, cfg.seed)
    return GeneralCorpus(
        name=DEFAULT_CORPUS, source="datasets (Hugging Face hub)", unit=HUB_CORPUS_UNIT,
        n_available=len(rows), indices=indices, texts=hub_corpus_texts(rows, indices),
    )


def firing_frequency(sae: Any, activations: torch.Tensor, chunk: int = ENCODE_CHUNK_TOKENS) -> np.ndarray:
    """Share of the rows of ``activations`` on which each latent fires (> 0), float64 (d_sae,).

    Encoded in float32 (rule 9) in chunks: all 25k tokens x 16k latents at
    once would be a 1.6 GB matrix for nothing but a count.
    """
    n = int(activations.shape[0])
    counts = np.zeros(int(sae.cfg.d_sae), dtype=np.int64)
    for start in range(0, n, chunk):
        block = activations[start : start + chunk].to(torch.float32).numpy()
        counts += (encode(sae, block) > 0).sum(axis=0, dtype=np.int64)
    return counts / n


@dataclass(eq=False)
class GeneralTextFilter:
    """Corpus activations of the analysed layers, served one layer at a time, and the firing shares.

    Built with :meth:`prepare` (loads corpus and model, fails fast before any
    SAE work); :meth:`frequencies` gives a layer's per-latent firing share;
    :meth:`close` frees the model and the cached vectors.
    """

    corpus: GeneralCorpus
    model_name: str
    model_note: str
    documents: TokenizedDocuments
    threshold: float
    groups: list[list[int]]
    model: Any = field(repr=False)
    pad_id: int = 0
    batch_size: int = DEFAULT_CORPUS_BATCH
    dtype: str = ""
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _done_groups: set[int] = field(default_factory=set, repr=False)

    @classmethod
    def prepare(
        cls,
        cfg: PipelineConfig,
        model_name: str,
        model_note: str,
        layers: list[int],
        d_model: int,
        device: torch.device,
        budget_bytes: int = CORPUS_MEMORY_BUDGET_BYTES,
    ) -> GeneralTextFilter:
        check_option_limits(cfg, "2")  # the threshold's range, (0, 1], is declared on the option
        corpus = load_general_corpus(cfg)
        dtype = default_dtype(device)
        model, tokenizer = load_model_and_tokenizer(model_name, device, dtype)
        model_d_model = text_sizes(model).d_model
        if model_d_model != int(d_model):
            raise PipelineError(
                f"the general-filter model {model_name} has d_model {model_d_model}, but the activations have "
                f"width {d_model}: pass the --model that produced them"
            )
        documents = tokenize_documents(tokenizer, corpus.texts, cfg.general_corpus_tokens)
        per_layer = documents.counted_tokens * int(d_model) * torch.empty((), dtype=dtype).element_size()
        per_group = max(1, budget_bytes // max(1, per_layer))
        groups = [layers[i : i + per_group] for i in range(0, len(layers), per_group)]
        logger.info(
            "general filter: %d %s of %s, %d tokens; corpus vectors %.2f GB a layer in %s, %d corpus pass(es)",
            len(documents.ids), corpus.unit, corpus.name, documents.counted_tokens, per_layer / 1e9, dtype, len(groups),
        )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(
            corpus=corpus, model_name=model_name, model_note=model_note, documents=documents,
            threshold=float(cfg.general_filter_threshold), groups=groups, model=model, pad_id=int(pad_id),
            batch_size=cfg.batch_size or DEFAULT_CORPUS_BATCH, dtype=str(dtype),
        )

    def _activations(self, layer: int) -> torch.Tensor:
        if layer not in self._cache:
            index = next((i for i, group in enumerate(self.groups) if layer in group), None)
            if index is None:
                raise PipelineError(f"layer {layer} was not prepared for the general filter")
            if index in self._done_groups:
                raise PipelineError(f"corpus vectors of layer {layer} were already released (layers must be visited in order)")
            self._cache.clear()
            gc.collect()
            logger.info("general filter: corpus pass for layers %s", self.groups[index])
            self._cache.update(
                collect_resid_post_all_tokens(self.model, self.documents, self.groups[index], self.pad_id, self.batch_size)
            )
            self._done_groups.add(index)
            if len(self._done_groups) == len(self.groups):
                self._release_model()
        return self._cache[layer]

    def frequencies(self, sae: Any, layer: int) -> np.ndarray:
        """Per-latent firing share on the corpus tokens of ``layer`` (float64, d_sae)."""
        acts = self._activations(layer)
        freq = firing_frequency(sae, acts)
        del self._cache[layer]  # each layer is read once
        return freq

    def _release_model(self) -> None:
        if self.model is not None:
            self.model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def close(self) -> None:
        self._cache.clear()
        self._release_model()

    def describe(self, n_flagged: dict[int, int]) -> dict[str, Any]:
        """What the results and metadata record about the filter."""
        return {
            "enabled": True,
            "corpus": self.corpus.name,
            "corpus_source": self.corpus.source,
            "document_unit": self.corpus.unit,
            "n_documents_available": self.corpus.n_available,
            "n_documents": len(self.documents.ids),
            "sampling": f"{len(self.corpus.indices)} documents drawn without replacement with seed (all when fewer)",
            "tokens_per_document": self.documents.max_tokens,
            "n_tokens": self.documents.counted_tokens,
            "positions": POSITIONS_RULE,
            "threshold": self.threshold,
            "rule": "a latent firing (activation > 0) on >= threshold of the corpus tokens is flagged and not ranked",
            "model": self.model_name,
            "model_choice": self.model_note,
            "hook_site": "blocks.{L}.hook_resid_post (output of decoder layer L, before the final norm)",
            "dtype": self.dtype,
            "corpus_passes": len(self.groups),
            "n_flagged": {str(layer): int(n) for layer, n in sorted(n_flagged.items())},
        }


def disabled_description() -> dict[str, Any]:
    return {"enabled": False, "note": "--no-general-filter: no latent was dropped for firing on general text"}
