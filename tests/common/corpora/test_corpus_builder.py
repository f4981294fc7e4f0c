"""``run.py build-corpus``: deterministic offline corpora that SAE training and Phase 2's filter both read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.corpora.builder import CorpusLimits, build_corpus, code_documents, metadata_path_for
from common.corpora.files import read_documents
from common.datadir import file_sha256
from common.errors import PipelineError
from common.saes.training import read_corpus_file
from phase2_sae_analysis.general_filter import _read_local_corpus
from tests.helpers import REPO_ROOT

LICENCE = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software " * 3
MODULE = '''import os


@decorated
def first(x):
    """Return x doubled: a docstring the code corpus keeps."""
    return 2 * x


class Second:
    """A class with a method."""

    def method(self):
        return os.sep
'''


def _tree(root: Path) -> Path:
    """A small installation: two packages with sources, a licence, a README and a broken module."""
    (root / "pkg_a").mkdir(parents=True)
    (root / "pkg_a" / "core.py").write_text(MODULE)
    (root / "pkg_a" / "broken.py").write_text("def (:\n")
    (root / "pkg_a" / "LICENSE").write_text(f"{LICENCE}\n\nshort line\n\n{LICENCE.upper()}\n")
    (root / "pkg_b").mkdir()
    (root / "pkg_b" / "util.py").write_text("def helper():\n    return 1\n\n\ndef other():\n    return 2\n")
    (root / "pkg_b" / "README.md").write_text("# pkg_b\n\n" + "This package helps with things. " * 10 + "\n")
    (root / "pkg_b" / "copy.py").write_text(MODULE)  # the same definitions again: kept once
    (root / "pkg_b" / "__pycache__").mkdir()
    (root / "pkg_b" / "__pycache__" / "cached.py").write_text("def hidden():\n    pass\n")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_code_documents_are_whole_top_level_definitions():
    docs = code_documents(MODULE, max_doc_chars=10_000)
    assert docs[0].startswith("@decorated\ndef first(x):") and "docstring the code corpus keeps" in docs[0]
    assert docs[1].startswith("class Second:") and docs[1].rstrip().endswith("return os.sep")
    assert len(docs) == 2
    assert code_documents("def (:\n", 100) == []
    assert code_documents(MODULE, max_doc_chars=12)[0] == "@decorated\nd"


@pytest.mark.parametrize("kind", ["code", "text"])
def test_build_is_deterministic_and_metadata_matches_content(tmp_path, kind):
    root = _tree(tmp_path / "site")
    first = build_corpus(kind, tmp_path / "a" / f"{kind}.jsonl", [root])
    second = build_corpus(kind, tmp_path / "b" / f"{kind}.jsonl", [root])
    assert first.path.read_bytes() == second.path.read_bytes()
    meta = json.loads(metadata_path_for(first.path).read_text())
    rows = _rows(first.path)
    assert meta["sha256"] == file_sha256(first.path) == first.sha256
    assert meta["n_documents"] == len(rows) and meta["n_chars"] == sum(len(r["text"]) for r in rows)
    assert sum(f["documents"] for f in meta["files"]) == len(rows)
    assert sum(f["chars"] for f in meta["files"]) == meta["n_chars"]
    assert {f["source"] for f in meta["files"]} == {r["source"] for r in rows}
    assert meta["roots"] == [str(root)] and meta["kind"] == kind
    assert len({r["text"] for r in rows}) == len(rows)  # identical documents kept once
    sources = {r["source"] for r in rows}
    if kind == "code":
        assert len(rows) == 4  # first, Second, helper, other; copy.py repeats core.py; broken.py and __pycache__ give none
        assert not any("__pycache__" in s or "broken" in s for s in sources)
    else:
        assert sources == {"site/pkg_a/LICENSE", "site/pkg_b/README.md"}
        assert not any(r["text"] == "short line" for r in rows)  # paragraphs under the minimum length are dropped


@pytest.mark.parametrize("kind", ["code", "text"])
def test_both_readers_take_the_same_documents(tmp_path, kind):
    built = build_corpus(kind, tmp_path / f"{kind}.jsonl", [_tree(tmp_path / "site")])
    texts = [r["text"] for r in _rows(built.path)]
    assert read_corpus_file(built.path) == texts  # run.py train-saes --corpus
    assert _read_local_corpus(built.path) == (texts, "jsonl rows (field text)")  # phase 2 --general-corpus


def test_limits_cap_files_and_total(tmp_path):
    root = _tree(tmp_path / "site")
    small = build_corpus("code", tmp_path / "small.jsonl", [root], CorpusLimits(max_total_chars=1))
    assert small.n_documents == 1
    capped = build_corpus("code", tmp_path / "capped.jsonl", [root], CorpusLimits(max_file_chars=60))
    assert all(f.chars <= 60 for f in capped.files)


def test_shared_reader_keeps_both_callers_messages(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"other": 1}\n')
    with pytest.raises(PipelineError, match=r'^--general-corpus .*bad.jsonl line 2 has no string field "text"$'):
        _read_local_corpus(bad)
    with pytest.raises(PipelineError, match=r"^corpus .*bad.jsonl line 2 has no string field"):
        read_corpus_file(bad)
    mbpp_row = {"text": "Write a function.", "code": "def f():\n    return 1", "test_list": ["assert f() == 1"]}
    rows = tmp_path / "mbpp.jsonl"
    rows.write_text(json.dumps(mbpp_row) + "\n")
    assert read_documents(rows, "x")[0] == ["Write a function."]
    assert read_corpus_file(rows)[0].endswith("def f():\n    return 1")  # SAE training reads prompt + code


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), "build-corpus", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_builds_from_the_installed_python(tmp_path):
    out = tmp_path / "code.jsonl"
    done = _cli("--kind", "code", "--out", str(out), "--max-chars", "20000")
    assert done.returncode == 0, done.stderr
    meta = json.loads(metadata_path_for(out).read_text())
    assert meta["sha256"] == file_sha256(out) and 20_000 <= meta["n_chars"] < 20_000 + CorpusLimits().max_doc_chars
    assert f"{meta['n_documents']} documents" in done.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "suffix"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.py").write_text("x = 1\n")  # a module without a definition gives no document
    root = {"missing": tmp_path / "nowhere", "empty": empty, "suffix": empty}[case]
    out = tmp_path / ("out.txt" if case == "suffix" else "out.jsonl")
    done = _cli("--kind", "code", "--out", str(out), "--root", str(root))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert {"missing": "is not a folder", "empty": "no code document", "suffix": "must end in .jsonl"}[case] in done.stderr
    assert not out.exists() and not metadata_path_for(out).exists()
