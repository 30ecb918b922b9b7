"""ofa_grounding.ray_data: OFAGrounder on a local Ray cluster gives Grounder.predict's boxes, and a bad row an
`error`; without Ray, importing the module names the extra, and importing the package never imports Ray."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HAS_RAY = importlib.util.find_spec("ray") is not None
RAY_MISSING = "needs Ray Data: pip install 'ofa-grounding[ray]' (the dev extra has it)"
needs_ray = pytest.mark.skipif(not HAS_RAY, reason=RAY_MISSING)

# (image, text) rows of the small fixture: several images, one image twice, an empty description
ROWS = [("images/scene_rgb_320x240.png", "the red circle on the left"),
        ("images/noise_rgb_200x150.png", "a blue square"),
        ("images/scene_rgb_320x240.png", "The big GREEN rectangle, near the top-right corner!"),
        ("images/scene_palette_P_180x120.png", "the café on the right 🙂"),
        ("images/scene_exif6_jpeg_240x160.jpg", "the yellow shape at the top"),
        ("images/scene_tiny_23x17.png", "")]


@pytest.fixture(scope="module")
def cpu_grounder(small_model_dir: Path):
    """Grounder.predict's answers on the CPU, where the actors run (whatever OFA_TEST_DEVICE says)."""
    from ofa_grounding import Grounder

    return Grounder.from_pretrained(small_model_dir, device="cpu")


def expected(grounder, small_reference_dir: Path, image, text: str) -> dict:
    r = grounder.predict(small_reference_dir / image if isinstance(image, str) else image, text)
    return {"box": list(r.box), "found": r.found, "score": r.score, "confidence": r.confidence}


def assert_same(row: dict, want: dict) -> None:
    assert row["error"] is None
    assert list(row["box"]) == want["box"]  # boxes exactly; scores within 1e-6 (a batch's other rows)
    assert bool(row["found"]) == want["found"]
    assert row["score"] == pytest.approx(want["score"], abs=1e-6)
    assert row["confidence"] == pytest.approx(want["confidence"], abs=1e-6)


