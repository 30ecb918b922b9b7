"""Every relative link in the user documentation resolves: the file exists and, for `#anchor` links into a
Markdown file, a heading there has that anchor (GitHub's slugs). Covers README.md, docs/ (experiments
included) and the bundled model card. External links (http, https, mailto) are not checked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def doc_files(root: Path = ROOT) -> list[Path]:
    card = root / "src" / "ofa_grounding" / "models" / "demo" / "README.md"
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")), *([card] if card.is_file() else [])]


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        if m := HEADING.match(line):
            s = slug(m.group(2))
            out.add(f"{s}-{seen[s]}" if s in seen else s)
            seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    """'file:line: target (why)' for each relative link that does not resolve."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for path in files:
        for n, line in _prose_lines(path):
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, fragment = target.partition("#")
                resolved = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(root)}:{n}: {target}"
                if not resolved.exists():
                    problems.append(f"{where} (no such file)")
                elif fragment and resolved.suffix == ".md":
                    if fragment not in cache.setdefault(resolved, anchors(resolved)):
                        problems.append(f"{where} (no heading with that anchor in {resolved.name})")
    return problems


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    files = doc_files()
    assert len(files) > 10  # README.md and the pages under docs/
    assert broken_links(files) == []


def test_slugs_follow_github() -> None:
    assert slug("`ofa-ground eval`: usage and data formats") == "ofa-ground-eval-usage-and-data-formats"
    assert slug("Where to add ...") == "where-to-add-"
    assert slug('Confidence and "not found" (stage 2)') == "confidence-and-not-found-stage-2"
    assert slug("Soak: 5,000 requests, 32 clients (2026-12-04)") == "soak-5000-requests-32-clients-2026-12-04"
    assert slug("The [demo](demo.md) model") == "the-demo-model"


def test_the_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Same\n\n## Same\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#same-1) [ok](#top) [web](https://example.com/x#y)\n"
        "[gone](docs/b.md) [bad](docs/a.md#same-2) `[code](docs/c.md)`\n"
        "```\n[fenced](docs/d.md)\n```\n\n# Top\n", encoding="utf-8")
    problems = broken_links(doc_files(tmp_path), tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md (no such file)", "docs/a.md#same-2 (no heading with that anchor in a.md)"]
