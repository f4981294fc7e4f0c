"""``run.py build-corpus``: SAE-training and general-text corpora from what is installed on this machine.

Why: SAE training (``run.py train-saes --corpus``) and Phase 2's general-text
filter (``--general-corpus``) default to pile-10k from the hub, which offline
machines cannot reach. Every Python installation carries text of both kinds:
- ``code``: the Python sources of the standard library and of the installed
  packages; one document per top-level function or class (with its
  docstring), cut out with ``ast`` so a document is a whole definition;
- ``text``: the plain-text documentation and licences those packages ship
  (``LICENSE*``, ``COPYING*``, ``NOTICE*``, ``AUTHORS*``, ``README*``,
  ``*.txt``/``*.rst``/``*.md`` files, and the descriptions in ``*.dist-info/METADATA``);
  one document per blank-line separated paragraph of at least
  ``MIN_PARAGRAPH_CHARS`` characters.

Deterministic: files are listed under each root in sorted order and taken,
all roots together, in the order of the sha256 of ``ROOT_NAME/RELPATH`` (a
fixed permutation: a character budget then samples the stdlib and every
package, not only those whose names sort first); identical documents are kept once; fixed limits per
document, per file and in all. The same installation gives the same bytes.

Output: a ``.jsonl`` file, one row ``{"text": ..., "source": ROOT_NAME/RELPATH}``
per document, which ``common.corpora.files.read_documents`` (both readers)
takes; beside it ``<stem>_metadata.json`` records the roots, the limits, every
file that gave a document (characters and documents taken), the totals and
the output's sha256.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.datadir import RunClock, atomic_write_text, file_sha256, package_versions, write_json
from common.errors import PipelineError

logger = logging.getLogger(__name__)

KINDS = ("code", "text")
MIN_PARAGRAPH_CHARS = 200
TEXT_NAME = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|AUTHORS|README|METADATA)([._-].*)?$", re.IGNORECASE)
TEXT_SUFFIXES = (".txt", ".rst", ".md")
SKIPPED_DIRS = {"__pycache__", ".git", "site-packages", "dist-packages"}


@dataclass(frozen=True)
class CorpusLimits:
    """Fixed sizes: a document, a file's share and the whole corpus, all in characters."""

    max_doc_chars: int = 4_000
    max_file_chars: int = 20_000
    max_total_chars: int = 8_000_000
    max_input_bytes: int = 2_000_000  # larger files (generated tables, vendored bundles) are not read

    def check(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise PipelineError(f"corpus limit {name} must be >= 1, got {value}")


@dataclass
class TakenFile:
    """One input file that gave documents: where, how many characters and documents."""

    source: str
    chars: int
    documents: int


@dataclass
class BuiltCorpus:
    """What a build wrote: the file, its metadata file and the totals."""

    path: Path
    metadata_path: Path
    n_documents: int
    n_chars: int
    sha256: str
    files: list[TakenFile] = field(default_factory=list)


def default_roots() -> list[Path]:
    """The standard library and the installed packages of the running Python (purelib, and platlib when different)."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path(paths["purelib"])]
    if Path(paths["platlib"]) != roots[1]:
        roots.append(Path(paths["platlib"]))
    return [r for r in roots if r.is_dir()]


def _wanted(path: Path, kind: str) -> bool:
    if kind == "code":
        return path.suffix == ".py"
    if path.name == "METADATA":
        return path.parent.name.endswith(".dist-info")
    return bool(TEXT_NAME.match(path.name)) or path.suffix.lower() in TEXT_SUFFIXES


def list_files(roots: list[Path], kind: str, max_input_bytes: int) -> list[tuple[str, Path]]:
    """(name, path) of every file of this kind under the roots, in the fixed order of sha256(name).

    ``name`` is ``ROOT_NAME/RELPATH``; the roots are interleaved by that order, so
    a budget smaller than everything still samples the stdlib and the packages.
    A ``site-packages`` folder inside a root (the stdlib's) is not read: a
    package root is its own root.
    """
    found = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(part in SKIPPED_DIRS for part in rel.parts[:-1]) or path.is_symlink() or not path.is_file():
                continue
            if _wanted(path, kind) and path.stat().st_size <= max_input_bytes:
                found.append((f"{root.name}/{rel}", path))
    return sorted(found, key=lambda item: (hashlib.sha256(item[0].encode()).hexdigest(), item[0]))


def code_documents(source: str, max_doc_chars: int) -> list[str]:
    """Each top-level function and class of a module (decorators and docstring included), cut at ``max_doc_chars``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # Python 2 files, templates, null bytes
        return []
    lines = source.splitlines(keepends=True)
    docs = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.end_lineno is not None:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            text = "".join(lines[first - 1 : node.end_lineno]).strip()
            if text:
                docs.append(text[:max_doc_chars])
    return docs


def text_documents(source: str, max_doc_chars: int) -> list[str]:
    """Blank-line separated paragraphs of at least ``MIN_PARAGRAPH_CHARS`` characters, cut at ``max_doc_chars``."""
    paragraphs = (p.strip() for p in re.split(r"\n[ \t]*\n", source.replace("\r\n", "\n")))
    return [p[:max_doc_chars] for p in paragraphs if len(p) >= MIN_PARAGRAPH_CHARS]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def collect(kind: str, roots: list[Path], limits: CorpusLimits) -> tuple[list[dict[str, str]], list[TakenFile]]:
    """Rows ``{"text", "source"}`` and the files they came from, within the limits."""
    split = code_documents if kind == "code" else text_documents
    rows: list[dict[str, str]] = []
    taken: list[TakenFile] = []
    seen: set[str] = set()
    total = 0
    for name, path in list_files(roots, kind, limits.max_input_bytes):
        source = _read(path)
        if source is None:
            continue
        chars = docs = 0
        for doc in split(source, limits.max_doc_chars):
            digest = hashlib.sha256(doc.encode()).hexdigest()
            if digest in seen or chars + len(doc) > limits.max_file_chars:
                continue
            seen.add(digest)
            rows.append({"text": doc, "source": name})
            chars, docs, total = chars + len(doc), docs + 1, total + len(doc)
            if total >= limits.max_total_chars:
                break
        if docs:
            taken.append(TakenFile(name, chars, docs))
        if total >= limits.max_total_chars:
            break
    return rows, taken


def metadata_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}_metadata.json")


def build_corpus(kind: str, out: str | Path, roots: list[Path] | None = None, limits: CorpusLimits | None = None) -> BuiltCorpus:
    """Build the ``kind`` corpus from ``roots`` (default: this Python's stdlib and packages) into ``out`` (.jsonl)."""
    clock = RunClock()
    limits = limits or CorpusLimits()
    limits.check()
    if kind not in KINDS:
        raise PipelineError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out = Path(out)
    if out.suffix != ".jsonl":
        raise PipelineError(f"--out {out} must end in .jsonl (the format train-saes and --general-corpus read)")
    if out.is_dir():
        raise PipelineError(f"--out {out} is a folder, not a file")
    roots = default_roots() if roots is None else [Path(r) for r in roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing or not roots:
        raise PipelineError(f"corpus root {missing[0] if missing else '(none given)'} is not a folder")
    rows, taken = collect(kind, roots, limits)
    if not rows:
        raise PipelineError(f"no {kind} document found under {', '.join(str(r) for r in roots)}")
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    built = BuiltCorpus(out, metadata_path_for(out), len(rows), sum(len(r["text"]) for r in rows), file_sha256(out), taken)
    write_json(built.metadata_path, _metadata(kind, roots, limits, built, clock))
    return built


def _metadata(kind: str, roots: list[Path], limits: CorpusLimits, built: BuiltCorpus, clock: RunClock) -> dict[str, Any]:
    return {
        "phase": "build-corpus",
        "kind": kind,
        "output": str(built.path),
        "sha256": built.sha256,
        "n_documents": built.n_documents,
        "n_chars": built.n_chars,
        "document_unit": "top-level function or class" if kind == "code" else f"paragraph of >= {MIN_PARAGRAPH_CHARS} characters",
        "roots": [str(r) for r in roots],
        "limits": asdict(limits),
        "order": "files of all roots sorted, then taken in the order of sha256(ROOT_NAME/RELPATH); identical documents kept once",
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "n_files": len(built.files),
        "files": [asdict(f) for f in built.files],
        "started_at": clock.started_at,
        **clock.resources(),
    }


def build_corpus_cli(kind: str, out: str, roots: list[str] | None, max_chars: int | None) -> int:
    """Build, then print what went in and how to use it."""
    limits = CorpusLimits(max_total_chars=max_chars) if max_chars is not None else CorpusLimits()
    built = build_corpus(kind, out, [Path(r) for r in roots] if roots else None, limits)
    print(f"{kind} corpus: {built.n_documents} documents, {built.n_chars} characters from {len(built.files)} files "
          f"-> {built.path} (sha256 {built.sha256[:12]}...)")
    print(f"what went in: {built.metadata_path}")
    use = "run.py train-saes --corpus" if kind == "code" else "run.py phase 2 --general-corpus"
    print(f"use it with: {use} {built.path}")
    return 0
