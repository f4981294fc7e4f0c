"""The user's documentation holds together: a short README, links that resolve, no two sections of a name.

Why: the README is what a new user reads first, and a dead link or two
sections with one title (GitHub gives the second a ``-1`` anchor) sends them
to the wrong place without any error. These checks read the files as GitHub
renders them: links inside code are not links, and anchors are GitHub's
heading slugs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

README_MAX_LINES = 300

# Pages written on other branches at the same time as the README that links
# them; a link to one of these may dangle until those branches are merged.
# Once they exist the entry is inert (the link is checked like any other).

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def doc_files() -> list[Path]:
    files = [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    return [f for f in files if f.exists()]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link or heading in code is neither)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [m.group(2) for line in prose_lines(path.read_text()) if (m := HEADING.match(line))]


def links(path: Path) -> list[str]:
    prose = INLINE_CODE.sub("", "\n".join(prose_lines(path.read_text())))
    return LINK.findall(prose)


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file, or whose anchor in that file, does not exist."""
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: ...: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        root = REPO_ROOT.resolve()
        rel = dest.relative_to(root).as_posix() if dest.is_relative_to(root) else str(dest)
        if not dest.exists():
            broken.append(f"{target} (no such file: {rel})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in headings(dest)}:
            broken.append(f"{target} (no heading '{anchor}' in {rel})")
    return broken


def test_readme_reads_in_ten_minutes():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to a docs/ page"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_relative_links_resolve(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_no_two_sections_share_a_title(path):
    slugs = [slug(h) for h in headings(path)]
    assert sorted({s for s in slugs if slugs.count(s) > 1}) == []


def test_the_checks_catch_a_dead_link_and_a_bad_anchor(tmp_path, monkeypatch):
    """The link check itself can fail: a missing file and a missing heading are reported."""
    import tests.test_docs as module

    monkeypatch.setattr(module, "REPO_ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text("# Real page\n\n## Some `code`: here\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/real.md) [ok anchor](docs/real.md#some-code-here) [web](https://example.org/x)\n"
        "[dead](docs/missing.md) [bad anchor](docs/real.md#nowhere)\n"
        "`[in code](docs/also-missing.md)`\n```\n[in a fence](docs/fenced-missing.md)\n```\n"
    )
    assert module.broken_links(page) == [
        "docs/missing.md (no such file: docs/missing.md)",
        "docs/real.md#nowhere (no heading 'nowhere' in docs/real.md)",
    ]
