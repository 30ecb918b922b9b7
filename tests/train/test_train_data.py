"""train/data.py: targets, the flip, grouping by image, absent descriptions, the sharded sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa_grounding.config import GenerationConfig, PreprocessConfig
from ofa_grounding.data import Sample
from ofa_grounding.synthetic import write_synthetic
from ofa_grounding.tokenizer import OFATokenizer
from ofa_grounding.train.cells import cell_labels
from ofa_grounding.train.data import GroundingTrainSet, ShardedShuffleSampler, collate, mirror_text


def test_sampler_gives_disjoint_deterministic_shares() -> None:
    a, b = ShardedShuffleSampler(10, seed=3, rank=0, world_size=2), ShardedShuffleSampler(10, seed=3, rank=1,
                                                                                          world_size=2)
    assert len(a) == 5 and not set(a) & set(b) and sorted([*a, *b]) == list(range(10))
    assert list(a) == list(ShardedShuffleSampler(10, seed=3, rank=0, world_size=2))
    a.set_epoch(1)
    assert list(a) != list(ShardedShuffleSampler(10, seed=3, rank=0, world_size=2))
    a.set_epoch(1, start=2)
    assert list(a) == a.indices()[2:] and len(a) == 3


def test_mirror_text_swaps_left_and_right_in_any_case() -> None:
    assert mirror_text("the circle left of the square") == "the circle right of the square"
    assert mirror_text("THE LEFTMOST STAR, RIGHT?") == "THE RIGHTMOST STAR, LEFT?"
    assert mirror_text("Rightmost circle") == "Leftmost circle"
    assert mirror_text("the bright star on the leftward side") == "the bright star on the leftward side"


@pytest.mark.slow
def test_targets_and_flip(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (200, 100), (255, 0, 0)).save(tmp_path / "a.png")
    sample = Sample("s", tmp_path / "a.png", "the circle left of the star", (20.0, 10.0, 60.0, 51.0))
    pre = PreprocessConfig(patch_image_size=64, max_image_size=64)
    ds = GroundingTrainSet([sample], OFATokenizer.default(), pre, GenerationConfig())
    item = ds[0]
    # bins = round(x * (64 / W) / 64 * 999): x0 20 of 200 -> 99.9 -> 100, y1 51 of 100 -> 509.49 -> 509
    assert item.target.tolist() == [58457 + 100, 58457 + 100, 58457 + 300, 58457 + 509, 2]
    assert item.pixels.shape == (64, 64, 3) and item.pixels.dtype == torch.uint8
    assert item.input_ids[0] == 0 and item.input_ids[-1] == 2
    flipped = GroundingTrainSet([sample], OFATokenizer.default(), pre, GenerationConfig(), augment=["flip"], seed=0)
    seen = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        it = flipped[0]
        seen.add(tuple(it.target.tolist()))
        if it.target[0] != item.target[0]:  # mirrored: x0' = 200 - 60 = 140 -> bin 699, and the words swap
            assert it.target.tolist()[:4] == [58457 + 699, 58457 + 100, 58457 + 899, 58457 + 509]
            assert "right of" in OFATokenizer.default().decode(it.input_ids)
    assert len(seen) == 2
    batch = collate([item, item])
    assert batch["prev_tokens"][0].tolist() == [0, *item.target.tolist()[:4]]


def test_group_by_image_shares_one_image_and_one_flip(tmp_path: Path) -> None:
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (100, 50), (200, 0, 0)).save(tmp_path / f"{name}.png")
    samples = [Sample(f"{n}{k}", tmp_path / f"{n}.png", f"the circle left of star {k}", (10.0, 5.0, 30.0, 25.0))
               for n in ("a", "b") for k in range(3)]
    pre = PreprocessConfig(patch_image_size=32, max_image_size=32)
    ds = GroundingTrainSet(samples, OFATokenizer.default(), pre, GenerationConfig(), augment=["flip"], seed=1,
                           cache_images=True, group_by_image=2)
    assert len(ds) == 2 and ds.groups == [[0, 1, 2], [3, 4, 5]]
    picks = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for g in range(2):
            unit = ds[g]
            assert len(unit) == 2 and {it.index for it in unit} <= set(ds.groups[g])
            assert len({tuple(it.target.tolist()) for it in unit}) == 1  # same box: flipped together or not
            picks.add(tuple(it.index for it in unit))
        batch = collate([ds[0], ds[1]])
        assert batch["pixels"].shape == (2, 32, 32, 3) and batch["image_index"].tolist() == [0, 0, 1, 1]
        assert batch["input_ids"].shape[0] == 4 and batch["target"].shape == (4, 5)
    assert len(picks) > 2  # another choice of samples in other epochs
    assert len(ds._cache) == 2  # the cache holds images, not samples
    with pytest.raises(ValueError, match="group_by_image"):
        GroundingTrainSet(samples, OFATokenizer.default(), pre, GenerationConfig(), group_by_image=0)


def test_absent_descriptions_target_the_null_box(tmp_path: Path) -> None:
    from ofa_grounding.data import open_dataset
    from ofa_grounding.image import NULL_BOX_BINS, is_null_box
    from ofa_grounding.synthetic import SceneObject, resolve

    write_synthetic(tmp_path, 40, seed=2, size=(64, 64))
    samples = list(open_dataset(tmp_path, split="train"))
    tok = OFATokenizer.default()
    ds = GroundingTrainSet(samples, tok, PreprocessConfig(patch_image_size=64, max_image_size=64), GenerationConfig(),
                           seed=0, absent_rate=0.5)
    items = [ds[i] for i in range(len(ds))]
    absent = [it for it in items if it.absent]
    assert 0.2 * len(items) < len(absent) < 0.8 * len(items)
    for it in absent:
        assert it.target.tolist() == [b + tok.bin_offset for b in NULL_BOX_BINS] + [tok.eos_id]
        text = tok.decode(it.input_ids).split('"')[1].strip()  # the prompt around "the <colour> <shape>"
        objects = [SceneObject(**{**o, "box": tuple(o["box"])}) for o in samples[it.index].meta["objects"]]
        _, color, shape = text.split()
        assert color in {o.color for o in objects} | {"red", "green", "blue", "yellow", "purple", "orange"}
        assert resolve({"kind": "attribute", "desc": {"color": color, "shape": shape}}, objects) == [], text
    for it in items:
        if not it.absent:
            assert not is_null_box([t - tok.bin_offset for t in it.target[:4].tolist()])
    assert is_null_box([0, 3, 24, 10]) and not is_null_box([0, 0, 25, 10])
    batch = collate(items[:8], tok.pad_id, tok.bos_id)
    labels = cell_labels([samples[i] for i in batch["index"].tolist()], batch["flipped"].tolist(), 4,
                         batch["absent"].tolist())
    for row, was_absent in zip(labels["pointer"], batch["absent"].tolist()):
        assert row.sum().item() == pytest.approx(0.0 if was_absent else 1.0)
    # the same draw for the same (seed, epoch, index): a resumed run sees the same negatives
    again = [ds[i] for i in range(len(ds))]
    assert [it.absent for it in again] == [it.absent for it in items]
    assert [it.input_ids for it in again] == [it.input_ids for it in items]


def test_rows_without_a_box_target_the_null_box_and_the_wide_world_labels_its_cells(tmp_path: Path) -> None:
    from ofa_grounding import synthetic_v2
    from ofa_grounding.data import open_dataset
    from ofa_grounding.image import NULL_BOX_BINS
    from ofa_grounding.train.cells import vocabulary

    write_synthetic(tmp_path, 60, seed=3, world="v2", absent=1.0, max_side=400)
    samples = list(open_dataset(tmp_path, split="train"))
    assert any(s.box is None for s in samples) and any(s.box is not None for s in samples)
    tok = OFATokenizer.default()
    ds = GroundingTrainSet(samples, tok, PreprocessConfig(patch_image_size=64, max_image_size=64), GenerationConfig(),
                           augment=("flip",), seed=0)
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        absent = samples[it.index].box is None
        assert it.absent == absent
        null = [b + tok.bin_offset for b in NULL_BOX_BINS] + [tok.eos_id]
        assert (it.target.tolist() == null) == absent
    assert vocabulary(samples) == (tuple(synthetic_v2.COLORS), synthetic_v2.SHAPES)
    batch = collate(items[:16], tok.pad_id, tok.bos_id)
    chosen = [samples[i] for i in batch["index"].tolist()]
    labels = cell_labels(chosen, batch["flipped"].tolist(), 4, batch["absent"].tolist())
    for row, sample in zip(labels["pointer"], chosen):
        assert row.sum().item() == pytest.approx(0.0 if sample.box is None else 1.0)
    # v2's colours beyond v1's six get their own ids; "none" is the id after the last colour
    assert labels["color"].max().item() <= len(synthetic_v2.COLORS)


def test_the_teacher_gets_its_own_side_flipped_and_jittered_alike(tmp_path: Path) -> None:
    """teacher_side: each item also carries the image resized from the original to the teacher's side, mirrored
    with the student's copy and jittered by the same brightness and contrast; collate stacks both."""
    import random

    import numpy as np
    from PIL import Image, ImageEnhance

    from ofa_grounding.image import resize_square

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8))
    image.save(tmp_path / "a.png")
    sample = Sample("s", tmp_path / "a.png", "the circle left of the star", (20.0, 10.0, 60.0, 51.0))
    pre = PreprocessConfig(patch_image_size=64, max_image_size=64)
    ds = GroundingTrainSet([sample], OFATokenizer.default(), pre, GenerationConfig(), teacher_side=96,
                           cache_images=True)
    plain = ds.item(0)
    assert plain.teacher_pixels.shape == (96, 96, 3) and plain.pixels.shape == (64, 64, 3)
    assert np.array_equal(plain.teacher_pixels.numpy(), np.asarray(resize_square(image, 96)))
    assert np.array_equal(plain.pixels.numpy(), np.asarray(resize_square(image, 64)))
    mirrored = ds.item(0, flip=True)
    assert torch.equal(mirrored.teacher_pixels, plain.teacher_pixels.flip(1))
    assert torch.equal(mirrored.pixels, plain.pixels.flip(1))

    jittered = ds.item(0, jitter=random.Random(7))
    draw = random.Random(7)
    brightness, contrast = draw.uniform(0.85, 1.15), draw.uniform(0.85, 1.15)
    for got, side in ((jittered.teacher_pixels, 96), (jittered.pixels, 64)):
        want = ImageEnhance.Contrast(ImageEnhance.Brightness(resize_square(image, side)).enhance(brightness))
        assert np.array_equal(got.numpy(), np.asarray(want.enhance(contrast)))
    assert not torch.equal(jittered.pixels, plain.pixels)

    batch = collate([plain, mirrored])
    assert batch["teacher_pixels"].shape == (2, 96, 96, 3) and batch["pixels"].shape == (2, 64, 64, 3)
    grouped = collate([[plain, plain], [mirrored]])
    assert batch["teacher_pixels"].shape == grouped["teacher_pixels"].shape
    assert "teacher_pixels" not in collate([GroundingTrainSet([sample], OFATokenizer.default(), pre,
                                                              GenerationConfig()).item(0)])


