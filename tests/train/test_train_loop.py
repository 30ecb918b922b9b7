"""train/loop.py: short runs (validation, checkpoints, layouts), bit-exact resume after SIGKILL, time and step
limits, DDP, a run directory kept from being overwritten."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_runs import run_cli, run_killed_after

from ofa_grounding import Grounder
from ofa_grounding.checkpoint import read_checkpoint
from ofa_grounding.synthetic import write_synthetic
from ofa_grounding.train.config import TrainConfig
from ofa_grounding.train.loop import Trainer, validation_line
from ofa_grounding.train.terms import Forward, LossTerm


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    write_synthetic(out, 48, seed=4, size=(96, 96))
    return out


def _common(model: Path, data: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "4", "--lr", "1e-3",
            "--drop-path", "0.1", "--dropout", "0.1", "--augment", "flip,jitter", "--seed", "5"]


def test_the_trainer_in_parts(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    """Setup, one update, validation, the checkpoint and resume, each called on its own (in this process)."""
    cfg = TrainConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "run"), batch_size=4, max_steps=3,
                      val=str(data), val_limit=2, progress=False)
    trainer = Trainer(cfg)
    assert trainer.total == 3 and [term.name for term in trainer.terms] == ["task"]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.update([next(trainer.epoch_batches())])
    row = trainer.take_log()
    assert trainer.step == 1 and trainer.position == 4
    assert {"loss", "nll", "nll_x0", "nll_y1"} <= set(row) and float(row["loss"]) > float(row["nll"]) > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * 2 / 3)  # decaying after step 1 of 3
    summary = trainer.validate()
    assert {"acc50", "acc75", "miou"} <= set(summary) and trainer.model.training
    trainer.save_state()
    resumed = Trainer(dataclasses.replace(cfg, resume=True))
    assert (resumed.step, resumed.position, resumed.epoch) == (1, 4, 0)
    saved, restored = trainer.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys() and all(torch.equal(saved[i]["exp_avg"], restored[i]["exp_avg"])
                                                   for i in saved)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(cfg)


def test_each_validation_prints_one_line_with_or_without_the_bar(tiny_model_dir: Path, data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """train printed no validation results: one labelled line per validation on stderr, also with --no-progress
    (issue 28); the bar, when shown, is labelled train."""
    common = dict(model=str(tiny_model_dir), data=str(data), batch_size=4, max_steps=2, val=str(data), val_limit=2,
                  eval_every=1)
    Trainer(TrainConfig(**common, out=str(tmp_path / "quiet"), progress=False)).run()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if ": val " in line]
    assert [line.split(":")[0] for line in lines] == ["step 1/2", "step 2/2"], captured.err
    assert lines[0].startswith("step 1/2: val Acc@0.5 ") and " %, mIoU " in lines[0] and "(2 samples" in lines[0]
    assert "train:" not in captured.err and ": val " not in captured.out
    Trainer(TrainConfig(**common, out=str(tmp_path / "shown"), progress=True)).run()
    err = capsys.readouterr().err
    assert "train: 100%" in err and "| 2/2 [" in err and err.count(": val Acc@0.5") == 2, err


def test_the_validation_line_labels_every_number() -> None:
    summary = {"count": 400, "acc50": 0.6431, "acc75": 0.5, "miou": 0.58127, "absent": {"count": 40, "not_found": 0.9}}
    assert validation_line(1000, 5000, summary, best=True) == (
        "step 1000/5000: val Acc@0.5 64.3 %, Acc@0.75 50.0 %, mIoU 58.1 % (400 samples; absent objects answered "
        "not found 90.0 % of 40), best so far")
    del summary["absent"]
    assert validation_line(7, 9, summary, best=False).endswith("mIoU 58.1 % (400 samples)")


class _NaNTerm(LossTerm):
    """A loss part that makes every gradient NaN."""

    name = "nan"

    def __call__(self, fwd: Forward) -> list[torch.Tensor]:
        return [fwd.logits.float().sum() * float("nan")]


@pytest.mark.parametrize("log_every", [1, 2])
def test_a_non_finite_update_is_skipped(tiny_model_dir: Path, data: Path, tmp_path: Path, log_every: int,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """On the host (--log-every 1) or on the device (the fused AdamW told through found_inf): no parameter
    and no optimizer moment moves, and the log says so."""
    trainer = Trainer(TrainConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "run"),
                                  batch_size=4, max_steps=4, log_every=log_every, progress=False))
    trainer.terms.append(_NaNTerm())
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    with caplog.at_level("WARNING"):
        trainer.update([next(trainer.epoch_batches())])
        trainer.take_log()
    assert all(torch.equal(before[name], p) for name, p in trainer.model.named_parameters())
    assert all(not state["exp_avg"].any() for state in trainer.optimizer.state.values())
    assert trainer.step == 1 and "skipped" in caplog.text and "non-finite gradient norm" in caplog.text


@pytest.mark.slow
def test_short_run_validates_saves_and_loads(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli([*_common(tiny_model_dir, data, out), "--max-steps", "4", "--accum", "2", "--val", str(data),
                   "--val-limit", "4", "--eval-every", "2", "--save-every", "2", "--modelscope",
                   "--group-by-image", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["best"] is not None
    validations = [line.split(": val ")[0] for line in proc.stderr.splitlines() if ": val Acc@0.5 " in line]
    assert validations == ["step 2/4", "step 4/4"], proc.stderr  # printed with --no-progress too
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr,loss") and len(rows) == 5 and rows[2].split(",")[6] != ""
    before = read_checkpoint(tiny_model_dir).model.state_dict()
    after = read_checkpoint(out / "last").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    Grounder.from_pretrained(out / "best").predict(data / "images/000000.png", "the largest star")
    # --modelscope: the ModelScope layout, pytorch_model.bin with every OFA key and no model.safetensors
    # (ModelScope would prefer that file, where the tied output projection is stored only once)
    assert not (out / "last/model.safetensors").exists()
    assert "decoder.output_projection.weight" in torch.load(out / "last/pytorch_model.bin", weights_only=True)


SIX_STEPS = ["--max-steps", "6", "--save-every", "3"]


@pytest.fixture(scope="module")
def six_step_run(tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of SIX_STEPS, which interrupted and resumed runs must match."""
    out = tmp_path_factory.mktemp("whole") / "run"
    whole = run_cli([*_common(tiny_model_dir, data, out), *SIX_STEPS])
    assert whole.returncode == 0, whole.stderr[-3000:]
    return out


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tiny_model_dir: Path, data: Path, six_step_run: Path,
                                           tmp_path: Path) -> None:
    args, whole = SIX_STEPS, six_step_run
    killed = run_killed_after(4, [*_common(tiny_model_dir, data, tmp_path / "cut"), *args])
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL one step after the checkpoint: no clean-up ran
    assert json.loads((tmp_path / "cut/last/trainer_state.json").read_text())["step"] == 3
    resumed = run_cli([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(whole / "last/model.safetensors"))
    b = load_file(str(tmp_path / "cut/last/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = load_file(str(whole / "last/trainer_state.safetensors"))
    sb = load_file(str(tmp_path / "cut/last/trainer_state.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    steps = [line.split(",")[0] for line in (tmp_path / "cut/log.csv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(1, 7)]  # the row logged after the checkpoint is not repeated

    def losses(run: Path) -> list[str]:
        return [line.split(",")[3] for line in (run / "log.csv").read_text().splitlines()[1:]]

    assert losses(tmp_path / "cut") == losses(whole)


@pytest.mark.slow
def test_logging_every_n_updates_trains_the_same(tiny_model_dir: Path, data: Path, six_step_run: Path,
                                                 tmp_path: Path) -> None:
    """--log-every 3 (the host reads the device every third update) gives the same weights as reading it every
    update, and rows at steps 3 and 6 holding the means over their three updates."""
    out = tmp_path / "every3"
    proc = run_cli([*_common(tiny_model_dir, data, out), *SIX_STEPS, "--log-every", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(six_step_run / "last/model.safetensors"))
    b = load_file(str(out / "last/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def rows(run: Path) -> list[dict[str, str]]:
        header, *lines = (run / "log.csv").read_text().splitlines()
        return [dict(zip(header.split(","), line.split(","))) for line in lines]

    every, sparse = rows(six_step_run), rows(out)
    assert [r["step"] for r in sparse] == ["3", "6"]
    for row, window in zip(sparse, (every[:3], every[3:])):  # equal token counts: the plain mean
        for column in ("loss", "nll", "nll_x0"):
            mean = sum(float(r[column]) for r in window) / 3
            assert float(row[column]) == pytest.approx(mean, abs=1e-4), column
        assert row["lr"] == window[-1]["lr"]


@pytest.mark.slow
def test_time_limit_stops_and_saves_and_image_size_is_kept(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "short"
    proc = run_cli([*_common(tiny_model_dir, data, out), "--max-steps", "50", "--max-minutes", "0.0001",
                   "--image-size", "64"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["out_of_time"]
    assert json.loads((out / "last/trainer_state.json").read_text())["step"] == 1
    ckpt = read_checkpoint(out / "last")
    assert ckpt.preprocess.patch_image_size == ckpt.preprocess.max_image_size == 64  # the model's was 128


@pytest.mark.slow
def test_stop_at_step_keeps_the_schedule_and_resumes_to_the_end(tiny_model_dir: Path, data: Path,
                                                                 six_step_run: Path, tmp_path: Path) -> None:
    args = SIX_STEPS
    cut = run_cli([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--stop-at-step", "2"])
    assert cut.returncode == 0, cut.stderr[-3000:]
    summary = json.loads(cut.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["stopped_early"] and not summary["out_of_time"]
    assert json.loads((tmp_path / "cut/last/trainer_state.json").read_text())["step"] == 2  # saved off-cycle

    def rows(run: Path) -> list[list[str]]:
        return [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]

    # the learning rates of a 6-step schedule (a 2-step run would have decayed to 0 by step 2)
    assert [r[2] for r in rows(tmp_path / "cut")] == [r[2] for r in rows(six_step_run)[:2]]
    again = run_cli([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--stop-at-step", "2", "--resume"])
    assert again.returncode != 0 and "already at step 2" in again.stderr
    resumed = run_cli([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(six_step_run / "last/model.safetensors"))
    b = load_file(str(tmp_path / "cut/last/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r[3] for r in rows(tmp_path / "cut")] == [r[3] for r in rows(six_step_run)]


@pytest.mark.slow
def test_two_processes_ddp(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--lr", "1e-4", "--seed", "5", "--max-steps", "2"]
    double = run_cli([*common, "--out", str(tmp_path / "ddp"), "--batch-size", "4"], nproc=2)
    assert double.returncode == 0, double.stderr[-3000:]
    state = json.loads((tmp_path / "ddp/last/trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    assert {"rng.torch.0", "rng.torch.1"} <= set(load_file(str(tmp_path / "ddp/last/trainer_state.safetensors")))
    # The same 8 samples per update as one process with batch 8 (the ranks take alternate positions of one
    # shuffled order), and gradients averaged: the parameters stay within what BatchNorm's per-process
    # batch statistics change (AdamW moves a parameter by at most ~lr per step).
    single = run_cli([*common, "--out", str(tmp_path / "one"), "--batch-size", "8"])
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_file(str(tmp_path / "ddp/last/model.safetensors"))
    b = load_file(str(tmp_path / "one/last/model.safetensors"))
    init = read_checkpoint(tiny_model_dir).model.state_dict()
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert max((a[k] - b[k]).abs().max().item() for k in params) < 4e-4
    assert max((a[k] - init[k]).abs().max().item() for k in params) > 5e-5  # both trained


@pytest.mark.slow
def test_a_run_directory_is_not_overwritten_unasked(tmp_path: Path) -> None:
    data = tmp_path / "syn"
    write_synthetic(data, 8, seed=4, size=(64, 64))
    out = tmp_path / "run"
    args = ["--model", "preset:demo", "--data", str(data), "--out", str(out), "--max-steps", "1", "--batch-size", "2",
            "--image-size", "64"]
    assert run_cli(args).returncode == 0
    (out / "best").mkdir()
    (out / "best" / "stale.txt").write_text("from the old run")
    before = (out / "log.csv").read_text()
    again = run_cli(args)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (out / "log.csv").read_text() == before
    fresh = run_cli([*args, "--overwrite"])
    assert fresh.returncode == 0, fresh.stderr
    assert not (out / "best").exists() and (out / "last" / "trainer_state.json").is_file()


def test_copy_backbone_takes_the_resnet_and_leaves_the_rest() -> None:
    """`train --backbone-from`: the source's ResNet (weights and BatchNorm statistics) replaces the fresh one; the
    projection to the model's own width and everything after it stay; another backbone width is refused."""
    from conftest import TINY_CONFIG
    from ofa_grounding.config import OFAConfig
    from ofa_grounding.model import OFAModel, init_weights
    from ofa_grounding.train.loop import copy_backbone

    torch.manual_seed(0)
    source = init_weights(OFAModel(OFAConfig(**TINY_CONFIG)), std=0.2)
    source.encoder.embed_images.bn1.running_mean.uniform_()
    narrower = {**TINY_CONFIG, "d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "decoder_layers": 1}
    model = init_weights(OFAModel(OFAConfig(**narrower)))
    before = {k: v.clone() for k, v in model.state_dict().items() if "embed_images" not in k}
    copy_backbone(model, source, "src")
    for key, value in source.encoder.embed_images.state_dict().items():
        assert torch.equal(model.encoder.embed_images.state_dict()[key], value), key
    for key, value in model.state_dict().items():
        if "embed_images" not in key:
            assert torch.equal(value, before[key]), key
    other = OFAModel(OFAConfig(**{**narrower, "resnet_width": 16}))
    with pytest.raises(ValueError, match="--backbone-from src: its backbone is resnet18 at width 64"):
        copy_backbone(other, source, "src")


def test_backbone_from_refuses_what_it_cannot_copy(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    """--backbone-from names trained weights of the same backbone; anything else is one line, exit 2."""
    common = ["--model", "preset:mini", "--data", str(data), "--max-steps", "1", "--batch-size", "2"]
    missing = run_cli([*common, "--out", str(tmp_path / "a"), "--backbone-from", str(tmp_path / "nowhere")])
    assert missing.returncode == 2 and "--backbone-from" in missing.stderr and "Traceback" not in missing.stderr
    other = run_cli([*common, "--out", str(tmp_path / "b"), "--backbone-from", str(tiny_model_dir)])
    assert other.returncode == 2 and "its backbone is resnet18 at width 64" in other.stderr, other.stderr[-800:]
    assert "Traceback" not in other.stderr
