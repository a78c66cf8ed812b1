"""The README and the docs/ pages stay navigable: every relative link and every repository path they name exists.

A link is ``[text](target)`` outside code; its target is a file relative to the page, optionally with a
``#fragment`` that must be one of the target page's headings (GitHub's anchor rule). A repository path is a
code span such as ``stages/train.py`` under one of the project's source folders: when code moves, the prose
that names the old place fails here instead of misleading a reader.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Fenced code blocks (``` or ~~~) and inline code spans: links and headings inside them are not markdown.
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# Folders whose files the prose names as places in this repository (outputs such as models/ are not checked).
_SOURCE_DIRS = ("tcl/", "stages/", "pipelines/", "benchmarks/", "tests/", "configs/", "docs/")
# Files of the official code (kakaobrain/tcl) that the pages cite and that share a folder name with ours.
_OFFICIAL_CODE = {"configs/eval.yml"}


def pages(root: Path = REPO) -> list[Path]:
    """The documentation pages: README.md and every docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The markdown text without fenced blocks and code spans (each replaced by blanks)."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return _CODE_SPAN.sub(" ", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: code and link markup dropped, lower case, no punctuation, spaces → -."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 suffixes for repeated headings."""
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    """``'<page>: <target> (why)'`` for each relative link of a page whose file or heading does not exist."""
    problems = []
    for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...: not ours to check
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: {target} (no file {path})")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            problems.append(f"{page.name}: {target} (no heading #{fragment} in {file.name})")
    return problems


def missing_paths(page: Path, root: Path = REPO) -> list[str]:
    """``'<page>: <path>'`` for each code span naming a file or folder of the repository that does not exist."""
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    problems = []
    for span in {m.group(2).strip() for m in _CODE_SPAN.finditer(text)}:
        if " " in span or not span.startswith(_SOURCE_DIRS) or any(c in span for c in "*{<$") \
                or span in _OFFICIAL_CODE:
            continue
        if not (root / span.split(":")[0]).exists():
            problems.append(f"{page.name}: {span}")
    return sorted(problems)


def test_every_relative_link_resolves():
    problems = [p for page in pages() for p in broken_links(page)]
    assert problems == []


def test_every_named_repository_path_exists():
    problems = [p for page in pages() for p in missing_paths(page)]
    assert problems == []


def test_the_checks_see_broken_links_anchors_and_paths(tmp_path):
    """The checks above would fail: a missing file, a missing heading and a stale path are each reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## The `tcl predict` command\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# R\n\n[ok](docs/a.md) [ok](docs/a.md#the-tcl-predict-command) [ok](#r) [web](https://x.org/#y)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) `[not a link](docs/c.md)`\n\n"
        "```\n[in a fence](docs/d.md)\n```\n\n`tcl/old.py` and `docs/a.md` and `stages/*.py`\n",
        encoding="utf-8")
    readme = tmp_path / "README.md"
    assert broken_links(readme) == ["README.md: docs/b.md (no file docs/b.md)",
                                    "README.md: docs/a.md#nope (no heading #nope in a.md)"]
    assert missing_paths(readme, root=tmp_path) == ["README.md: tcl/old.py"]


def test_github_anchor_rule():
    assert slug("Download stage: caption/URL lists → webdataset shards") == \
        "download-stage-captionurl-lists--webdataset-shards"
    assert slug("The built-in world's defaults, and where they come from") == \
        "the-built-in-worlds-defaults-and-where-they-come-from"
    assert slug("The frozen CLIP (`stages/prepare_clip.py`)") == "the-frozen-clip-stagesprepare_clippy"


def test_readme_opens_with_the_two_commands():
    """The README's first code block is exactly the two set-up commands (.ci/ runs the second one)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first = _FENCE.search(text).group(0).splitlines()
    assert first[1:-1] == ["make run", "make test"]
    assert text.index(first[0]) < text.index("\n## ")  # before any section


def test_readme_stays_an_overview():
    """The README is the overview (issue 13: at most ~200 lines); details belong on the docs/ pages it links."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the details into a docs/ page"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", _prose("\n".join(lines))))
    assert linked == {f"docs/{p.name}" for p in pages()[1:]}  # every page reachable from the README
