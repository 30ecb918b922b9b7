"""ONNX export: the graphs run in onnxruntime through the same beam search and give torch's tokens."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import parity_params
from ofa_grounding import Grounder
from ofa_grounding.checkpoint import read_checkpoint
from ofa_grounding.cli import main
from ofa_grounding.onnx_export import GRAPHS, _quiet_known_tracer_warnings, export_onnx, onnx_grounder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Exports a model folder once per module."""
    done: dict[Path, Path] = {}

    def export(model_dir: Path) -> Path:
        if model_dir not in done:
            done[model_dir] = export_onnx(read_checkpoint(model_dir), tmp_path_factory.mktemp("onnx"))
        return done[model_dir]

    return export


@pytest.fixture(scope="module")
def exported(exports: Callable[[Path], Path], small_model_dir: Path) -> Path:
    return exports(small_model_dir)


@pytest.mark.slow
def test_export_writes_the_graphs(exported: Path) -> None:
    for name in GRAPHS:
        assert (exported / f"{name}.onnx").stat().st_size > 0
    meta = json.loads((exported / "onnx_config.json").read_text())
    assert meta["steps"] == 5 and meta["grid"] == [16, 16] and meta["layers"] == 1  # 256 px, 1 decoder layer
    assert len(meta["output_ids"]) == 1004  # ids 0..3 and the 1000 bins stay open
    import onnx

    step = onnx.load(str(exported / "decoder_step.onnx"))
    inputs = [i.name for i in step.graph.input]
    outputs = [o.name for o in step.graph.output]
    assert "past_k_0" in inputs and "past_v_0" in inputs and "present_k_0" in outputs and "logits" in outputs
    assert "past_k_1" not in inputs


@pytest.mark.slow
@pytest.mark.parametrize("ref", parity_params())
def test_onnxruntime_gives_the_reference_tokens(exports: Callable[[Path], Path], ref: Path) -> None:
    """The reference's own tokens for a spread of cases, one by one and batched: the small in-repo fixture and
    ../shared/reference."""
    doc = json.loads((ref / "cases.json").read_text(encoding="utf-8"))
    cases = doc["cases"][::6]
    g = onnx_grounder(exports(ref / doc["model_dir"]))
    for case in cases[:4]:
        r = g.predict(ref / case["image"], case["text"])
        assert list(r.tokens) == case["tokens"], case["text"]
        assert r.box == pytest.approx(case["box"], abs=1e-3)
    batch = g.predict_batch([(ref / c["image"], c["text"]) for c in cases])
    assert len(batch) == len(cases) >= 3
    assert [list(r.tokens) for r in batch] == [c["tokens"] for c in cases]


@pytest.mark.slow
def test_onnx_matches_torch_on_several_descriptions(exported: Path, small_grounder: Grounder) -> None:
    texts = ["the red circle on the left", "the blue square", "a small yellow circle at the bottom of the picture"]
    ours = small_grounder.predict(EXAMPLE, texts)
    theirs = onnx_grounder(exported).predict(EXAMPLE, texts)
    for a, b in zip(ours, theirs):
        assert a.tokens == b.tokens and [x.tokens for x in a.alternatives] == [x.tokens for x in b.alternatives]
        assert a.score == pytest.approx(b.score, abs=1e-4)


