from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import parity_params
from ofa_grounding.image import (
    ImageLoadError,
    bins_to_box,
    box_to_bins,
    image_to_tensor,
    load_image,
    normalize,
    normalize_batch,
    resize_ratios,
)


def test_batch_normalisation_equals_per_image_normalisation() -> None:
    """Training normalises uint8 batches on the model's device: bit for bit what inference does per image."""
    pixels = np.random.default_rng(0).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    batch = normalize_batch(torch.from_numpy(pixels), mean, std)
    assert batch.shape == (3, 3, 24, 40) and batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack([normalize(p, mean, std) for p in pixels]))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.reference
def test_pixels_match_reference_golden(reference_dir: Path, golden: dict) -> None:
    for case, name in (("fixed", "scene_640x480.png"), ("wide", "edge_wide_1200x200.png")):
        pixels = image_to_tensor(load_image(reference_dir / "images" / name), 512, (0.5,) * 3, (0.5,) * 3)
        assert torch.equal(pixels, torch.from_numpy(golden[f"{case}/patch_image"])), case  # bit-exact


def test_exif_orientation_applied_to_files(small_reference_dir: Path) -> None:
    path = small_reference_dir / "images/scene_exif6_jpeg_240x160.jpg"  # EXIF Orientation 6
    assert Image.open(path).size == (240, 160)
    assert load_image(path).size == (160, 240)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "1", "RGB"])
def test_modes_become_rgb(mode: str) -> None:
    image = Image.new(mode, (5, 4))
    rgb = load_image(_png(image) if mode not in ("CMYK", "I") else image)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)


def test_alpha_dropped_not_composited() -> None:
    rgba = Image.new("RGBA", (2, 2), (200, 10, 20, 0))  # fully transparent red stays red
    assert load_image(rgba).getpixel((0, 0)) == (200, 10, 20)


def test_16_bit_scaled_not_clipped() -> None:
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    rgb = load_image(_png(Image.fromarray(array)))
    assert [rgb.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert np.asarray(load_image(array))[0, :, 0].tolist() == [0, 128, 255]


def test_numpy_inputs() -> None:
    assert load_image(np.zeros((4, 6), np.uint8)).size == (6, 4)
    assert load_image(np.zeros((4, 6, 4), np.uint8)).size == (6, 4)
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((4, 6, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((4, 6, 3), np.float32))


def test_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_png(Image.effect_noise((64, 64), 50))[:300])
    cases = {empty: "empty", text: "not an image", truncated: "truncated", tmp_path: "directory",
             tmp_path / "missing.png": "not found"}
    for path, message in cases.items():
        with pytest.raises(ImageLoadError, match=message) as info:
            load_image(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ImageLoadError, match="unsupported image input"):
        load_image(42)  # type: ignore[arg-type]


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(big)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(big, max_pixels=1_000_000)
    assert load_image(big, max_pixels=None).size == (4000, 3000)


@pytest.mark.parametrize("ref", parity_params())
def test_box_formula_matches_reference(ref: Path) -> None:
    """The reference's boxes from its bins, bit for bit: the small fixture (256 px) and the large one (512 px)."""
    import json

    from ofa_grounding.image import resize_ratios

    doc = json.loads((ref / "cases.json").read_text(encoding="utf-8"))
    settings = json.loads((ref / doc["model_dir"] / "configuration.json").read_text(encoding="utf-8"))
    side = settings["model"]["patch_image_size"]
    assert side == (256 if ref.name == "small-reference" else 512)
    assert doc["cases"]
    for case in doc["cases"]:
        w, h = (side / case["w_resize_ratio"], side / case["h_resize_ratio"])
        size = (round(w), round(h))
        ratios = resize_ratios(size, side)
        assert ratios == (case["w_resize_ratio"], case["h_resize_ratio"]), case["id"]
        box = bins_to_box(torch.tensor([case["bins"]]), torch.tensor([ratios]), 1000, side)
        assert box[0].tolist() == case["box"], case["id"]  # bit-exact float32 arithmetic


def test_box_to_bins_inverts_bins_to_box() -> None:
    bins = torch.tensor([[0, 17, 500, 999], [3, 998, 2, 1]])
    ratios = torch.tensor([resize_ratios((640, 480), 512), resize_ratios((97, 61), 512)])
    assert torch.equal(box_to_bins(bins_to_box(bins, ratios, 1000, 512), ratios, 1000, 512), bins)
