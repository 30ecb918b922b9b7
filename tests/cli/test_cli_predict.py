"""`ofa-ground predict`: output formats other tools parse (--json, --jsonl, the table), precision modes,
--draw, not found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ofa_grounding.cli import main


def test_predict_json(small_model_dir: Path, small_reference_dir: Path, small_cases: list[dict],
                      capsys: pytest.CaptureFixture) -> None:
    image = str(small_reference_dir / "images/noise_rgb_200x150.png")
    cases = small_cases[:2]
    assert all(c["image"] == "images/noise_rgb_200x150.png" for c in cases)
    assert main(["predict", "--model", str(small_model_dir), image, cases[0]["text"], cases[1]["text"],
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["image", "width", "height", "results"]
    assert (out["image"], out["width"], out["height"]) == (image, 200, 150)
    for r, c in zip(out["results"], cases):
        assert list(r) == ["text", "box", "score", "confidence", "found", "tokens", "raw_confidence", "calibrated",
                           "zoomed"]
        assert r["calibrated"] is False and r["raw_confidence"] == r["confidence"]
        assert r["text"] == c["text"] and r["tokens"] == c["tokens"]
        assert all(abs(a - b) < 1e-3 for a, b in zip(r["box"], c["box"]))


def test_json_and_jsonl_give_the_api_results_to_dict(small_grounder, small_model_dir: Path,
                                                     small_reference_dir: Path, small_cases: list[dict],
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One result-to-JSON for every output: --json's results are `GroundingResult.to_dict`, field for field and
    in order, and a --jsonl line is the same with the input's line number and image first and the image's size after
    the text."""
    image = small_reference_dir / small_cases[0]["image"]
    texts = [small_cases[0]["text"], "the blue square"]
    expected = [json.loads(json.dumps(r.to_dict(alternatives=True))) for r in small_grounder.predict(image, texts)]
    # the API's thread count: without --threads the CLI takes the idle cores, and another thread count sums in
    # another order (scores differ in the 7th digit when the machine is busy)
    threads = ["--threads", str(torch.get_num_threads())]
    assert main(["predict", "--model", str(small_model_dir), str(image), *texts, "--json", "--alternatives",
                 *threads]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results == expected and [list(r) for r in results] == [list(e) for e in expected]
    batch = tmp_path / "in.jsonl"
    batch.write_text("".join(json.dumps({"image": str(image), "text": t}) + "\n" for t in texts))
    assert main(["predict", "--model", str(small_model_dir), "--jsonl", str(batch), "--alternatives", *threads]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    width, height = small_grounder.load_image(image).size
    for n, (row, e) in enumerate(zip(rows, expected, strict=True), 1):
        assert row == {"line": n, "image": str(image), "width": width, "height": height, **e}
        assert list(row) == ["line", "image", "text", "width", "height", *list(e)[1:]]


def test_predict_table(small_model_dir: Path, small_reference_dir: Path, capsys: pytest.CaptureFixture) -> None:
    image = str(small_reference_dir / "images/scene_rgb_320x240.png")  # case s04: (44.20, 213.33, 171.69, 224.62)
    assert main(["predict", "--model", str(small_model_dir), image, "the red circle on the left"]) == 0
    out = capsys.readouterr().out
    assert "(320x240)" in out and "171.69" in out and "the red circle on the left" in out
    assert out.splitlines()[1].split()[-2:] == ["confidence", "text"] and " raw 0." in out  # no calibration


def test_a_calibrated_model_says_how_sure_everywhere(tiny_model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """With a calibration in grounding.json, the table, --json, --jsonl and --draw show the same probability."""
    from PIL import Image

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    constant = {"kind": "constant", "probability": 0.93, "reason": "test"}
    (model / "grounding.json").write_text(json.dumps({"calibration": {"format": 1, "box": constant,
                                                                      "not_found": constant}}))
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    assert main(["predict", "--model", str(model), str(image), "the red square", "--alternatives",
                 "--draw", str(tmp_path / "drawn.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("93 % sure  the red square") and "raw 0." in lines[3]  # alternatives stay raw
    assert main(["predict", "--model", str(model), str(image), "the red square", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["confidence"] == 0.93 and r["calibrated"] is True and 0 < r["raw_confidence"] < 1
    batch = tmp_path / "in.jsonl"
    batch.write_text(json.dumps({"image": str(image), "text": "the red square"}) + "\n")
    assert main(["predict", "--model", str(model), "--jsonl", str(batch)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["confidence"], row["calibrated"], row["raw_confidence"]) == (0.93, True, r["raw_confidence"])


@pytest.mark.slow
def test_predict_jsonl(small_model_dir: Path, small_reference_dir: Path, small_cases: list[dict],
                       tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(small_reference_dir / "images", tmp_path / "images")
    lines = [json.dumps({"image": small_cases[i]["image"], "text": small_cases[i]["text"]})
             for i in (0, 7, 1)]  # noise, portrait, noise again: grouped per image, printed in order
    lines.insert(1, json.dumps({"image": "images/missing.png", "text": "x"}))
    lines.insert(2, "{broken json")
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["predict", "--model", str(small_model_dir), "--jsonl", str(tmp_path / "in.jsonl"),
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    for row, i in zip((rows[0], rows[3], rows[4]), (0, 7, 1)):
        assert list(row) == ["line", "image", "text", "width", "height", "box", "score", "confidence", "found",
                             "tokens", "raw_confidence", "calibrated", "zoomed"]
        assert row["tokens"] == small_cases[i]["tokens"] and row["text"] == small_cases[i]["text"]
    assert rows[1]["image"] == "images/missing.png" and "not found" in rows[1]["error"]
    assert "in.jsonl:3" in rows[2]["error"]
    assert len(captured.err.strip().splitlines()) == 2  # one line per failed input


@pytest.mark.slow
def test_predict_precision_modes(small_model_dir: Path, small_reference_dir: Path, small_cases: list[dict],
                                 capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.metrics import box_overlap

    case = small_cases[0]
    for precision in ("fp32", "bf16"):
        assert main(["predict", "--model", str(small_model_dir), str(small_reference_dir / case["image"]), case["text"],
                     "--json", "--precision", precision, "--cache-mb", "0"]) == 0
        out = json.loads(capsys.readouterr().out)
        box = out["results"][0]["box"]
        if precision == "fp32":
            assert box_overlap(box, case["box"]) > 0.999
        else:  # not exact (random weights: near-tied bins, even x1 < x0 as in the reference), but in the image
            assert all(0 <= v <= side for v, side in zip(box, [out["width"], out["height"]] * 2)), box
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(small_model_dir), "--precision", "int8", "x.png", "t"])


def test_bf16_on_a_cpu_without_bf16_units_answers_with_one_warning(small_model_dir: Path, small_reference_dir: Path,
                                                                   small_cases: list[dict],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.hardware import NO_CPU_BF16_ENV

    monkeypatch.setenv(NO_CPU_BF16_ENV, "1")  # what an AVX2-only CPU answers
    case = small_cases[0]
    assert main(["predict", "--model", str(small_model_dir), str(small_reference_dir / case["image"]), case["text"],
                 "--json", "--precision", "bf16", "--cache-mb", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"][0]["tokens"] == case["tokens"]
    assert captured.err.strip().splitlines() == [
        "ofa-ground: warning: bf16 requested, but this CPU has no bfloat16 units (AVX-512 BF16 or AMX): running fp32, "
        "which is faster here and exact"]


@pytest.mark.slow
def test_predict_draw_writes_the_boxes(small_model_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from ofa_grounding.draw import PALETTE

    example = Path(__file__).resolve().parents[2] / "examples" / "shapes.png"
    out = tmp_path / "drawn.png"
    assert main(["predict", "--model", str(small_model_dir), str(example), "the red circle", "the blue square",
                 "--json", "--draw", str(out)]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    drawn, original = Image.open(out).convert("RGB"), Image.open(example).convert("RGB")
    assert drawn.size == original.size
    for result, colour in zip(results, PALETTE):
        x0, x1 = sorted((result["box"][0], result["box"][2]))
        y0, y1 = sorted((result["box"][1], result["box"][3]))
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(drawn.width - 1, x1), min(drawn.height - 1, y1)
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        # the outline's colour on the box's left edge, half-way down (labels sit above the box)
        assert drawn.getpixel((round(x0) + 1, round((y0 + y1) / 2))) == rgb or \
            drawn.getpixel((round(x1) - 1, round((y0 + y1) / 2))) == rgb
    assert main(["predict", "--model", str(small_model_dir), str(example), "x", "--draw",
                 str(tmp_path / "missing-dir" / "o.png")]) == 2
    assert "--draw" in capsys.readouterr().err
    assert main(["predict", "--model", str(small_model_dir), "--jsonl", "x.jsonl", "--draw", "o.png"]) == 2


def test_min_confidence_not_found_in_table_and_json(tiny_model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (20, 30, 200)).save(image)
    assert main(["predict", "--model", str(tiny_model_dir), str(image), "the blue square", "--min-confidence", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["found"] is False
    base = ["predict", "--model", str(tiny_model_dir), str(image), "the blue square"]
    assert main([*base, "--min-confidence", "1"]) == 0
    assert "not found" in capsys.readouterr().out
    assert main(["predict", "--model", str(tiny_model_dir), str(image), "the blue square", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["found"] is True
    assert main(["predict", "--model", str(tiny_model_dir), str(image), "x", "--min-confidence", "1.5"]) == 2
    assert "--min-confidence must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_empty_description_is_not_found(small_model_dir: Path, small_reference_dir: Path, small_cases: list[dict],
                                        capsys: pytest.CaptureFixture) -> None:
    case = next(c for c in small_cases if not c["text"].strip())
    assert main(["predict", "--model", str(small_model_dir), str(small_reference_dir / case["image"]), case["text"],
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["found"] is False and result["tokens"] == case["tokens"]
    assert main(["predict", "--model", str(small_model_dir), str(small_reference_dir / case["image"]), " "]) == 0
    assert "not found: empty description" in capsys.readouterr().out


def test_table_escapes_control_characters(tiny_model_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", "--model", str(tiny_model_dir), str(image), "red\x1b[2J circle\x07 à gauche"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "red\\x1b[2J circle\\x07 à gauche" in out  # readable, and non-ASCII letters kept
    assert main(["predict", "--model", str(tiny_model_dir), str(image), "red\x1b[2J", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["text"] == "red\x1b[2J"  # JSON keeps the text


def test_draw_target_checked_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    missing_model = str(tmp_path / "no-model")  # the --draw check must fail first, not the model's
    assert main(["predict", "--model", missing_model, str(image), "x", "--draw", str(tmp_path / "nope" / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ofa-ground: error: --draw {tmp_path / 'nope' / 'o.png'}: cannot write") and "\n" not in err
    assert main(["predict", "--model", missing_model, str(image), "x", "--draw", str(tmp_path / "o.xyz")]) == 2
    assert "unknown image type '.xyz'" in capsys.readouterr().err
    assert not (tmp_path / "o.xyz").exists()


def test_empty_jsonl_is_a_note_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    batch = tmp_path / "in.jsonl"
    batch.write_text("\n\n")
    assert main(["predict", "--model", str(tmp_path / "no-model"), "--jsonl", str(batch)]) == 0  # no model needed
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"ofa-ground: warning: --jsonl {batch}: no inputs, nothing to do"


def test_a_long_description_warns_as_a_warning(tiny_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", "--model", str(tiny_model_dir), str(image), "a red circle " * 800]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ofa-ground: warning: description truncated to 256 tokens")
    assert "error" not in err[0]


def test_dtype_is_a_deprecated_alias_of_precision(small_model_dir: Path, small_reference_dir: Path,
                                                  small_cases: list[dict], capsys: pytest.CaptureFixture) -> None:
    """--dtype (hidden from --help) still sets the precision mode for a release, saying so in one line."""
    from ofa_grounding.cli import build_parser

    case = small_cases[0]
    assert main(["predict", "--model", str(small_model_dir), str(small_reference_dir / case["image"]), case["text"],
                 "--json", "--dtype", "fp32", "--cache-mb", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"][0]["tokens"] == case["tokens"]
    assert captured.err.strip().splitlines() == [
        "ofa-ground: warning: --dtype is deprecated and will be removed in the next release; use --precision"]
    assert build_parser().parse_args(["predict", "--dtype", "bf16", "x.png", "t"]).precision == "bf16"
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(small_model_dir), "--dtype", "int8", "x.png", "t"])
