"""Evaluation bookkeeping (with a stand-in model whose answers are known), the CLI, and torchrun sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ofa_grounding.data import DataError, read_jsonl
from ofa_grounding.evaluate import PREDICTION_KEYS, evaluate
from ofa_grounding.image import load_image
from ofa_grounding.predictor import GroundingResult
from ofa_grounding.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


class StandIn:
    """Answers the ground truth for texts containing "good", a box far away otherwise."""

    batch_size = 4

    def __init__(self, truth: dict[str, list[float]]) -> None:
        self.truth, self.calls, self.batches = truth, [], []

    def load_image(self, image):
        return load_image(image)

    def predict_batch(self, items):
        self.batches.append([len(texts) for _, texts in items])
        return [self._predict(image, texts) for image, texts in items]

    def _predict(self, image, texts):
        self.calls.append(list(texts))
        return [GroundingResult(t, tuple(self.truth[t]) if "good" in t else (0.0, 0.0, 1.0, 1.0), -1.0, 0.5,
                                (0, 0, 0, 0), image.size) for t in texts]


def _write(folder: Path, rows: list[dict]) -> Path:
    Image.new("RGB", (100, 80)).save(folder / "a.png")
    Image.new("RGB", (50, 50)).save(folder / "b.png")
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_accuracy_bookkeeping_and_grouping(tmp_path: Path) -> None:
    rows = [{"image": "a.png", "text": "good one", "box": [10, 10, 50, 50], "kind": "relation"},
            {"image": "a.png", "text": "bad one", "box": [10, 10, 50, 50], "kind": "ordinal"},
            {"image": "a.png", "text": "good two", "box": [60, 10, 90, 70], "kind": "relation"},
            {"image": "b.png", "text": "good three", "box": [1, 1, 20, 20]},
            {"image": "missing.png", "text": "good four", "box": [1, 1, 2, 2]},
            {"image": "b.png", "text": "good five", "box": [10, 10, 80, 40]}]  # sticks out of the 50x50 image
    path = _write(tmp_path, rows)
    model = StandIn({r["text"]: r["box"] for r in rows})
    report = evaluate(model, read_jsonl(path), "test", progress=False)
    assert model.calls == [["good one", "bad one", "good two"], ["good three"]]  # bad samples never reach it
    assert model.batches == [[3, 1]]  # both images' descriptions in one call: 4, the batch size
    assert [r["text"] for r in report.records] == ["good one", "bad one", "good two", "good three"]
    assert report.summary["count"] == 4 and report.summary["acc50"] == 0.75 and report.summary["acc75"] == 0.75
    assert report.breakdowns()["expression kind"]["relation"]["acc50"] == 1.0
    assert [i.where for i in report.issues] == ["d.jsonl:5 (d:5)", "d.jsonl:6 (d:6)"]
    assert "not found" in report.issues[0].message and "outside" in report.issues[1].message
    assert all(list(p) == list(PREDICTION_KEYS) for p in report.predictions())
    with pytest.raises(DataError, match="d.jsonl:5"):
        evaluate(model, read_jsonl(path, strict=True), "test", progress=False)


def test_sharding_takes_disjoint_groups(tmp_path: Path) -> None:
    rows = [{"image": "a.png" if i % 3 else "b.png", "text": f"good {i}", "box": [1, 1, 40, 40]} for i in range(9)]
    path = _write(tmp_path, rows)
    model = StandIn({r["text"]: r["box"] for r in rows})
    parts = [evaluate(model, read_jsonl(path), progress=False, rank=r, world_size=2).records for r in (0, 1)]
    ids = [[r["id"] for r in p] for p in parts]
    assert not set(ids[0]) & set(ids[1]) and len(ids[0]) + len(ids[1]) == 9


def test_ranks_reports_merge_into_the_single_process_one(tmp_path: Path) -> None:
    """What rank 0 makes of every rank's report under torchrun (`DistributedContext.gather` -> `EvalReport.merge`)."""
    from ofa_grounding.distributed import DistributedContext
    from ofa_grounding.evaluate import EvalReport

    rows = [{"image": "a.png" if i % 3 else "b.png", "text": f"good {i}", "box": [1, 1, 40, 40]} for i in range(9)]
    rows.append({"image": "missing.png", "text": "good 9", "box": [1, 1, 2, 2]})
    path = _write(tmp_path, rows)
    model = StandIn({r["text"]: r["box"] for r in rows})
    whole = evaluate(model, read_jsonl(path), "test", progress=False)
    parts = [evaluate(model, read_jsonl(path), "test", progress=False, rank=r, world_size=2) for r in (0, 1)]
    merged = EvalReport.merge(parts)
    assert merged.records == whole.records and merged.split == "test"
    assert [str(i) for i in merged.issues] == [str(i) for i in whole.issues]
    assert DistributedContext().gather(whole) is whole  # one process: nothing to gather


