"""`Grounder`: image + description(s) -> box(es). The one entry point the CLI and services use.

Data flows one way: load image -> preprocess (image.py, tokenizer.py) -> backbone once per image (kept
in a small content-keyed cache) -> encoder per description -> beam search with a cached decoder
(generation.py) -> bins -> pixel boxes (image.py). Descriptions of one or many images are batched
together; a batch gives the same tokens and boxes as one-by-one calls. The model is reached only through
its inference interface (`model.GroundingModel`); the Grounder never changes a model it is given.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, overload

import torch
from PIL import Image

from .calibration import Calibration
from .config import GenerationConfig, PreprocessConfig
from .data import check_unicode
from .generation import Hypothesis, allowed_token_ids, beam_search
from .hardware import use_ieee_fp32_on_cuda
from .image import DEFAULT_MAX_PIXELS, ImageInput, bins_to_box, image_to_tensor, is_null_box, load_image, resize_ratios
from .loader import DEFAULT_MODEL, load_model
from .metrics import box_overlap
from .model import DTYPES, PRECISIONS, EncoderOutput, GroundingModel, OFAModel, precision_argument
from .tokenizer import OFATokenizer, pad_ids
from .zoom import Zoom

__all__ = ["DEFAULT_MODEL", "DTYPES", "PRECISIONS", "Alternative", "FeatureCache", "Grounder", "GroundingResult",
           "Zoom"]

log = logging.getLogger(__name__)

Features = tuple[torch.Tensor, tuple[int, int]]  # an image's tokens (P, d) and their grid (h, w)


class FeatureCache:
    """LRU cache of backbone outputs (tokens and grid) keyed by image content, bounded in bytes (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[bytes, Features] = OrderedDict()

    @staticmethod
    def key(rgb: Image.Image) -> bytes:
        digest = hashlib.blake2b(rgb.tobytes(), digest_size=20)
        digest.update(f"{rgb.mode}{rgb.size}".encode())
        return digest.digest()

    def get(self, key: bytes) -> Features | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: Features) -> None:
        size = value[0].numel() * value[0].element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


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
    confidence: with a calibration (`calibrated` True: the model directory's grounding.json has one, see
        `ofa-ground calibrate`), the probability that the answer is right: for a box, that it overlaps the
        described object with IoU >= 0.5; for a "not found" answer from the model (the null box, or an empty
        description), that the image does not contain the object. An answer marked not found only by
        `min_confidence` keeps its box's probability. Without a calibration (`calibrated` False) it equals
        `raw_confidence`: comparable between answers of one model, but no probability.
    tokens: the 4 generated token ids (bins are ids 58457..59456 for OFA's vocabulary).
    alternatives: the other beams, best first, with raw confidences (never calibrated).
    found: False ("not found") when the model answers the null box (a model trained with absent objects
        does so for a description that matches nothing in the image; `image.is_null_box`), or when
        `confidence` is below the Grounder's `min_confidence`, if it has one, or when the description is empty
        or whitespace (it describes nothing). The box is the model's answer either way (for an empty
        description the reference's answer to the bare prompt, which we keep for fidelity).
    raw_confidence: exp(mean log-probability of the 4 coordinate tokens), i.e. the geometric mean of the
        probabilities the model gave each coordinate bin, in (0, 1]; always present (left out when
        constructing a result: the same as `confidence`). It ranks answers, but its scale means little:
        the demo model's right answers have about 0.03, its wrong ones a little less.
    calibrated: whether `confidence` is the calibrated probability.
    zoomed: whether `box` comes from a second look at a crop around the first answer (`Zoom`); `tokens`,
        `score`, `raw_confidence` and the alternatives are the first look's, `confidence` is recomputed.
    """

    text: str
    box: tuple[float, float, float, float]
    score: float
    confidence: float
    tokens: tuple[int, int, int, int]
    image_size: tuple[int, int]  # (width, height)
    alternatives: tuple[Alternative, ...] = field(default=())
    truncated: bool = False  # the text was cut to the model's source length
    found: bool = True
    raw_confidence: float = math.nan  # not given: the same as `confidence`
    calibrated: bool = False
    zoomed: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.raw_confidence):
            object.__setattr__(self, "raw_confidence", self.confidence)

    def confidence_label(self) -> str:
        """The confidence as the CLI table, --draw and the web page show it: "93 % sure" when calibrated
        (the probability that the answer is right; "> 99 %" and "< 1 %" at the ends), else "raw 0.031"."""
        if not self.calibrated:
            return f"raw {self.confidence:.3f}"
        p = self.confidence
        return "> 99 % sure" if p >= 0.995 else "< 1 % sure" if p < 0.005 else f"{math.floor(100 * p + 0.5)} % sure"

    def to_dict(self, alternatives: bool = False, tokens: bool = True, truncated: bool = False) -> dict[str, Any]:
        """The result as JSON-able data: the one form every output uses. The CLI's --json and --jsonl take the
        defaults (--alternatives adds `alternatives`); the HTTP service answers with
        `to_dict(alternatives=True, tokens=False, truncated=True)`. `tokens` also applies to the alternatives.
        `raw_confidence`, `calibrated` and `zoomed` come last."""
        out: dict[str, Any] = {"text": self.text, "box": list(self.box), "score": self.score,
                               "confidence": self.confidence, "found": self.found}
        if tokens:
            out["tokens"] = list(self.tokens)
        if truncated:
            out["truncated"] = self.truncated
        if alternatives:
            alts = [{**asdict(a), "box": list(a.box), "tokens": list(a.tokens)} for a in self.alternatives]
            out["alternatives"] = alts if tokens else [{k: v for k, v in a.items() if k != "tokens"} for a in alts]
        out["raw_confidence"] = self.raw_confidence
        out["calibrated"] = self.calibrated
        out["zoomed"] = self.zoomed
        return out


def _confidence(h: Hypothesis) -> float:
    return math.exp(sum(h.positional_scores[:4]) / 4)


def _descriptions(text) -> list:
    """One item's descriptions as a list: [text] for a string, the items of a list, tuple or other iterable
    of strings (each checked when tokenised)."""
    if isinstance(text, str):
        return [text]
    if isinstance(text, (bytes, bytearray, dict)) or not hasattr(text, "__iter__"):
        raise TypeError(f"text must be a string or a sequence of strings, got {type(text).__name__}")
    return list(text)


def _model_precision(model: GroundingModel) -> str:
    """`model.precision`; for a `GroundingModel` written before that field was renamed, its old name `dtype`
    (with a DeprecationWarning; the fallback goes in the next release)."""
    if hasattr(model, "precision"):
        return model.precision
    warnings.warn(f"{type(model).__name__}.dtype: a GroundingModel's precision mode is now named `precision`; "
                  "`dtype` is read in its place until the next release", DeprecationWarning, stacklevel=3)
    return model.dtype


class Grounder:
    """A loaded grounding model with its tokenizer and settings.

    >>> g = Grounder.from_pretrained("path/to/model_dir")
    >>> r = g.predict("photo.jpg", "the man in the blue shirt")
    >>> r.box, r.confidence
    """

    def __init__(self, model: OFAModel | GroundingModel, tokenizer: OFATokenizer,
                 preprocess: PreprocessConfig | None = None, generation: GenerationConfig | None = None,
                 device: str | torch.device | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 batch_size: int = 8, fuse: bool = True, precision: str | None = None, cache_mb: float = 64,
                 min_confidence: float | None = None, calibration: Calibration | None = None,
                 card: str | None = None, *, zoom: Zoom | None = None, dtype: str | None = None) -> None:
        """`model`: an OFAModel, which is left as it is (its copy prepared for inference in `precision`, "fp32"
        by default or "bf16", on `device` is what runs), or a model already behind the `GroundingModel` interface
        (`OFAModel.prepared_for_inference`, `onnx_export.OnnxModel`), used as is. `fuse` (OFAModel only):
        fold BatchNorm into the convolutions and store the token table in float16 where exact (about 1e-6
        relative on the backbone's output); False runs the backbone unfused, as the reference does. Either
        way the model that runs is inference-only (eval mode, no gradients); `fuse` makes nothing trainable.
        `calibration`: makes `GroundingResult.confidence` the probability that the answer is right (boxes,
        tokens and scores are unchanged); `min_confidence` is then a probability threshold. `card`: the model
        card's text (what the model was trained on and cannot do), shown by the server and the web page.
        `zoom`: a second look at small answers (`Zoom`); None (the default) answers as the reference does.
        `dtype`: deprecated alias of `precision` (warns; removed in the next release).

        fp32 on a GPU: creating the Grounder turns TF32 off for the whole process (`hardware.use_ieee_fp32_on_cuda`:
        cuDNN's convolutions, cuBLAS's matmuls), once, and leaves it off: the reference computes in IEEE float32,
        and TF32 would move the answers. torch keeps these switches per process, not per thread or per call, so
        flipping them around each call would race with other threads; a program that wants TF32 for other work
        in the same process (fp32 training between validations, say) sets it back itself, or uses bf16."""
        precision = precision_argument(precision, dtype, "Grounder")
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
        if cache_mb < 0 or (max_pixels is not None and max_pixels < 1):
            raise ValueError(f"cache_mb must be at least 0 and max_pixels at least 1 (or None), got {cache_mb} and "
                             f"{max_pixels}")
        self.min_confidence = min_confidence
        self.calibration = calibration
        self.card = card
        self.zoom = zoom
        if isinstance(model, OFAModel):
            model = model.prepared_for_inference(precision, device, fuse=fuse)
        self.model: GroundingModel = model
        self.device, self.precision = model.device, _model_precision(model)
        if self.device.type == "cuda" and self.precision == "fp32" and use_ieee_fp32_on_cuda():
            log.info("fp32 on %s: TF32 turned off for this process, for the reference's float32 arithmetic",
                     self.device)
        self.num_parameters = model.num_parameters()  # as stored (before BatchNorm folding)
        self.cache = FeatureCache(int(cache_mb * 2**20))
        self.tokenizer = tokenizer
        self.preprocess = preprocess or PreprocessConfig()
        self.generation = generation or GenerationConfig()
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self._vocab_ids = allowed_token_ids(self.generation, model.config.vocab_size, self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device | None = None,
                        cache_dir: str | Path | None = None, precision: str | None = None, fuse: bool = True,
                        *, dtype: str | None = None, **kwargs: Any) -> Grounder:
        """Load a model (`loader.load_model`; names as `model_names` reads them): a directory or file in any
        layout `checkpoint.read_checkpoint` reads, a bundled model's name (`bundled_models()`: "demo"), or a
        hub id (`damo/ofa_visual-grounding_refcoco_distilled_en` from ModelScope, `hf:ORG/NAME` from Hugging
        Face; see `hub.resolve_model`, which uses `cache_dir` or the hubs' default caches). `preset:NAME`
        (random weights) is refused: a `CheckpointError`, as for a name that is none of these.

        Without a path: the demo model shipped with the package (`DEFAULT_MODEL`). `min_confidence`,
        `calibration` and `zoom` default to the model directory's (`grounding.json`), if it has them; pass
        `min_confidence=0`, `calibration=None` or `zoom=None` to turn them off. `precision`: "fp32" (default) or
        "bf16", as for `Grounder`; `dtype` is its deprecated alias (warns; removed in the next release).
        """
        # before the load: a bad argument should not cost a model load
        precision = precision_argument(precision, dtype, "Grounder.from_pretrained")
        ckpt = load_model(path, cache_dir=cache_dir)
        kwargs.setdefault("min_confidence", ckpt.min_confidence)
        kwargs.setdefault("calibration", ckpt.calibration)
        kwargs.setdefault("card", ckpt.card)
        kwargs.setdefault("zoom", ckpt.zoom)
        if kwargs["min_confidence"] == 0:
            kwargs["min_confidence"] = None
        model = ckpt.model.prepared_for_inference(precision, device, fuse=fuse, copy=False)  # ours: no second copy
        return cls(model, ckpt.tokenizer, ckpt.preprocess, ckpt.generation, **kwargs)

    @property
    def dtype(self) -> str:
        """Deprecated (removed in the next release): `precision`, its new name."""
        warnings.warn("Grounder.dtype is deprecated and will be removed in the next release; use Grounder.precision",
                      DeprecationWarning, stacklevel=2)
        return self.precision

    # -- inputs ---------------------------------------------------------------------------------------

    def tokenize_text(self, text: str) -> tuple[list[int], bool]:
        """One description's token ids as the encoder takes them (prompt, BOS/EOS, cut to the model's source
        length), and whether the description had to be truncated. Tokenising only: `encode_texts` runs the
        encoder."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        check_unicode(text)
        return self.tokenizer.encode_query(text, self.preprocess.prompt, self.preprocess.max_src_length)

    def encode_text(self, text: str) -> tuple[list[int], bool]:
        """Deprecated (to be removed in the next release): `tokenize_text`, its new name (it only tokenises)."""
        warnings.warn("Grounder.encode_text is deprecated and will be removed in the next release; use "
                      "Grounder.tokenize_text", DeprecationWarning, stacklevel=2)
        return self.tokenize_text(text)

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
        share one backbone pass over the image and are decoded in batches.
        """
        return self.predict_batch([(image, text)])[0]

    def predict_batch(self, items: Sequence[tuple[ImageInput, str | Sequence[str]]]
                      ) -> list[GroundingResult | list[GroundingResult]]:
        """Ground many (image, description(s)) pairs; same tokens and boxes as calling `predict` on each.

        Each distinct image runs the backbone once (repeated images, in this call or earlier ones, come
        from the feature cache); all descriptions are then encoded and decoded `batch_size` at a time,
        each with its own padding, resize ratios and beams.

        `items`: (image, text) pairs; `image` as for `predict`, `text` a string or a sequence (list, tuple) of
        strings. Returns a list with one entry per pair, in the order of `items`, shaped like `predict`'s
        answer: a `GroundingResult` where `text` is a string, a list of `GroundingResult` (one per
        description, in order; empty for an empty sequence) where it is a sequence, even one of length 1.
        `predict_batch([])` is `[]`. Every image is loaded before the model runs, so one unreadable or too
        large image raises (`ImageLoadError`, `ImageTooLargeError`) for the whole call and returns nothing;
        a description that is not a string raises `TypeError`, one that is not Unicode text (a lone
        surrogate) `ValueError`.
        """
        if not items:
            return []
        texts = [_descriptions(text) for _, text in items]  # before any image is read: a wrong type fails fast
        rgbs = [self.load_image(image) for image, _ in items]
        queries: list[tuple[int, str, list[int], bool]] = []
        for i, item_texts in enumerate(texts):
            for t in item_texts:
                ids, cut = self.tokenize_text(t)
                if cut:
                    log.warning("description truncated to %d tokens: %.60r...", self.preprocess.max_src_length, t)
                queries.append((i, t, ids, cut))
        flat = self._ground(rgbs, queries)
        if self.zoom is not None:
            flat = self._second_look(rgbs, queries, flat, self.zoom)
        out: list[GroundingResult | list[GroundingResult]] = []
        it = iter(flat)
        for (_, text), item_texts in zip(items, texts):
            out.append(next(it) if isinstance(text, str) else [next(it) for _ in item_texts])
        return out

    def _ground(self, rgbs: Sequence[Image.Image], queries: list[tuple[int, str, list[int], bool]]
                ) -> list[GroundingResult]:
        """One answer per query (image index, text, token ids, truncated), `batch_size` at a time."""
        features, grid = self.image_features(rgbs)
        flat: list[GroundingResult] = []
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start:start + self.batch_size]
            enc, src_len = self.encode_texts(features[[q[0] for q in chunk]], grid, [q[2] for q in chunk])
            flat += self.decode(enc, src_len, [rgbs[q[0]].size for q in chunk], [q[1] for q in chunk],
                                [q[3] for q in chunk])
        return flat

    def _second_look(self, rgbs: Sequence[Image.Image], queries: list[tuple[int, str, list[int], bool]],
                     flat: list[GroundingResult], zoom: Zoom) -> list[GroundingResult]:
        """`zoom`'s second look at each small box answer, all crops in one batch."""
        looks = [(k, window) for k, (q, r) in enumerate(zip(queries, flat))
                 if r.found and (window := zoom.window(r.box, rgbs[q[0]].size)) is not None]
        if not looks:
            return flat
        crops = [rgbs[queries[k][0]].crop(window) for k, window in looks]
        second = self._ground(crops, [(j, *queries[k][1:]) for j, (k, _) in enumerate(looks)])
        flat = list(flat)
        for (k, (left, top, _, _)), again in zip(looks, second):
            box = (again.box[0] + left, again.box[1] + top, again.box[2] + left, again.box[3] + top)
            if again.found and box_overlap(box, flat[k].box) >= zoom.min_iou:
                first = flat[k]
                flat[k] = self._judged(replace(first, box=box, confidence=first.raw_confidence, calibrated=False,
                                               zoomed=True), answered=True)
        return flat

    def image_tensor(self, rgb: Image.Image) -> torch.Tensor:
        """(3, S, S) normalised pixels of an RGB image, as the model expects them."""
        return image_to_tensor(rgb, self.preprocess.patch_image_size, self.preprocess.mean, self.preprocess.std)

    def _backbone(self, rgb: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image's backbone output (1, P, d) and its grid (no cache)."""
        return self.model.image_features(self.image_tensor(rgb).unsqueeze(0))

    def image_features(self, rgbs: Sequence[Image.Image]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Backbone output (n, P, d) for each image, and the feature grid; each distinct image once."""
        if len(rgbs) == 1 and self.cache.max_bytes == 0:  # nothing to share: skip hashing the pixels (~1 ms/MP)
            return self._backbone(rgbs[0])
        keys = [FeatureCache.key(rgb) for rgb in rgbs]
        found: dict[bytes, Features] = {}
        for key in keys:
            if key not in found and (hit := self.cache.get(key)) is not None:
                found[key] = hit
        for key, rgb in zip(keys, rgbs):
            if key not in found:  # one image per backbone pass: peak memory stays one image's activations
                tokens, grid = self._backbone(rgb)
                found[key] = (tokens[0], grid)
                self.cache.put(key, found[key])
        return torch.stack([found[k][0] for k in keys]), found[keys[0]][1]

    def encode_texts(self, image_features: torch.Tensor, grid: tuple[int, int],
                     token_ids: list[list[int]]) -> tuple[EncoderOutput, int]:
        """The encoder over descriptions (their ids from `tokenize_text`), row i with image_features[i];
        returns the encoder's output and the padded source length."""
        input_ids = pad_ids(token_ids, self.model.config.pad_token_id)
        return self.model.encode(input_ids, image_features, grid), input_ids.shape[1]

    @torch.inference_mode()
    def decode(self, enc: EncoderOutput, src_len: int, sizes_wh: Sequence[tuple[int, int]], texts: list[str],
               truncated: list[bool]) -> list[GroundingResult]:
        """Beam search for each encoded description, then bins -> boxes in its original image's pixels."""
        hyps = self._search(enc, len(texts), src_len)
        results = []
        for text, cut, sample, size_wh in zip(texts, truncated, hyps, sizes_wh):
            ratios = torch.tensor([resize_ratios(size_wh, self.preprocess.patch_image_size)], dtype=torch.float32)
            tokens = torch.tensor([h.tokens[:4] for h in sample], dtype=torch.long)
            boxes = bins_to_box(tokens - self.tokenizer.bin_offset, ratios.expand(len(sample), 2),
                                self.generation.num_bins, self.preprocess.max_image_size).tolist()
            alts = tuple(Alternative(tuple(b), h.score, _confidence(h), tuple(h.tokens[:4]))
                         for b, h in zip(boxes[1:], sample[1:]))
            best = sample[0]
            bins = [t - self.tokenizer.bin_offset for t in best.tokens[:4]]
            answered = not is_null_box(bins, self.generation.num_bins) and bool(text.strip())
            result = GroundingResult(text, tuple(boxes[0]), best.score, _confidence(best), tuple(best.tokens[:4]),
                                     size_wh, alts, cut, answered)
            results.append(self._judged(result, answered))
        return results

    def _judged(self, result: GroundingResult, answered: bool) -> GroundingResult:
        """An answer with its calibrated confidence, if the Grounder has a calibration, and found False below
        `min_confidence`; `result` has its raw confidence."""
        if self.calibration is not None:
            result = replace(result, confidence=self.calibration.apply(result, not_found=not answered),
                             calibrated=True)
        if answered and self.min_confidence is not None and result.confidence < self.min_confidence:
            result = replace(result, found=False)
        return result

    def _search(self, enc: EncoderOutput, batch: int, src_len: int) -> list[list[Hypothesis]]:
        gen = self.generation
        max_steps = int(gen.max_len_a * src_len + gen.max_len_b) + 1
        model = self.model
        state = model.decoder_start(enc, max_steps, self._vocab_ids)

        def step(tokens: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
            if reorder is not None:
                model.decoder_reorder(state, reorder)
            return model.decoder_step(tokens, state)

        return beam_search(step, batch, gen, src_len, self.model.config.vocab_size, self._vocab_ids,
                           device=self.device, max_positions=self.model.config.max_position_embeddings)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, list]:
        """ModelScope-compatible call: {"image", "text"} -> {"boxes": [[x0, y0, x1, y1]], "scores": [confidence]}."""
        if not isinstance(inputs, dict) or "image" not in inputs or "text" not in inputs:
            raise TypeError('expected a dict with "image" and "text" keys')
        result = self.predict(inputs["image"], str(inputs["text"]))
        return {"boxes": [list(result.box)], "scores": [result.confidence]}
