"""Training samples: the inference preprocessing, plus the box as 4 bin tokens + EOS.

Random access over a dataset's samples (images stay on disk unless `cache_images`), deterministic
optional augmentations keyed by (seed, epoch, index) so that a resumed run sees the same data, and a
sampler that hands each process a disjoint share of one shuffled order.

With `group_by_image=K` (ours, off by default) the units are images instead of samples: each unit gives
up to K of its image's samples (a different choice each epoch), which share one backbone pass in
training (`collate` returns the images once plus `image_index`) and one flip decision.

With `teacher_side` (distillation from a teacher trained at another image side) each sample also carries its
image resized for the teacher (`teacher_pixels`), mirrored and jittered exactly as the student's.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from ..config import GenerationConfig, PreprocessConfig
from ..data import Sample
from ..image import NULL_BOX_BINS, box_to_bins, load_image, resize_ratios, resize_square
from ..synthetic import absent_expressions
from ..tokenizer import BOS, PAD, OFATokenizer, pad_ids

log = logging.getLogger(__name__)

__all__ = ["GroundingTrainSet", "ShardedShuffleSampler", "collate", "mirror_text", "AUGMENTATIONS"]

AUGMENTATIONS = ("flip", "jitter")
_LEFT_RIGHT = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}


def mirror_text(text: str) -> str:
    """Mirror the words a horizontal flip changes the meaning of (left <-> right), in any case, keeping it:
    "LEFT" -> "RIGHT", "Leftmost" -> "Rightmost" (make-synthetic writes such phrasings)."""
    def swap(m: re.Match) -> str:
        word, said = _LEFT_RIGHT[m.group(0).lower()], m.group(0)
        return word.upper() if said.isupper() else word.capitalize() if said[0].isupper() else word
    return re.sub(r"\b(left|right|leftmost|rightmost)\b", swap, text, flags=re.IGNORECASE)


@dataclass
class Item:
    index: int
    input_ids: list[int]
    pixels: torch.Tensor  # (S, S, 3) uint8; normalised on the model's device (image.normalize_batch)
    target: torch.Tensor  # (5,) int64: 4 bin ids + EOS
    flipped: bool = False  # mirrored (the teacher cache keys soft labels by sample and flip)
    absent: bool = False  # the text was replaced by a description of an object the image lacks
    teacher_pixels: torch.Tensor | None = None  # (S_t, S_t, 3) uint8 at the teacher's side (`teacher_side`)


class GroundingTrainSet(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample], tokenizer: OFATokenizer, preprocess: PreprocessConfig,
                 generation: GenerationConfig, augment: Sequence[str] = (), seed: int = 0,
                 cache_images: bool = False, max_pixels: int | None = None, group_by_image: int = 1,
                 absent_rate: float = 0.0, teacher_side: int | None = None,
                 cache_limit_bytes: int | None = None) -> None:
        unknown = set(augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; known: {', '.join(AUGMENTATIONS)}")
        self.samples, self.tokenizer = list(samples), tokenizer
        self.preprocess, self.generation = preprocess, generation
        self.augment, self.seed, self.epoch = tuple(augment), seed, 0
        if not 0 <= absent_rate < 1:
            raise ValueError(f"absent_rate must be in [0, 1), got {absent_rate}")
        if absent_rate and any("objects" not in s.meta for s in self.samples):
            raise ValueError("absent descriptions need every sample's objects (the synthetic benchmark's 'objects')")
        self.absent_rate = absent_rate
        self.max_pixels = max_pixels
        self.teacher_side = teacher_side
        # One entry per image, not per sample: datasets have several expressions per image. Up to
        # `cache_limit_bytes` of pixels (None: no limit); once full, further images are read from disk each time.
        self._cache: dict[str, tuple[np.ndarray, tuple[int, int], np.ndarray | None]] | None = \
            {} if cache_images else None
        if cache_limit_bytes is not None and cache_limit_bytes < 0:
            raise ValueError(f"cache_limit_bytes must be at least 0, got {cache_limit_bytes}")
        self.cache_limit_bytes, self.cache_bytes, self.cache_full = cache_limit_bytes, 0, False
        if group_by_image < 1:
            raise ValueError(f"group_by_image must be at least 1, got {group_by_image}")
        self.group_by_image = group_by_image
        self.groups: list[list[int]] | None = None
        if group_by_image > 1:
            by_image: dict[str, list[int]] = {}
            for i, sample in enumerate(self.samples):
                by_image.setdefault(sample.image_key, []).append(i)
            self.groups = list(by_image.values())

    def __len__(self) -> int:
        return len(self.samples) if self.groups is None else len(self.groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _resized(self, index: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        """The image at the model's side, its original size, and at the teacher's side (or None)."""
        key = self.samples[index].image_key
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        image = load_image(self.samples[index].image, self.max_pixels)
        pixels = np.asarray(resize_square(image, self.preprocess.patch_image_size), dtype=np.uint8)
        teacher = None
        if self.teacher_side is not None:  # resized from the original, as the teacher saw images in its training
            teacher = pixels if self.teacher_side == self.preprocess.patch_image_size else \
                np.asarray(resize_square(image, self.teacher_side), dtype=np.uint8)
        out = (pixels, image.size, teacher)
        if self._cache is not None:
            size = pixels.nbytes + (teacher.nbytes if teacher is not None and teacher is not pixels else 0)
            if self.cache_limit_bytes is None or self.cache_bytes + size <= self.cache_limit_bytes:
                for array in (pixels, teacher):
                    if array is not None:
                        array.setflags(write=False)  # shared by every sample of the image
                self._cache[key] = out
                self.cache_bytes += size
            elif not self.cache_full:
                self.cache_full = True
                log.warning("image cache full (%d images, %.0f MB, --cache-images-mb): further images are read "
                            "from disk each time", len(self._cache), self.cache_bytes / 2**20)
        return out

    def __getitem__(self, index: int) -> Item | list[Item]:
        if self.groups is None:
            return self._item(index, random.Random(f"{self.seed}/{self.epoch}/{index}"))
        members = self.groups[index]
        pick = random.Random(f"{self.seed}/{self.epoch}/group/{index}")
        chosen = sorted(pick.sample(members, min(self.group_by_image, len(members))))
        seed = pick.random()  # one augmentation draw for the whole image: every sample flips with it
        return [self._item(i, random.Random(seed)) for i in chosen]

    def _item(self, index: int, rng: random.Random) -> Item:
        flip = "flip" in self.augment and rng.random() < 0.5
        absent = None
        if self.absent_rate and rng.random() < self.absent_rate:
            absent = next(iter(absent_expressions(self.samples[index].meta["objects"], rng, 1)), None)
        return self.item(index, flip, rng if "jitter" in self.augment else None, absent)

    def item(self, index: int, flip: bool = False, jitter: random.Random | None = None,
             absent: str | None = None) -> Item:
        """Sample `index`, mirrored if `flip` (image, box and left/right words), with random brightness and
        contrast drawn from `jitter` if given. With `absent` (a description of an object the image lacks)
        that text replaces the sample's, and the target is the null box (`image.NULL_BOX_BINS`), as it is
        for a sample without a box (a dataset row describing an absent object)."""
        sample = self.samples[index]
        pixels, size_wh, teacher = self._resized(index)
        text, box = sample.text if absent is None else absent, sample.box
        if box is None:  # a row describing an absent object (`"box": null`): the null box, as for `absent`
            absent = text
        if flip:
            pixels = pixels[:, ::-1]
            teacher = teacher[:, ::-1] if teacher is not None else None
            w = size_wh[0]
            if box is not None:
                box = (w - box[2], box[1], w - box[0], box[3])
            text = mirror_text(text)
        if jitter is not None:
            brightness, contrast = jitter.uniform(0.85, 1.15), jitter.uniform(0.85, 1.15)
            pixels = _jittered(pixels, brightness, contrast)
            teacher = _jittered(teacher, brightness, contrast) if teacher is not None else None
        ratios = torch.tensor([resize_ratios(size_wh, self.preprocess.patch_image_size)], dtype=torch.float32)
        bins = box_to_bins(torch.tensor([box], dtype=torch.float64), ratios, self.generation.num_bins,
                           self.preprocess.max_image_size)[0] if absent is None else torch.tensor(NULL_BOX_BINS)
        target = torch.cat([bins + self.tokenizer.bin_offset, torch.tensor([self.tokenizer.eos_id])])
        ids = self.tokenizer.grounding_ids(text, self.preprocess.prompt, self.preprocess.max_src_length)
        # np.array copies: cached arrays are read-only and shared by the image's samples
        return Item(index, ids, torch.from_numpy(np.array(pixels, dtype=np.uint8)), target, flip, absent is not None,
                    torch.from_numpy(np.array(teacher, dtype=np.uint8)) if teacher is not None else None)


def _jittered(pixels: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image = ImageEnhance.Brightness(image).enhance(brightness)
    return np.asarray(ImageEnhance.Contrast(image).enhance(contrast))


def collate(units: list[Item] | list[list[Item]], pad_id: int = PAD, bos_id: int = BOS) -> dict[str, torch.Tensor]:
    """Samples (or image groups of samples) -> a batch; groups add `image_index` (sample -> its image).

    `pixels` (and `teacher_pixels`, when the items have them) stays uint8 (B, S, S, 3): the training loop
    normalises it on the model's device."""
    groups = [u if isinstance(u, list) else [u] for u in units]
    items = [it for g in groups for it in g]
    input_ids = pad_ids([it.input_ids for it in items], pad_id)
    target = torch.stack([it.target for it in items])  # (B, 5)
    prev = torch.cat([torch.full((len(items), 1), bos_id, dtype=torch.long), target[:, :-1]], dim=1)
    batch = {"input_ids": input_ids, "prev_tokens": prev, "target": target,
             "index": torch.tensor([it.index for it in items]), "flipped": torch.tensor([it.flipped for it in items]),
             "absent": torch.tensor([it.absent for it in items])}
    grouped = all(isinstance(u, list) for u in units)
    heads = [g[0] for g in groups] if grouped else items  # one image per group
    batch["pixels"] = torch.stack([it.pixels for it in heads])
    if heads[0].teacher_pixels is not None:
        batch["teacher_pixels"] = torch.stack([it.teacher_pixels for it in heads])
    if grouped:
        batch["image_index"] = torch.tensor([k for k, g in enumerate(groups) for _ in g])
    return batch


class ShardedShuffleSampler(torch.utils.data.Sampler[int]):
    """One permutation per (seed, epoch); rank r takes positions r, r + world, ... of it (disjoint shares).

    The tail is cut so that every rank gets the same number of samples (DDP steps in lockstep).
    `start` skips that many of this rank's samples (resuming in the middle of an epoch).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.world_size - self.start

    def indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world_size
        return order[self.rank: per_rank * self.world_size: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])
