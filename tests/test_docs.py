"""The documents point at files that exist, and no file of the project cites one outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTS.append(ROOT / "benchmarks" / "README.md")
# a repository path: one of the top folders, then path characters (a trailing dot or slash is text)
REPO_PATH = re.compile(r"(?<![\w./-])((?:src|tests|docs|benchmarks|scripts)/(?:[\w./-]*\w)?)")
SOURCES = [p for d in ("src", "tests", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")]


def repo_paths(text: str) -> set[str]:
    """Every repository path a document mentions (src/..., tests/..., docs/..., ...)."""
    return {m.rstrip("/") for m in REPO_PATH.findall(text) if "*" not in m and "<" not in m}


def test_the_pattern_finds_paths_and_leaves_prose():
    text = "see docs/design.md. The report (tests/report/test_report.py), docs/, not WS/out/x.png"
    assert repo_paths(text) == {"docs/design.md", "tests/report/test_report.py", "docs"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_document_mentions_exists(document):
    missing = sorted(p for p in repo_paths(document.read_text()) if not (ROOT / p).exists())
    assert not missing, f"{document.name} mentions paths that do not exist: {missing}"


def test_the_readme_links_the_design_document():
    assert "(docs/design.md)" in (ROOT / "README.md").read_text()


def test_no_source_file_cites_a_file_outside_the_repository():
    outside = re.compile(r"/work/|\bDESIGN\.md\b|STYLE\.md")
    cites = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in SOURCES
        if p != Path(__file__)
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not cites, "\n".join(cites)
