"""`Grounder`: image + description(s) -> box(es). The one entry point the CLI and services use.

Data flows one way: load image -> preprocess (image.py, tokenizer.py) -> encoder once per query ->
beam search with a cached decoder (generation.py) -> bins -> pixel boxes (image.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from PIL import Image

from .checkpoint import load_checkpoint
from .config import GenerationConfig, PreprocessConfig
from .generation import Hypothesis, beam_search, open_vocab_ids
from .image import DEFAULT_MAX_PIXELS, ImageInput, bins_to_box, image_to_tensor, load_image, resize_ratios
from .model import EncoderOutput, OFAModel
from .tokenizer import OFATokenizer, pad_ids

__all__ = ["DEFAULT_MODEL", "Alternative", "Grounder", "GroundingResult"]

# Our demo model, trained on the synthetic benchmark and shipped in the package (see the README).
DEFAULT_MODEL = Path(__file__).parent / "models" / "demo"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alternative:
    """Another beam's box: same fields as the result, without the text."""

    box: tuple[float, float, float, float]
    score: float
    confidence: float
    tokens: tuple[int, int, int, int]


@dataclass(frozen=True)
class GroundingResult:
    """One description's answer.

    box: (x0, y0, x1, y1) in original-image pixels (after EXIF orientation), float32 values; not clipped
        to the image and not reordered, exactly as the reference decodes them.
    score: the best beam's score as the reference's generator computes it: the mean log-probability of
        its 5 tokens (4 coordinates + end-of-sequence).
    confidence: exp(mean log-probability of the 4 coordinate tokens), i.e. the geometric mean of the
        probabilities the model gave each coordinate bin, in (0, 1].
    tokens: the 4 generated token ids (bins are ids 58457..59456 for OFA's vocabulary).
    alternatives: the other beams, best first.
    """

    text: str
    box: tuple[float, float, float, float]
    score: float
    confidence: float
    tokens: tuple[int, int, int, int]
    image_size: tuple[int, int]  # (width, height)
    alternatives: tuple[Alternative, ...] = field(default=())
    truncated: bool = False  # the text was cut to the model's source length

    def to_dict(self, alternatives: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "box": list(self.box), "score": self.score,
                               "confidence": self.confidence, "tokens": list(self.tokens)}
        if alternatives:
            out["alternatives"] = [{**asdict(a), "box": list(a.box), "tokens": list(a.tokens)}
                                   for a in self.alternatives]
        return out


def _confidence(h: Hypothesis) -> float:
    return math.exp(sum(h.positional_scores[:4]) / 4)


