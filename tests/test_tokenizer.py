from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import parity_params
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


@pytest.mark.parametrize("ref", parity_params())
def test_matches_reference_ids(tok: OFATokenizer, ref: Path) -> None:
    cases = json.loads((ref / "cases.json").read_text(encoding="utf-8"))["cases"]
    assert cases
    for case in cases:
        assert tok.grounding_ids(case["text"], PROMPT, 256) == case["input_ids"], case["id"]


def test_missing_or_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        OFATokenizer(tmp_path / "vocab.json", ASSETS_DIR / "merges.txt")
    gpt2_ids = tmp_path / "vocab.json"
    gpt2_ids.write_text(json.dumps({"!": 0, "\"": 1}))
    with pytest.raises(ValueError, match="BART-id"):
        OFATokenizer(gpt2_ids, ASSETS_DIR / "merges.txt")


# --------------------------------------------------------------------------------------------------
# Chinese checkpoints: BERT WordPiece. Expected ids were produced by the reference (ModelScope 1.40.2's
# OFATokenizerZH plus its code/bin tokens and pre_caption, run in the peer venv) on this small vocab.txt.

ZH_VOCAB = (
    '<s> <pad> </s> <unk> <mask> [CLS] [SEP] " ？ ? , . 这 段 文 字 '
    "描 述 的 是 哪 个 区 域 红 色 圆 左 边 蓝 方 块 在 "
    "上 一 只 狗 hello hel ##lo ##l ##o world the man in blue shirt ##s "
    "a 1 ##2 2 cafe"
).split()
ZH_PROMPT = ' 这段文字" {} "描述的是哪个区域？'
ZH_CASES = [
    ('红色的圆',
     [12, 13, 14, 15, 7, 24, 25, 18, 26, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
    ('左边的蓝色方块',
     [12, 13, 14, 15, 7, 27, 28, 18, 29, 25, 30, 31, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
    ('the man in blue shirts',
     [12, 13, 14, 15, 7, 43, 44, 45, 46, 47, 48, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
    ('Hello World',
     [12, 13, 14, 15, 7, 37, 42, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
    ('hello,  一只狗 <bin_3>',
     [12, 13, 14, 15, 7, 37, 10, 34, 35, 36, 8249, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
    ('Café 12',
     [12, 13, 14, 15, 7, 53, 50, 51, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
    ('未知的字',
     [12, 13, 14, 15, 7, 3, 3, 18, 15, 7, 16, 17, 18, 19, 20, 21, 22, 23, 8]),
]


@pytest.fixture()
def zh_vocab(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(ZH_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("text, expected", ZH_CASES)
def test_chinese_wordpiece_matches_the_reference(zh_vocab: Path, text: str, expected: list[int]) -> None:
    from ofa_grounding.tokenizer import OFAChineseTokenizer

    tok = OFAChineseTokenizer(zh_vocab)
    assert (tok.vocab_size, tok.code_offset, tok.bin_offset) == (54 + 8192 + 1000, 54, 54 + 8192)
    ids, cut = tok.encode_query(text, ZH_PROMPT, 256)
    assert ids == [0, *expected, 2] and not cut


def test_chinese_vocabulary_errors(tmp_path: Path) -> None:
    from ofa_grounding.tokenizer import OFAChineseTokenizer

    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n这\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not an OFA Chinese vocabulary"):
        OFAChineseTokenizer(tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError):
        OFAChineseTokenizer(tmp_path / "missing.txt")


def test_a_chinese_model_directory_loads_predicts_and_converts(zh_vocab: Path, tmp_path: Path) -> None:
    import torch

    from conftest import TINY_CONFIG
    from ofa_grounding import Grounder
    from ofa_grounding.checkpoint import read_checkpoint, save_checkpoint
    from ofa_grounding.config import GenerationConfig, OFAConfig, PreprocessConfig
    from ofa_grounding.model import OFAModel, init_weights
    from ofa_grounding.tokenizer import OFAChineseTokenizer

    torch.manual_seed(0)
    vocab_size = 54 + 8192 + 1000
    model = init_weights(OFAModel(OFAConfig(**{**TINY_CONFIG, "vocab_size": vocab_size})), std=0.2).eval()
    preprocess = PreprocessConfig(patch_image_size=128, max_image_size=128, prompt=ZH_PROMPT, language="zh")
    generation = GenerationConfig(constraint_range=(vocab_size - 1000, vocab_size))
    out = save_checkpoint(tmp_path / "zh", model, zh_vocab.parent, preprocess, generation)
    assert (out / "vocab.txt").is_file() and not (out / "vocab.json").exists()
    ckpt = read_checkpoint(out)
    assert isinstance(ckpt.tokenizer, OFAChineseTokenizer) and ckpt.preprocess.prompt == ZH_PROMPT
    g = Grounder.from_pretrained(out)
    assert g.tokenize_text(ZH_CASES[0][0])[0] == [0, *ZH_CASES[0][1], 2]
    result = g.predict(Path(__file__).resolve().parents[1] / "examples" / "shapes.png", "红色的圆")
    assert all(vocab_size - 1000 <= t < vocab_size for t in result.tokens)
    again = read_checkpoint(save_checkpoint(tmp_path / "zh-hf", ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess,
                                            ckpt.generation, layout="hf"))
    assert isinstance(again.tokenizer, OFAChineseTokenizer) and again.preprocess.language == "zh"
