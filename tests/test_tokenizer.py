from __future__ import annotations

import json
from pathlib import Path

import pytest

from ofa_grounding.tokenizer import ASSETS_DIR, OFATokenizer, pre_caption

PROMPT = ' which region does the text " {} " describe?'


@pytest.fixture(scope="module")
def tok() -> OFATokenizer:
    return OFATokenizer.default()


def test_vocabulary_layout(tok: OFATokenizer) -> None:
    assert tok.vocab_size == 59457
    assert tok.bin_offset == 58457 and tok.code_offset == 50265
    assert [tok.id_to_token(i) for i in (0, 1, 2, 3, 50264)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tok.id_to_token(58457) == "<bin_0>" and tok.id_to_token(59456) == "<bin_999>"
    assert tok.id_to_token(50265) == "<code_0>"


def test_documented_example(tok: OFATokenizer) -> None:
    # from the reference's documentation (ofa-inference.md 1.7)
    assert tok.grounding_ids("the red circle on the left", PROMPT, 256) == [
        0, 61, 976, 473, 5, 2788, 22, 5, 1275, 7922, 15, 5, 314, 22, 6190, 116, 2]


@pytest.mark.parametrize(("raw", "clean"), [
    ("THE Red", "the red"),
    (",.!?*#:;~the circle", "the circle"),
    (" ,the circle", ",the circle"),  # a leading space stops the stripping
    ("top-left/bottom", "top left bottom"),
    ("<person> in red", "person in red"),
    ("a   b\t\tc", "a b c"),
    ("a\tb", "a\tb"),  # single tabs survive
    ("\nthe circle\n\n", "\nthe circle"),
    ("   ", ""),
    ("?!.", ""),
    ("one two three", "one two"),
])
def test_pre_caption(raw: str, clean: str) -> None:
    assert pre_caption(raw, 2 if raw == "one two three" else 256) == clean


def test_special_token_strings(tok: OFATokenizer) -> None:
    assert tok.encode(" the <bin_500> region")[-3:] == [1437, 58957, 976]  # lone Ġ before the bin
    assert 50264 in tok.encode(" a <mask> on")
    assert tok.encode(" a <mask>") == tok.encode(" a<mask>")  # <mask> swallows the space before it
    assert tok.encode("<bin_5000>")[0] != 58457 + 500  # not a token: plain BPE


def test_truncation(tok: OFATokenizer) -> None:
    ids = tok.grounding_ids(" ".join(["word"] * 400), PROMPT, 256)
    assert len(ids) == 258 and ids[0] == 0 and ids[-1] == 2


def test_matches_reference_ids(tok: OFATokenizer, reference_cases: list[dict]) -> None:
    for case in reference_cases:
        assert tok.grounding_ids(case["text"], PROMPT, 256) == case["input_ids"], case["id"]


def test_missing_or_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        OFATokenizer(tmp_path / "vocab.json", ASSETS_DIR / "merges.txt")
    gpt2_ids = tmp_path / "vocab.json"
    gpt2_ids.write_text(json.dumps({"!": 0, "\"": 1}))
    with pytest.raises(ValueError, match="BART-id"):
        OFATokenizer(gpt2_ids, ASSETS_DIR / "merges.txt")