class Grounder:
    """A loaded grounding model with its tokenizer and settings.

    >>> g = Grounder.from_pretrained("path/to/model_dir")
    >>> r = g.predict("photo.jpg", "the man in the blue shirt")
    >>> r.box, r.confidence
    """

    def __init__(self, model: OFAModel, tokenizer: OFATokenizer, preprocess: PreprocessConfig | None = None,
                 generation: GenerationConfig | None = None, device: str | torch.device | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, batch_size: int = 8, fuse: bool = True) -> None:
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} requested but CUDA is not available")
        self.model = model.eval().to(self.device)
        if fuse:  # BatchNorm folded into the convolutions, channels_last: the model becomes inference-only
            self.model.encoder.embed_images.fuse_for_inference_()
        self.tokenizer = tokenizer
        self.preprocess = preprocess or PreprocessConfig()
        self.generation = generation or GenerationConfig()
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self._vocab_ids = open_vocab_ids(self.generation, model.config.vocab_size, self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device | None = None,
                        **kwargs: Any) -> Grounder:
        """Load a model directory (ModelScope layout or ours; see `checkpoint.load_checkpoint`).

        Without a path: the demo model shipped with the package (`DEFAULT_MODEL`).
        """
        ckpt = load_checkpoint(DEFAULT_MODEL if path is None else path)
        return cls(ckpt.model, ckpt.tokenizer, ckpt.preprocess, ckpt.generation, device=device, **kwargs)

    # -- inputs ---------------------------------------------------------------------------------------

    def encode_text(self, text: str) -> tuple[list[int], bool]:
        """Encoder ids for one description, and whether the description had to be truncated."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self.tokenizer.encode_query(text, self.preprocess.prompt, self.preprocess.max_src_length)

    def load_image(self, image: ImageInput) -> Image.Image:
        return load_image(image, self.max_pixels)

    # -- prediction -----------------------------------------------------------------------------------

    @overload
    def predict(self, image: ImageInput, text: str) -> GroundingResult: ...
    @overload
    def predict(self, image: ImageInput, text: Sequence[str]) -> list[GroundingResult]: ...

    def predict(self, image: ImageInput, text: str | Sequence[str]) -> GroundingResult | list[GroundingResult]:
        """Ground one description (-> a result) or several (-> a list, in order) in one image.

        `image`: a path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array. Several descriptions
        share the image's loading and preprocessing and are decoded in batches.
        """
        texts = [text] if isinstance(text, str) else list(text)
        rgb = self.load_image(image)
        encoded = [self.encode_text(t) for t in texts]
        for t, (_, cut) in zip(texts, encoded):
            if cut:
                log.warning("description truncated to %d tokens: %.60r...", self.preprocess.max_src_length, t)
        pixels = self.image_tensor(rgb)
        results: list[GroundingResult] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            enc, src_len = self.encode(pixels, [ids for ids, _ in encoded[chunk]])
            results += self.decode(enc, src_len, rgb.size, texts[chunk], [cut for _, cut in encoded[chunk]])
        return results[0] if isinstance(text, str) else results

    def image_tensor(self, rgb: Image.Image) -> torch.Tensor:
        """(3, S, S) normalised pixels of an RGB image, as the model expects them."""
        return image_to_tensor(rgb, self.preprocess.patch_image_size, self.preprocess.mean, self.preprocess.std)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, token_ids: list[list[int]]) -> tuple[EncoderOutput, int]:
        """Backbone once for the image, then the encoder over each description (right-padded batch)."""
        input_ids = pad_ids(token_ids, self.model.config.pad_token_id)
        B, L = input_ids.shape
        image_embeds, grid = self.model.encoder.embed_image(pixels.unsqueeze(0).to(self.device))
        return self.model.encoder(input_ids.to(self.device), image_embeds.expand(B, -1, -1), grid), L

    @torch.inference_mode()
    def decode(self, enc: EncoderOutput, src_len: int, size_wh: tuple[int, int], texts: list[str],
               truncated: list[bool]) -> list[GroundingResult]:
        """Beam search for each encoded description, then bins -> boxes in original-image pixels."""
        hyps = self._search(enc, len(texts), src_len)
        ratios = torch.tensor([resize_ratios(size_wh, self.preprocess.patch_image_size)], dtype=torch.float32)
        results = []
        for text, cut, sample in zip(texts, truncated, hyps):
            tokens = torch.tensor([h.tokens[:4] for h in sample], dtype=torch.long)
            boxes = bins_to_box(tokens - self.tokenizer.bin_offset, ratios.expand(len(sample), 2),
                                self.generation.num_bins, self.preprocess.max_image_size).tolist()
            alts = tuple(Alternative(tuple(b), h.score, _confidence(h), tuple(h.tokens[:4]))
                         for b, h in zip(boxes[1:], sample[1:]))
            best = sample[0]
            results.append(GroundingResult(text, tuple(boxes[0]), best.score, _confidence(best),
                                           tuple(best.tokens[:4]), size_wh, alts, cut))
        return results

    def _search(self, enc: EncoderOutput, batch: int, src_len: int) -> list[list[Hypothesis]]:
        gen = self.generation
        max_steps = int(gen.max_len_a * src_len + gen.max_len_b) + 1
        decoder = self.model.decoder
        state = decoder.start(enc, max_steps, self._vocab_ids)

        def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
            if reorder is not None:
                decoder.reorder(state, reorder)
            return decoder.step(tokens, state)

        return beam_search(step, batch, gen, src_len, self.model.config.vocab_size, self._vocab_ids,
                           device=self.device, max_positions=self.model.config.max_position_embeddings)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, list]:
        """ModelScope-compatible call: {"image", "text"} -> {"boxes": [[x0, y0, x1, y1]], "scores": [confidence]}."""
        if not isinstance(inputs, dict) or "image" not in inputs or "text" not in inputs:
            raise TypeError('expected a dict with "image" and "text" keys')
        result = self.predict(inputs["image"], str(inputs["text"]))
        return {"boxes": [list(result.box)], "scores": [result.confidence]}
