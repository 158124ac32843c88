"""Docs and docstrings cite only files that are in the repository.

A reader of the repo must be able to follow every reference: the design notes
that once lived outside it (the product decisions, the data notes, the model
family's reference design) are now ``docs/design.md``, ``docs/data.md`` and
``docs/trm-titans.md``. These tests fail when a tracked file cites the old
out-of-repo names, a ``docs/*.md`` file that does not exist, a section title
that the cited page does not have, or a relative Markdown link that is broken.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: File kinds whose text can cite a doc (source, docs, scripts, configs).
SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".txt", ".cfg"}
#: Names of notes that live outside the repository (built by parts so this file does not cite them).
OUTSIDE = re.compile(
    "|".join(
        [
            r"\b" + "DESIGN" + r"\.md\b",
            r"\b" + "DATA" + r"\.md\b",
            r"\b" + "ARCHITECTURE-TRM-TITANS" + r"\.md\b",
            r"(?:\.\./)+" + "shared" + r"\b",
            r"/work/" + "shared" + r"\b",
        ]
    )
)
#: ``docs/<page>.md`` optionally followed by a quoted section title: ``docs/design.md "Evolution"``.
DOC_CITATION = re.compile(r"""\bdocs/([\w.-]+?\.md)\b(?:[`'),:;]*\s+"([^"\n]+)")?""")
#: Markdown inline links ``[text](target)``.
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


@cache
def tracked_files() -> tuple[Path, ...]:
    """The repository's tracked text files (git's list; a plain walk when git is unavailable)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "runs", "node_modules", "__pycache__", ".mypy_cache"}
        paths = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    return tuple(sorted(p for p in paths if p.suffix in SUFFIXES and p.is_file()))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def headings(doc: Path) -> tuple[str, ...]:
    """The text of every Markdown heading of ``doc`` (outside fenced code blocks)."""
    found, fenced = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return tuple(found)


@cache
def anchors(doc: Path) -> frozenset[str]:
    """Every link target inside ``doc``: heading slugs and explicit ``<a id=...>`` anchors."""
    explicit = re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", doc.read_text(encoding="utf-8"))
    return frozenset([_slug(h) for h in headings(doc)] + explicit)


def _where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, pos) + 1}"


def test_files_are_found() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in tracked_files()}
    assert {"README.md", "docs/design.md", "docs/data.md", "evomerge/__init__.py"} <= files


def test_no_citation_of_notes_outside_the_repo() -> None:
    bad = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        bad += [f"{_where(path, text, m.start())}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not bad, (
        "cite docs/design.md, docs/data.md or docs/trm-titans.md instead:\n" + "\n".join(bad)
    )


def test_cited_docs_and_sections_exist() -> None:
    bad = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in DOC_CITATION.finditer(text):
            doc, section = ROOT / "docs" / m.group(1), m.group(2)
            where = _where(path, text, m.start())
            if not doc.is_file():
                bad.append(f"{where}: docs/{m.group(1)} does not exist")
            elif section and not any(h.startswith(section) for h in headings(doc)):
                bad.append(f'{where}: docs/{m.group(1)} has no section "{section}"')
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "doc",
    [p for p in tracked_files() if p.suffix == ".md"],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_relative_markdown_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    bad = []
    for m in MD_LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        where = _where(doc, text, m.start())
        if not dest.exists():
            bad.append(f"{where}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: {target}: no such section in {dest.name}")
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The patterns really match the citations they exist to forbid (and not docs/ names)."""
    assert OUTSIDE.search("see " + "DESIGN" + ".md")
    assert OUTSIDE.search("(../../" + "shared/DATA" + ".md)")
    assert not OUTSIDE.search("see docs/design.md and docs/data.md")
    m = DOC_CITATION.search('(docs/design.md "Evolution")')
    assert m and m.groups() == ("design.md", "Evolution")
    assert "evolution" in anchors(ROOT / "docs" / "design.md")
    doc = tmp_path / "x.md"
    doc.write_text("# A title, with `code`\n\n<a id='own'></a>\n```\n# not a heading\n```\n")
    assert anchors(doc) == {"a-title-with-code", "own"}
