"""Text side: caption normalisation, the grounding prompt, and OFA's two vocabularies.

- English checkpoints: GPT-2 byte-level BPE in BART/fairseq ids (0 <s>, 1 <pad>, 2 </s>, 3 <unk>,
  dict.txt order, 50264 <mask>), then 8192 `<code_i>` (50265..58456) and 1000 `<bin_i>`
  (58457..59456). The vocabulary shipped in `assets/` is already in that id space (assets/README.md).
- Chinese checkpoints (`language: zh`): BERT WordPiece over the checkpoint's `vocab.txt` (lower-casing,
  accent stripping, every CJK character its own word, as the reference's `OFATokenizerZH`), then the same
  8192 code and 1000 bin tokens after the vocabulary.
Both run on the Hugging Face `tokenizers` library; neither BPE nor WordPiece is re-implemented here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

__all__ = ["ASSETS_DIR", "NUM_BINS", "NUM_CODES", "OFAChineseTokenizer", "OFATokenizer", "load_tokenizer", "pad_ids",
           "pre_caption"]

ASSETS_DIR = Path(__file__).parent / "assets"
NUM_CODES = 8192
NUM_BINS = 1000
BOS, PAD, EOS, UNK = 0, 1, 2, 3
_SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")


def pre_caption(caption: str, max_words: int) -> str:
    """OFA's caption cleaning, step for step (the reference's `pre_caption`).

    Lowercase; strip leading `,.!?*#:;~`; `-` and `/` become spaces; `<person>` becomes `person`;
    runs of 2+ whitespace become one space (single tabs/newlines survive); strip trailing newlines,
    then surrounding spaces; keep the first `max_words` space-separated words.
    """
    caption = caption.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def pad_ids(sequences: list[list[int]], pad_id: int = PAD) -> torch.Tensor:
    """Right-pad id lists into a (B, L) int64 tensor."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), pad_id, dtype=torch.long)
    for i, ids in enumerate(sequences):
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


class _TokenizerBase:
    """What the model needs from a tokenizer; subclasses build `self._tok` and the id layout."""

    _tok: Tokenizer
    bos_id, pad_id, eos_id = BOS, PAD, EOS
    code_offset: int
    bin_offset: int
    vocab_size: int

    def _add_codes_and_bins(self, first_id: int, vocab_file: str | Path) -> None:
        extra = [f"<code_{i}>" for i in range(NUM_CODES)] + [f"<bin_{i}>" for i in range(NUM_BINS)]
        self._tok.add_tokens([AddedToken(t, normalized=False) for t in extra])
        self.code_offset = first_id
        self.bin_offset = first_id + NUM_CODES
        self.vocab_size = self.bin_offset + NUM_BINS
        if self._tok.get_vocab_size() != self.vocab_size or self._tok.token_to_id("<bin_0>") != self.bin_offset:
            raise ValueError(f"{vocab_file}: unexpected vocabulary layout ({self._tok.get_vocab_size()} ids)")

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Token ids of `text` (no BOS/EOS), cut to the first `max_tokens`."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ids if max_tokens is None else ids[:max_tokens]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def grounding_ids(self, text: str, prompt: str, max_src_length: int) -> list[int]:
        """Encoder ids for a grounding query: [<s>] + tokens(prompt with the cleaned caption)[:max] + [</s>]."""
        return self.encode_query(text, prompt, max_src_length)[0]

    def encode_query(self, text: str, prompt: str, max_src_length: int) -> tuple[list[int], bool]:
        """`grounding_ids`, and whether the text was cut (to max_src_length words, then tokens)."""
        caption = pre_caption(text, max_src_length)
        ids = self.encode(prompt.format(caption))
        cut = len(ids) > max_src_length or caption != pre_caption(text, len(text) + 1)
        return [self.bos_id, *ids[:max_src_length], self.eos_id], cut


class OFATokenizer(_TokenizerBase):
    """Byte-level BPE over a BART-id `vocab.json` + GPT-2 `merges.txt`, plus OFA's code and bin tokens.

    Literal special-token strings inside user text (`<s>`, `<mask>`, `<bin_12>` ...) become their single
    ids, as in the reference's slow tokenizer; `<mask>` also swallows the whitespace before it.
    """

    def __init__(self, vocab_file: str | Path, merges_file: str | Path) -> None:
        for path in (vocab_file, merges_file):
            if not Path(path).is_file():
                raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{vocab_file}: not a JSON vocabulary ({exc})") from None
        if not isinstance(vocab, dict) or [vocab.get(t) for t in _SPECIAL[:3]] != [BOS, PAD, EOS]:
            raise ValueError(f"{vocab_file}: not a BART-id vocabulary (<s>=0, <pad>=1, </s>=2 expected); "
                             "GPT-2's own encoder.json must be remapped through fairseq's dict.txt first")
        self.bpe_size = len(vocab)
        merges = []
        for line in Path(merges_file).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#version"):
                a, _, b = line.partition(" ")
                merges.append((a, b))
        tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, normalized=False) for t in _SPECIAL]
                               + [AddedToken("<mask>", lstrip=True, normalized=False)])
        self._tok = tok
        self._add_codes_and_bins(self.bpe_size, vocab_file)

    @classmethod
    def from_dir(cls, directory: str | Path) -> OFATokenizer:
        directory = Path(directory)
        return cls(directory / "vocab.json", directory / "merges.txt")

    @classmethod
    def default(cls) -> OFATokenizer:
        """The English OFA vocabulary shipped with the package."""
        return cls.from_dir(ASSETS_DIR)


class OFAChineseTokenizer(_TokenizerBase):
    """BERT WordPiece over a `vocab.txt` (OFA's Chinese checkpoints), plus the code and bin tokens.

    As the reference's `OFATokenizerZH` (a BERT tokenizer with `<s> <pad> </s> <unk> <mask>` specials):
    text is cleaned, lower-cased with accents stripped, split on whitespace and punctuation with every
    CJK character a word of its own, then WordPiece'd (longest match first, `##` continuations, words
    over 100 characters -> `<unk>`). Special and added tokens written literally in the text stay whole.
    """

    def __init__(self, vocab_file: str | Path) -> None:
        if not Path(vocab_file).is_file():
            raise FileNotFoundError(f"tokenizer file not found: {vocab_file}")
        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        vocab: dict[str, int] = {}
        for token in (line.rstrip("\n") for line in lines):
            vocab.setdefault(token, len(vocab))
        missing = [t for t in (*_SPECIAL, "<mask>") if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: not an OFA Chinese vocabulary (missing {', '.join(missing)})")
        tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens([AddedToken(t, normalized=False) for t in (*_SPECIAL, "<mask>")])
        self._tok = tok
        self.bos_id, self.pad_id, self.eos_id = vocab["<s>"], vocab["<pad>"], vocab["</s>"]
        self._add_codes_and_bins(len(vocab), vocab_file)


def load_tokenizer(directory: str | Path, language: str = "en") -> OFATokenizer | OFAChineseTokenizer:
    """The tokenizer files of a model directory: vocab.json + merges.txt (en), vocab.txt (zh)."""
    directory = Path(directory)
    if language in ("zh", "cn"):
        return OFAChineseTokenizer(directory / "vocab.txt")
    return OFATokenizer.from_dir(directory)