def test_the_progress_bar_has_the_number_of_samples_as_its_total(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """eval's bar says "n/N" (it had no total), and reaches N though some samples are skipped as unusable."""
    rows = [{"image": "a.png", "text": f"good {i}", "box": [10, 10, 50, 50]} for i in range(4)]
    rows += [{"image": "missing.png", "text": "good 4", "box": [1, 1, 2, 2]},
             {"image": "b.png", "text": "good 5", "box": [10, 10, 80, 40]}]  # sticks out of the 50x50 image
    path = _write(tmp_path, rows)
    model = StandIn({r["text"]: r["box"] for r in rows})
    report = evaluate(model, read_jsonl(path), "test")
    err = capsys.readouterr().err
    assert len(report.records) == 4 and len(report.issues) == 2  # the counting pass leaves no extra issues
    assert "eval test: 100%" in err and "| 6/6 [" in err, err
    evaluate(model, read_jsonl(path), "test", limit=3)
    assert "| 3/3 [" in capsys.readouterr().err
    # groups (runs of one image, at most 4): a.png's four, missing.png, b.png; rank 0 of 2 takes the 1st and 3rd
    report = evaluate(model, read_jsonl(path), "test", rank=0, world_size=2)
    assert len(report.records) == 4 and "| 5/5 [" in capsys.readouterr().err
    evaluate(model, read_jsonl(path), "test", progress=False)
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    write_synthetic(out, 40, seed=1, size=(96, 96))
    return out


def _run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.slow
def test_cli_eval_single_and_two_processes_agree(tiny_model_dir: Path, synthetic: Path, tmp_path: Path) -> None:
    common = ["eval", "--model", str(tiny_model_dir), "--data", str(synthetic), "--split", "train", "--split",
              "test", "--json", "--no-progress"]
    single = _run(["-m", "ofa_grounding.cli", *common, "--workers", "1", "--out", str(tmp_path / "one.jsonl")])
    assert single.returncode == 0, single.stderr
    double = _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                   "-m", "ofa_grounding.cli", *common, "--out", str(tmp_path / "two.jsonl")])
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = json.loads(single.stdout), json.loads(double.stdout)
    assert one["processes"] == 1 and two["processes"] == 2
    for split in ("train", "test"):
        a, b = one["splits"][split], two["splits"][split]
        assert a["count"] > 0 and {k: a[k] for k in ("count", "acc50", "acc75", "miou", "breakdowns")} == {
            k: b[k] for k in ("count", "acc50", "acc75", "miou", "breakdowns")}
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()


def test_cli_eval_table_and_bad_data(tiny_model_dir: Path, synthetic: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.cli import main

    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(synthetic), "--no-progress",
                 "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["split", "count", "Acc@0.5", "Acc@0.75", "mIoU"]
    assert "by expression kind" in out and "samples in" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "nope.png", "text": "x", "box": [0, 0, 5, 5]}\n{oops\n')
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(bad), "--no-progress"]) == 1  # none usable
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "bad.jsonl:1" in err and "not found" in err and "no usable samples" in err
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(bad), "--strict", "--no-progress"]) == 1
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "none"), "--no-progress"]) == 2


def test_make_synthetic_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.cli import main

    assert main(["make-synthetic", str(tmp_path / "s"), "--world", "v1", "--n", "30", "--seed", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(out["counts"].values()) == 30 and "largest object" in out["baselines_acc50"]["train"]
    # the default world is v2; a folder that already holds a dataset is refused (exit 2), not overwritten
    assert main(["make-synthetic", str(tmp_path / "w"), "--n", "20", "--seed", "2", "--max-side", "400", "--json"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "w" / "train.jsonl").open()]
    assert rows and all(r["world"] == "v2" for r in rows)
    capsys.readouterr()
    assert main(["make-synthetic", str(tmp_path / "w"), "--n", "20", "--seed", "3"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert main(["make-synthetic", str(tmp_path / "x"), "--n", "20", "--max-side", "2000"]) == 2
    capsys.readouterr()
    for bad in (["--corner-squares", "1.5"], ["--corner-squares", "0.5", "--world", "v1"]):
        assert main(["make-synthetic", str(tmp_path / "x"), "--n", "20", *bad]) == 2
        assert "--corner-squares" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "cut" / "images").mkdir(parents=True)  # what an interrupted run leaves: images, no rows
    (tmp_path / "cut" / "images" / "000000.png").write_bytes(b"png")
    assert main(["make-synthetic", str(tmp_path / "cut"), "--n", "20"]) == 2
    assert "no .jsonl files (an interrupted make-synthetic?)" in capsys.readouterr().err
    (tmp_path / "labels").mkdir()  # a folder with a split file of someone else's
    (tmp_path / "labels" / "val.jsonl").write_text("mine\n")
    (tmp_path / "file").write_text("mine")
    capsys.readouterr()
    for out in ("labels", "file"):
        assert main(["make-synthetic", str(tmp_path / out), "--n", "20"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert (tmp_path / "labels" / "val.jsonl").read_text() == "mine\n" and (tmp_path / "file").read_text() == "mine"


def test_batching_across_images_answers_as_one_call_per_image(tiny_model_dir: Path, synthetic: Path) -> None:
    """Several images' descriptions in one predict_batch call: the same boxes as `predict` on each, scores to float
    rounding (other padding in the batch)."""
    from ofa_grounding import Grounder
    from ofa_grounding.data import open_dataset

    grounder = Grounder.from_pretrained(tiny_model_dir, batch_size=8, cache_mb=0)
    report = evaluate(grounder, open_dataset(synthetic, split="train"), "train", progress=False, limit=24)
    images = {r["id"]: s.image for s in open_dataset(synthetic, split="train") for r in report.records
              if r["id"] == s.id}
    assert len(report.records) == 24 and len(set(images.values())) >= 4
    for r in report.records:
        one = grounder.predict(images[r["id"]], r["text"])
        assert list(one.box) == r["box"] and one.score == pytest.approx(r["score"], abs=1e-5), r["id"]
