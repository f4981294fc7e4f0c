"""Reading a local corpus file into documents: the one reader SAE training and Phase 2's general filter share.

Why one reader: ``run.py train-saes --corpus`` and Phase 2's ``--general-corpus``
take the same kinds of file, and a file that one of them accepts must mean the
same documents to the other (``run.py build-corpus`` writes files for both).

Formats:
- ``.jsonl``: one document per row, its string field ``text`` (other fields,
  such as the builder's ``source``, are ignored; a caller may turn a whole row
  into its text, as SAE training does for an MBPP row);
- anything else: UTF-8 text whose blank-line separated paragraphs are the
  documents, or its non-empty lines when it has no blank line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.datadir import jsonl_objects
from common.errors import PipelineError

JSONL_UNIT = "jsonl rows (field text)"
PARAGRAPH_UNIT = "paragraphs (blank-line separated)"
LINE_UNIT = "non-empty lines"


def read_documents(
    path: str | Path, label: str, row_text: Callable[[dict[str, Any]], str] | None = None
) -> tuple[list[str], str]:
    """The non-empty documents of ``path`` and what one document is; errors name the file as ``label PATH``.

    ``row_text`` (jsonl only) gives a row's document when the caller reads more
    than its ``text`` field; it is called only on rows that have a string ``text``.
    """
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"{label} {p} is not a file")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read {label} {p}: {exc}") from exc
    if p.suffix == ".jsonl":
        texts, unit = _jsonl_documents(raw, p, label, row_text), JSONL_UNIT
    else:
        normalised = raw.replace("\r\n", "\n")
        texts, unit = [t.strip() for t in re.split(r"\n[ \t]*\n", normalised) if t.strip()], PARAGRAPH_UNIT
        if len(texts) <= 1:
            texts, unit = [line.strip() for line in normalised.splitlines() if line.strip()], LINE_UNIT
    if not texts:
        raise PipelineError(f"{label} {p} holds no non-empty document")
    return texts, unit


def _jsonl_documents(
    raw: str, p: Path, label: str, row_text: Callable[[dict[str, Any]], str] | None
) -> list[str]:
    def no_text(number: int) -> str:
        return f'{label} {p} line {number} has no string field "text"'

    texts: list[str] = []
    for number, row in jsonl_objects(raw.splitlines(), lambda number, error: f"{label} {p} line {number} is not JSON: {error}",
                                     no_text):
        if not isinstance(row.get("text"), str):
            raise PipelineError(no_text(number))
        text = row_text(row) if row_text is not None else row["text"]
        if text.strip():
            texts.append(text)
    return texts


HUB_CORPUS = "NeelNanda/pile-10k"
HUB_CORPUS_UNIT = "dataset rows (train split, field text)"


def load_hub_corpus(refusal: Callable[[str], str]) -> Any:
    """pile-10k's train split as a ``datasets.Dataset``: the default corpus of SAE training and the general filter.

    Texts are read only for the rows a caller selects (:func:`hub_corpus_texts`).
    When the hub cannot give it (offline, no cache), one line:
    ``refusal(first line of the error)``, worded by the caller to name its
    own local-file option.
    """
    try:
        import datasets

        return datasets.load_dataset(HUB_CORPUS, split="train")
    except Exception as exc:  # datasets raises ConnectionError, OSError, DatasetNotFoundError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(refusal(first)) from exc


def hub_corpus_texts(rows: Any, indices: Sequence[int]) -> list[str]:
    """The ``text`` field of the selected rows of the hub corpus, in the given order."""
    return [str(t) for t in rows.select(list(indices))["text"]]
