"""docs/cli.md's option reference is generated from the parser (scripts/cli_reference.py) and kept up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ofa_grounding.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_matches_the_parser() -> None:
    script = _script()
    text = script.DOC.read_text(encoding="utf-8")
    assert script.BEGIN in text and script.END in text
    assert script.replace_section(text, script.render(build_parser())) == text, \
        "docs/cli.md's option reference is out of date: run python scripts/cli_reference.py"


def test_the_reference_follows_the_parser_and_keeps_the_prose() -> None:
    script = _script()
    parser = build_parser()
    before = script.render(parser)
    assert "| `--threads N` |" in before and "(default: 5e-05)" in before  # train's --lr, default appended
    predict = parser._subparsers._group_actions[0].choices["predict"]
    predict.add_argument("--new-option", default=3, help="a <new> | option")
    after = script.render(parser)
    assert after != before and "| `--new-option NEW_OPTION` | a &lt;new> \\| option (default: 3) |" in after
    doc = f"# prose\n\n{before}\n\nmore prose\n"
    assert script.replace_section(doc, after) == f"# prose\n\n{after}\n\nmore prose\n"