def test_import_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is missing
    monkeypatch.delitem(sys.modules, "ofa_grounding.ray_data", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("ofa_grounding.ray_data")
    assert str(info.value) == ("ofa_grounding.ray_data needs the ray extra (ray is missing): "
                               "pip install 'ofa-grounding[ray]'")


def test_importing_the_package_does_not_import_ray() -> None:
    code = ("import sys, ofa_grounding, ofa_grounding.predictor, ofa_grounding.cli; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@needs_ray
def test_dtype_is_a_deprecated_alias_of_precision(small_model_dir: Path) -> None:
    from ofa_grounding.ray_data import OFAGrounder

    with pytest.warns(DeprecationWarning, match=r"OFAGrounder\(dtype=...\) is deprecated"):
        grounder = OFAGrounder(model=small_model_dir, device="cpu", threads=None, dtype="fp32")
    assert grounder.grounder.precision == "fp32"
    with pytest.raises(TypeError, match="give precision= only"):
        OFAGrounder(model=small_model_dir, device="cpu", threads=None, precision="fp32", dtype="fp32")


@needs_ray
def test_direct_call_numpy_and_pandas(small_model_dir: Path, small_reference_dir: Path, cpu_grounder) -> None:
    import pandas as pd
    from PIL import Image

    from ofa_grounding.ray_data import OFAGrounder

    grounder = OFAGrounder(model=small_model_dir, image_root=small_reference_dir)
    png = (small_reference_dir / ROWS[1][0]).read_bytes()
    array = np.asarray(Image.open(small_reference_dir / ROWS[3][0]).convert("RGB"))
    images = np.array([ROWS[0][0], png, array, b"not an image", ROWS[2][0], None], dtype=object)
    texts = np.array([ROWS[0][1], ROWS[1][1], ROWS[3][1], "x", None, "y"], dtype=object)
    wants = [expected(cpu_grounder, small_reference_dir, ROWS[0][0], ROWS[0][1]),
             expected(cpu_grounder, small_reference_dir, png, ROWS[1][1]),
             expected(cpu_grounder, small_reference_dir, array, ROWS[3][1])]
    errors = [None, None, None, "image bytes: not an image, or a format Pillow cannot read",
              "text must be a string, got NoneType", "unsupported image input of type NoneType; give a path, "
              "bytes, a PIL image or a numpy array"]

    out = grounder({"image": images, "text": texts, "id": np.arange(6)})
    assert list(out) == ["image", "text", "id", "box", "found", "score", "confidence", "error"]
    assert list(out["id"]) == list(range(6)) and out["image"] is images  # input columns passed through
    rows = [{k: out[k][i] for k in out} for i in range(6)]
    for row, want in zip(rows, wants):
        assert_same(row, want)
    assert [row["error"] for row in rows] == errors
    for row in rows[3:]:
        assert row["box"] is None and not row["found"] and math.isnan(row["score"]) and math.isnan(row["confidence"])

    frame = grounder(pd.DataFrame({"image": images, "text": texts}))
    assert isinstance(frame, pd.DataFrame) and list(frame.columns)[-5:] == ["box", "found", "score", "confidence",
                                                                              "error"]
    for i, want in enumerate(wants):
        assert_same({**frame.iloc[i].to_dict(), "error": None}, want)
        assert pd.isna(frame["error"].iloc[i])
    assert list(frame["error"].iloc[3:]) == [errors[3], "text must be a string, got float", errors[5]]

    with pytest.raises(ValueError, match="no column 'text' .* name the column with text_column="):
        grounder({"image": images, "description": texts})
    with pytest.raises(TypeError, match='batch_format="numpy" or "pandas"'):
        grounder([{"image": ROWS[0][0], "text": "a"}])


@pytest.fixture(scope="module")
def ray_cluster():
    if not HAS_RAY:
        pytest.skip(RAY_MISSING)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@needs_ray
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray's own settings, not ours
def test_map_batches_on_a_local_cluster(ray_cluster, small_model_dir: Path, small_reference_dir: Path,
                                        cpu_grounder, tmp_path: Path) -> None:
    """The docs' recipe: read_json -> map_batches(OFAGrounder, concurrency=...) -> write_json."""
    from ofa_grounding.ray_data import OFAGrounder

    rows = [{"id": i, "image": str(small_reference_dir / image), "text": text} for i, (image, text) in enumerate(ROWS)]
    rows.append({"id": len(rows), "image": str(small_reference_dir / "cases.json"), "text": "a bad image"})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    ds = ray_cluster.data.read_json(str(tmp_path / "in.jsonl"))
    ds = ds.map_batches(OFAGrounder, fn_constructor_kwargs={"model": str(small_model_dir), "threads": 1},
                        concurrency=1, num_cpus=1, batch_size=4, batch_format="numpy").materialize()

    out = sorted(ds.take_all(), key=lambda r: r["id"])  # as computed: boxes exactly Grounder.predict's
    assert [r["id"] for r in out] == list(range(len(rows)))
    for row, (image, text) in zip(out, ROWS):
        assert (row["image"], row["text"]) == (str(small_reference_dir / image), text)
        assert_same(row, expected(cpu_grounder, small_reference_dir, image, text))
    bad = out[-1]
    assert bad["error"] == f"{small_reference_dir / 'cases.json'}: not an image, or a format Pillow cannot read"
    assert bad["box"] is None and not bad["found"] and math.isnan(bad["score"]) and math.isnan(bad["confidence"])

    # written as JSON (pandas' 10 significant digits): the boxes read back exactly as float32, errors as nulls
    ds.write_json(str(tmp_path / "out"))
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((tmp_path / "out").glob("*.json")))
    written = sorted((json.loads(line) for line in io.StringIO(text)), key=lambda r: r["id"])
    assert list(written[0]) == ["id", "image", "text", "box", "found", "score", "confidence", "error"]
    for row, want in zip(written, out):
        assert row["id"] == want["id"] and row["error"] == want["error"] and row["found"] == want["found"]
        if want["box"] is not None:
            assert np.array_equal(np.float32(row["box"]), np.float32(want["box"]))
            assert row["score"] == pytest.approx(want["score"], abs=1e-6)
    assert (written[-1]["box"], written[-1]["score"], written[-1]["confidence"]) == (None, None, None)
