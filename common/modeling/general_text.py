"""Residual-stream vectors at every token of general text, for Phase 2's general-text filter.

Why this exists beside ``capture.py``: the filter of docs/design.md section 4 asks how
often a latent fires on ordinary text, token by token, so it needs
resid_post(L) at *all* positions of many short documents, not the last prompt
token of a generation. The hook site is the same one Phase 1 captures and
GemmaScope ``layer_L`` was trained on (rule 1): the OUTPUT of decoder layer L,
before any final norm, read by a forward hook on that layer (a decoder layer
returns a tensor in transformers 5, a tuple in older versions; both are read).

Why right padding, built here: with right padding every document sits at
positions 0..len-1, exactly as in an unpadded single forward pass, and under
the causal mask its tokens never see the padding. No position ids need to be
derived from the mask (left padding would need them). Pad positions are then
dropped, and so is the leading BOS token: its residual stream is an outlier
(attention sink) that says nothing about how often a latent fires on text.

Why the decoder stack alone (``model.get_decoder()``): the filter needs no
logits, and gemma-2-2b's 256k-token unembedding would cost more memory than
everything else in a batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import PipelineError
from common.modeling.hooks import model_layers, read_hook, remove_all

logger = logging.getLogger(__name__)


@dataclass
class TokenizedDocuments:
    """Token ids of each document (BOS first when the tokenizer adds one), already truncated.

    ``counted_tokens`` is the number of positions whose vectors are kept
    (every token but a leading BOS).
    """

    ids: list[list[int]]
    bos_id: int | None
    max_tokens: int

    @property
    def counted_tokens(self) -> int:
        return sum(len(doc) - int(self._starts_with_bos(doc)) for doc in self.ids)

    def _starts_with_bos(self, doc: list[int]) -> bool:
        return self.bos_id is not None and len(doc) > 0 and doc[0] == self.bos_id

    def keep_mask(self, doc: list[int]) -> list[bool]:
        """Which positions of ``doc`` count: all but a leading BOS."""
        return [not (i == 0 and self._starts_with_bos(doc)) for i in range(len(doc))]


def tokenize_documents(tokenizer: Any, texts: list[str], max_tokens: int) -> TokenizedDocuments:
    """Tokenize each text as the model reads a document (with its BOS), keeping ``max_tokens`` text tokens.

    Why count text tokens, not BOS: BOS is never counted by the filter, so a
    document of ``max_tokens`` contributes exactly ``max_tokens`` positions.
    Documents with no text token at all are dropped.
    """
    if max_tokens < 1:
        raise PipelineError(f"general corpus tokens per document must be >= 1, got {max_tokens}")
    bos_id = tokenizer.bos_token_id
    docs: list[list[int]] = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        has_bos = bos_id is not None and ids[:1] == [bos_id]
        ids = ids[: max_tokens + int(has_bos)]
        if len(ids) > int(has_bos):
            docs.append(ids)
    if not docs:
        raise PipelineError("the general corpus has no document with a text token")
    return TokenizedDocuments(ids=docs, bos_id=bos_id, max_tokens=max_tokens)


@torch.no_grad()
def collect_resid_post_all_tokens(
    model: torch.nn.Module,
    documents: TokenizedDocuments,
    layers: list[int],
    pad_id: int,
    batch_size: int = 16,
) -> dict[int, torch.Tensor]:
    """resid_post(L) at every counted position of every document, for each L in ``layers``.

    Returns ``{layer: tensor (counted_tokens, d_model)}`` on the CPU in the
    model's own dtype (bf16 on GPU: exactly what the model computed, at half
    the memory of float32; the caller casts to float32 for SAE arithmetic).
    Rows are in document order, positions in order within a document.
    Documents are batched longest first, which keeps padding small.
    """
    model_layers(model, layers)
    if batch_size < 1:
        raise PipelineError(f"batch size must be >= 1, got {batch_size}")
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    device = next(model.parameters()).device

    order = sorted(range(len(documents.ids)), key=lambda i: -len(documents.ids[i]))
    pieces: dict[int, list[tuple[int, torch.Tensor]]] = {layer: [] for layer in layers}
    current: dict[str, Any] = {}

    def make_hook(layer: int):
        def hook(hidden: torch.Tensor) -> None:
            # (kept positions of the batch, d_model) in batch order; one device-to-host copy per batch.
            kept = hidden[current["keep"]].detach().to("cpu")
            for doc_index, (lo, hi) in zip(current["docs"], current["spans"]):
                pieces[layer].append((doc_index, kept[lo:hi]))

        return hook

    handles = [read_hook(model, layer, make_hook(layer)) for layer in layers]
    try:
        for start in range(0, len(order), batch_size):
            batch_docs = order[start : start + batch_size]
            width = max(len(documents.ids[i]) for i in batch_docs)
            input_ids = torch.full((len(batch_docs), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch_docs), width), dtype=torch.long)
            keep = torch.zeros((len(batch_docs), width), dtype=torch.bool)
            spans: list[tuple[int, int]] = []
            offset = 0
            for row, doc_index in enumerate(batch_docs):
                ids = documents.ids[doc_index]
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[row, : len(ids)] = 1
                mask = documents.keep_mask(ids)
                keep[row, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
                spans.append((offset, offset + sum(mask)))
                offset += sum(mask)
            current.update(keep=keep.to(device), docs=batch_docs, spans=spans)
            decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False)
    finally:
        remove_all(handles)

    out: dict[int, torch.Tensor] = {}
    for layer in layers:  # one layer at a time, so the copy made by cat never doubles the whole group
        by_doc = sorted(pieces.pop(layer), key=lambda item: item[0])
        out[layer] = torch.cat([tensor for _, tensor in by_doc], dim=0)
        del by_doc
    logger.debug("collected resid_post at %d tokens for layers %s", documents.counted_tokens, layers)
    return out