def test_image_cache_stops_at_its_limit_and_reads_the_rest_from_disk(tmp_path: Path, caplog) -> None:
    from PIL import Image

    samples = []
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
        samples.append(Sample(f"s{i}", tmp_path / f"{i}.png", "the red square", (1.0, 1.0, 20.0, 20.0)))
    pre = PreprocessConfig(patch_image_size=32, max_image_size=32)
    one_image = 32 * 32 * 3
    ds = GroundingTrainSet(samples, OFATokenizer.default(), pre, GenerationConfig(), cache_images=True,
                           cache_limit_bytes=2 * one_image)
    with caplog.at_level("WARNING", logger="ofa_grounding.train.data"):
        first = [ds.item(i).pixels.clone() for i in range(3)]
    assert ds.cache_bytes == 2 * one_image and ds.cache_full
    assert sum("image cache full (2 images" in r.getMessage() for r in caplog.records) == 1
    # the third image is not cached: a change on disk shows, while the cached ones keep their pixels
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "2.png")
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "0.png")
    again = [ds.item(i).pixels for i in range(3)]
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    assert not torch.equal(again[2], first[2]) and int(again[2][0, 0, 2]) == 255
    assert sum("image cache full" in r.getMessage() for r in caplog.records) == 1  # said once
    with pytest.raises(ValueError, match="cache_limit_bytes"):
        GroundingTrainSet(samples, OFATokenizer.default(), pre, GenerationConfig(), cache_images=True,
                          cache_limit_bytes=-1)