def test_cli_export_and_predict(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export-onnx", str(tiny_model_dir), str(tmp_path / "onnx")]) == 0
    assert "decoder_step.onnx" in capsys.readouterr().out
    assert main(["predict", "--onnx", str(tmp_path / "onnx"), str(EXAMPLE), "the red circle", "--json"]) == 0
    onnx_box = json.loads(capsys.readouterr().out)["results"][0]["box"]
    assert main(["predict", "--model", str(tiny_model_dir), str(EXAMPLE), "the red circle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["box"] == pytest.approx(onnx_box, abs=1e-3)
    assert main(["predict", "--onnx", str(tmp_path), str(EXAMPLE), "x"]) == 2
    assert "not an export-onnx folder" in capsys.readouterr().err


def test_export_keeps_a_non_empty_folder_and_prints_no_tracer_warnings(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """As `convert`: a non-empty output folder is refused (exit 2, one line) unless --overwrite; the two
    TracerWarnings every export used to print are silenced (issue 28)."""
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export-onnx", str(tiny_model_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"ofa-ground: error: {out} exists and is not empty (use --overwrite to replace it)\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["export-onnx", str(tiny_model_dir), str(out / "notes.txt")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    for opset in ("13", "999"):  # attention needs 14; 999 is newer than any torch writes
        assert main(["export-onnx", str(tiny_model_dir), str(tmp_path / "new"), "--opset", opset]) == 2
        assert "--opset must be 14-" in capsys.readouterr().err and not (tmp_path / "new").exists()
    with warnings.catch_warnings(record=True) as caught:
        # the filters a user's process has: torch's own, hiding TracerWarnings from torch.* (pytest drops it
        # when it restores the filters after collection), and ours from ofa_grounding shown each time
        torch.jit.TracerWarning.ignore_lib_warnings()
        warnings.filterwarnings("always", category=torch.jit.TracerWarning, module=r"ofa_grounding\.")
        assert main(["export-onnx", str(tiny_model_dir), str(out), "--overwrite"]) == 0
    assert (out / "decoder_step.onnx").stat().st_size > 0 and (out / "notes.txt").read_text() == "mine"
    tracer = [(w.filename, w.lineno, str(w.message)) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer, tracer
    assert "TracerWarning" not in capsys.readouterr().err


def test_only_the_known_tracer_warnings_are_silenced_and_only_inside() -> None:
    known = "Converting a tensor to a Python boolean might cause the trace to be incorrect. We can't record ..."
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _quiet_known_tracer_warnings():
            warnings.warn_explicit(known, torch.jit.TracerWarning, "model.py", 1, module="ofa_grounding.model")
            warnings.warn_explicit("Converting a tensor to a Python index", torch.jit.TracerWarning, "model.py", 2,
                                   module="ofa_grounding.model")
            warnings.warn_explicit(known, torch.jit.TracerWarning, "other.py", 3, module="someone.else")
            warnings.warn_explicit(known, UserWarning, "model.py", 4, module="ofa_grounding.model")
        warnings.warn_explicit(known, torch.jit.TracerWarning, "model.py", 5, module="ofa_grounding.model")
    assert [w.lineno for w in caught] == [2, 3, 4, 5]
    assert warnings.filters == before


@pytest.mark.slow
def test_a_model_with_entangled_positions_exports_and_matches_torch(tmp_path: Path) -> None:
    """The demo preset entangles positions in the decoder too: each step's position embedding is an input of
    the step graph (zeros for OFA's published models)."""
    import torch

    from ofa_grounding.checkpoint import save_checkpoint
    from ofa_grounding.config import GenerationConfig, OFAConfig, PreprocessConfig
    from ofa_grounding.model import OFAModel, init_weights
    from ofa_grounding.tokenizer import ASSETS_DIR

    torch.manual_seed(3)
    cfg = OFAConfig(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18",
                    resnet_width=16, entangle_position_embedding=True)
    model = init_weights(OFAModel(cfg), std=0.3).eval()
    with torch.no_grad():  # positions strong enough to decide the answer
        model.decoder.embed_positions.weight.mul_(20)
    directory = save_checkpoint(tmp_path / "m", model, ASSETS_DIR, PreprocessConfig(patch_image_size=64,
                                                                                   max_image_size=64),
                                GenerationConfig())
    out = export_onnx(read_checkpoint(directory), tmp_path / "onnx")
    texts = ["the red circle", "the blue square on the right", "a"]
    ours = onnx_grounder(out).predict(EXAMPLE, texts)
    torch_results = Grounder.from_pretrained(directory).predict(EXAMPLE, texts)
    assert [r.tokens for r in ours] == [r.tokens for r in torch_results]
    for a, b in zip(ours, torch_results):
        assert a.score == pytest.approx(b.score, abs=1e-4)
    disentangled = Grounder.from_pretrained(directory)
    disentangled.model.config.entangle_position_embedding = False
    assert [r.tokens for r in disentangled.predict(EXAMPLE, texts)] != [r.tokens for r in ours]  # positions matter


@pytest.mark.slow
def test_an_export_carries_the_calibration_and_threshold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The bundled model's grounding.json goes with its graphs: the ONNX run reports the same calibrated
    confidence as torch, and --min-confidence given with --onnx is applied."""
    assert main(["export-onnx", "demo", str(tmp_path / "onnx")]) == 0
    torch_result = Grounder.from_pretrained("demo").predict(EXAMPLE, "the red circle")
    onnx_result = onnx_grounder(tmp_path / "onnx").predict(EXAMPLE, "the red circle")
    assert onnx_result.calibrated and torch_result.calibrated
    assert onnx_result.confidence == pytest.approx(torch_result.confidence, abs=1e-3)
    assert (tmp_path / "onnx" / "README.md").read_text(encoding="utf-8") == Grounder.from_pretrained("demo").card
    capsys.readouterr()
    assert main(["predict", "--onnx", str(tmp_path / "onnx"), str(EXAMPLE), "the red circle", "--json",
                 "--min-confidence", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["found"] is False  # nothing is 100 % sure
