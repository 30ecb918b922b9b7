"""Distillation: layer maps, the extra loss terms, gradients to the student only, a short `distill` run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_runs import run_cli

from conftest import TINY_CONFIG
from ofa_grounding.checkpoint import read_checkpoint, save_checkpoint
from ofa_grounding.config import GenerationConfig, OFAConfig, PreprocessConfig
from ofa_grounding.model import OFAModel, init_weights
from ofa_grounding.synthetic import write_synthetic
from ofa_grounding.tokenizer import ASSETS_DIR, OFATokenizer
from ofa_grounding.train.distill import DistillConfig, Distiller, layer_pairs


def test_layer_pairs() -> None:
    assert layer_pairs(4, 12, "first") == [(0, 0), (1, 1), (2, 2), (3, 3)]  # OFA-Compress: the first 4 of 12
    assert layer_pairs(4, 12, "uniform") == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert layer_pairs(2, 2, "uniform") == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="more layers"):
        layer_pairs(3, 2, "first")
    with pytest.raises(ValueError, match="layer map"):
        layer_pairs(2, 2, "last")


def _student(layers: int = 1, d: int = 16) -> OFAModel:
    torch.manual_seed(1)
    cfg = dict(TINY_CONFIG, d_model=d, encoder_layers=layers, decoder_layers=layers, encoder_ffn_dim=32,
               decoder_ffn_dim=32)
    return init_weights(OFAModel(OFAConfig(**cfg)), std=0.2)


def _batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[0, 100, 200, 2], [0, 300, 2, 1]]), "patch_images": torch.randn(2, 3, 64, 64),
            "prev_tokens": torch.tensor([[0, 58500, 58600, 58700, 58800]] * 2)}


def test_gradients_reach_the_student_only(tiny_model_dir: Path) -> None:
    teacher = read_checkpoint(tiny_model_dir).model
    student = _student().train()
    distiller = Distiller(DistillConfig(teacher=str(tiny_model_dir)), teacher, student)
    vocab = torch.arange(58457, 59457)
    batch = _batch()
    out = distiller.teacher_forward(batch, vocab)
    t_attn = out.recording.attention
    assert len(t_attn) == 2 and t_attn[0].shape == (2, 2, 20, 20) and t_attn[1].shape == (2, 2, 5, 5)
    assert out.recording.hidden == [] and list(distiller.parameters()) == []  # hidden states: off by default
    with distiller.recording(student, 0) as rec:
        logits = student(batch["input_ids"], batch["patch_images"], batch["prev_tokens"], vocab,
                         record=rec.attention_record)
        kd, att, hid = distiller.losses(logits, rec, out, batch["input_ids"])
    assert kd.item() > 0 and att.item() > 0 and hid.item() == 0
    (kd + att).backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    assert all(not layer._forward_hooks for layer in student.encoder.layers)  # no hook outlives the context


def test_hidden_states_are_matched_through_learned_projections(tiny_model_dir: Path) -> None:
    """Teacher d 32, student d 16: one 16 -> 32 projection per mapped layer pair; gradients reach the
    student and the projections, not the teacher; padded text positions do not count."""
    teacher = read_checkpoint(tiny_model_dir).model
    student = _student().train()
    distiller = Distiller(DistillConfig(teacher=str(tiny_model_dir), attn_weight=0, hidden_weight=1.0), teacher,
                          student)
    assert [tuple(p.shape) for p in distiller.parameters()] == [(32, 16), (32,), (32, 16), (32,)]
    vocab = torch.arange(58457, 59457)
    batch = _batch()
    out = distiller.teacher_forward(batch, vocab)
    assert out.recording.attention == [] and [h.shape for h in out.recording.hidden] == [(2, 20, 32), (2, 5, 32)]
    with distiller.recording(student, 0) as rec:
        logits = student(batch["input_ids"], batch["patch_images"], batch["prev_tokens"], vocab,
                         record=rec.attention_record)
        _, att, hid = distiller.losses(logits, rec, out, batch["input_ids"])
    assert att.item() == 0 and hid.item() > 0
    # by hand: encoder pair with the pad of sample 1 (its last text token) left out, plus the decoder pair
    enc_s, dec_s = rec.hidden
    proj = distiller.projections
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[1, -1] = False
    enc_err = ((proj[0](enc_s) - out.recording.hidden[0]) ** 2)[keep].mean()
    dec_err = ((proj[1](dec_s) - out.recording.hidden[1]) ** 2).mean()
    assert hid.item() == pytest.approx((enc_err + dec_err).item(), rel=1e-5)
    hid.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.parameters())
    assert student.encoder.layers[0].fc1.weight.grad.abs().sum() > 0


def test_kd_term_vanishes_against_itself(tiny_model_dir: Path) -> None:
    """Teacher == student: the attention term is 0 and the soft-label term is the teacher's entropy."""
    teacher = read_checkpoint(tiny_model_dir).model
    student = read_checkpoint(tiny_model_dir).model.eval()
    distiller = Distiller(DistillConfig(teacher=str(tiny_model_dir), attn_heads="mean"), teacher, student)
    vocab = torch.arange(58457, 59457)
    b = _batch()
    b["patch_images"] = torch.zeros_like(b["patch_images"])
    out = distiller.teacher_forward(b, vocab)
    with torch.no_grad(), distiller.recording(student, 0) as rec:
        logits = student(b["input_ids"], b["patch_images"], b["prev_tokens"], vocab, record=rec.attention_record)
        kd, att, _ = distiller.losses(logits, rec, out, b["input_ids"])
    p = torch.softmax(out.logits.reshape(-1, 1000), -1)
    entropy = -(p * p.log()).sum()
    assert att.item() == pytest.approx(0.0, abs=1e-10)
    assert kd.item() == pytest.approx(entropy.item(), rel=1e-4)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("student")
    return save_checkpoint(out, _student(), ASSETS_DIR, PreprocessConfig(patch_image_size=128, max_image_size=128),
                           GenerationConfig())


def test_the_distill_bar_says_distill_and_validations_are_printed(tiny_model_dir: Path, student_dir: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """distill's progress bar said "train:" (issue 28)."""
    from ofa_grounding.train.config import TrainConfig
    from ofa_grounding.train.loop import Trainer

    data = tmp_path / "syn"
    write_synthetic(data, 8, seed=4, size=(96, 96))
    cfg = TrainConfig(model=str(student_dir), data=str(data), out=str(tmp_path / "run"), batch_size=4, max_steps=1,
                      val=str(data), val_limit=2, eval_every=1, distill=DistillConfig(teacher=str(tiny_model_dir)))
    Trainer(cfg).run()
    err = capsys.readouterr().err
    assert "distill: 100%" in err and "train:" not in err, err
    assert [line.split(": val ")[0] for line in err.splitlines() if ": val " in line] == ["step 1/1"], err


@pytest.mark.slow
def test_distill_runs_resumes_and_logs(tiny_model_dir: Path, student_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "syn"
    write_synthetic(data, 24, seed=4, size=(96, 96))
    out = tmp_path / "run"
    args = ["distill", "--teacher", str(tiny_model_dir), "--student", str(student_dir), "--data", str(data),
            "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--val", str(data), "--val-limit", "4",
            "--eval-every", "2", "--save-every", "1", "--attn-heads", "mean", "--layer-map", "uniform",
            "--hidden-weight", "0.5"]
    proc = run_cli(args[1:], command="distill")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["best"] is not None
    header, *rows = (out / "log.csv").read_text().splitlines()
    assert ",kd,attn,hidden," in header and header.endswith(",pointer_acc") and len(rows) == 2
    names = header.split(",")
    assert all(all(float(dict(zip(names, r.split(",")))[k]) > 0 for k in ("kd", "attn", "hidden")) for r in rows)
    # the hidden-state projections are trainer state: saved beside the optimizer, restored by --resume
    projections = {k for k in load_file(str(out / "last/trainer_state.safetensors")) if k.startswith("distill.")}
    assert projections == {"distill.0.weight", "distill.0.bias", "distill.1.weight", "distill.1.bias"}
    resumed = run_cli([*[a if a != "2" else "3" for a in args[1:]], "--resume"], command="distill")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 3
    state = json.loads((out / "last/trainer_state.json").read_text())
    assert state["config"]["distill"]["teacher"] == str(tiny_model_dir) and state["config"]["lr"] == 1e-4
    student = read_checkpoint(out / "last").model
    assert student.config.d_model == 16  # the student's architecture, not the teacher's


@pytest.mark.slow
def test_distill_refuses_bad_teachers(student_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "syn"
    write_synthetic(data, 8, seed=4, size=(96, 96))
    common = ["--data", str(data), "--out", str(tmp_path / "o"), "--max-steps", "1"]
    proc = run_cli(["--teacher", str(tmp_path / "none"), "--student", str(student_dir), *common], command="distill")
    assert proc.returncode == 2 and "--teacher" in proc.stderr
    # a student deeper than its teacher cannot map its layers
    proc = run_cli(["--teacher", str(student_dir), "--student", str(tiny_model_dir), *common], command="distill")
    assert proc.returncode != 0 and "more layers" in proc.stderr


@pytest.mark.slow
def test_teacher_cache_is_built_once_and_read(tiny_model_dir: Path, student_dir: Path, tmp_path: Path) -> None:
    """--teacher-cache: the teacher's soft labels for every sample and its mirror, computed once; training
    reads them (same kd term as the live teacher up to float16 rounding); a cache of another teacher is refused."""
    from ofa_grounding.data import open_dataset
    from ofa_grounding.image import normalize_batch
    from ofa_grounding.tokenizer import OFATokenizer
    from ofa_grounding.train.data import GroundingTrainSet, collate

    data = tmp_path / "syn"
    write_synthetic(data, 24, seed=4, size=(96, 96))
    cache = tmp_path / "soft-labels.safetensors"

    def run(out: str, *extra: str) -> subprocess.CompletedProcess:
        return run_cli(["--teacher", str(tiny_model_dir), "--student", str(student_dir), "--data", str(data),
                       "--out", str(tmp_path / out), "--max-steps", "2", "--batch-size", "4", "--attn-weight", "0",
                       "--augment", "flip", "--seed", "3", *extra], command="distill")

    cached = run("cached", "--teacher-cache", str(cache))
    assert cached.returncode == 0, cached.stderr[-3000:]
    live = run("live")
    assert live.returncode == 0, live.stderr[-3000:]
    kd = {name: [float(r.split(",")[9]) for r in (tmp_path / name / "log.csv").read_text().splitlines()[1:]]
          for name in ("cached", "live")}
    assert kd["cached"] == pytest.approx(kd["live"], rel=1e-3) and len(kd["live"]) == 2

    logits = load_file(str(cache))["logits"]
    samples = list(open_dataset(data, split="train"))
    assert logits.shape == (len(samples), 2, 5, 1004) and logits.dtype == torch.float16
    teacher = read_checkpoint(tiny_model_dir).model.eval()
    pre = read_checkpoint(student_dir).preprocess
    train_set = GroundingTrainSet(samples, OFATokenizer.default(), pre, GenerationConfig())
    batch = collate([train_set.item(5, flip=True)])
    vocab = torch.cat([torch.arange(4), torch.arange(58457, 59457)])
    with torch.no_grad():
        expected = teacher(batch["input_ids"], normalize_batch(batch["pixels"], pre.mean, pre.std),
                           batch["prev_tokens"], vocab)[0]
    torch.testing.assert_close(logits[5, 1].float(), expected, rtol=1e-3, atol=1e-2)

    before = cache.stat().st_mtime_ns
    again = run("again", "--teacher-cache", str(cache))
    assert again.returncode == 0 and cache.stat().st_mtime_ns == before  # read, not rebuilt
    other = tmp_path / "other-teacher"
    shutil.copytree(tiny_model_dir, other)
    refused = run_cli(["--teacher", str(other), "--student", str(student_dir), "--data", str(data), "--out",
                      str(tmp_path / "o"), "--max-steps", "1", "--attn-weight", "0", "--augment", "flip",
                      "--teacher-cache", str(cache)], command="distill")
    assert refused.returncode == 2 and "made for other settings (teacher" in refused.stderr
    with_attention = run("attn", "--teacher-cache", str(cache), "--attn-weight", "1")
    assert with_attention.returncode == 2 and "--attn-weight 0" in with_attention.stderr


def test_a_teacher_of_another_image_side_sees_its_own(tiny_model_dir: Path, student_dir: Path,
                                                    tmp_path: Path) -> None:
    """A 128-px teacher, a student trained at 64 px: the teacher's soft labels are its answers to the images
    resized to 128 px (as it was trained), not to the student's 64-px copies; a live teacher gives the same
    soft-label loss as the cache; attention maps (image grids of different sizes) are refused in one line."""
    from ofa_grounding.data import open_dataset
    from ofa_grounding.image import normalize_batch
    from ofa_grounding.train.data import GroundingTrainSet, collate

    data = tmp_path / "syn"
    write_synthetic(data, 16, seed=5, size=(96, 96))
    cache = tmp_path / "soft-labels.safetensors"
    common = ["--teacher", str(tiny_model_dir), "--student", str(student_dir), "--data", str(data), "--max-steps",
              "2", "--batch-size", "4", "--attn-weight", "0", "--image-size", "64", "--seed", "3"]
    cached = run_cli([*common, "--out", str(tmp_path / "cached"), "--teacher-cache", str(cache)], command="distill")
    assert cached.returncode == 0, cached.stderr[-3000:]
    live = run_cli([*common, "--out", str(tmp_path / "live")], command="distill")
    assert live.returncode == 0, live.stderr[-3000:]
    kd = {name: [float(r.split(",")[9]) for r in (tmp_path / name / "log.csv").read_text().splitlines()[1:]]
          for name in ("cached", "live")}
    assert kd["cached"] == pytest.approx(kd["live"], rel=1e-3) and len(kd["live"]) == 2

    samples = list(open_dataset(data, split="train"))
    teacher = read_checkpoint(tiny_model_dir)
    vocab = torch.cat([torch.arange(4), torch.arange(58457, 59457)])
    logits = load_file(str(cache))["logits"][3, 0].float()
    answers = {}
    for side in (128, 64):  # the sample as a model trained at that side sees it (no teacher copy involved)
        pre = PreprocessConfig(patch_image_size=side, max_image_size=side)
        batch = collate([GroundingTrainSet(samples, OFATokenizer.default(), pre, GenerationConfig()).item(3)])
        with torch.no_grad():
            answers[side] = teacher.model.eval()(batch["input_ids"], normalize_batch(batch["pixels"], pre.mean,
                                                                                      pre.std),
                                                 batch["prev_tokens"], vocab)[0]
    torch.testing.assert_close(logits, answers[128], rtol=1e-3, atol=1e-2)
    assert (logits - answers[64]).abs().max() > 0.1  # what the old way (the student's copy) would have given

    refused = run_cli([*common[:-6], "--image-size", "64", "--out", str(tmp_path / "attn")], command="distill")
    assert refused.returncode == 2 and "image sizes differ (128 vs 64 px)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_absent_objects_are_distilled_from_a_live_teacher_only(tiny_model_dir: Path, student_dir: Path,
                                                               tmp_path: Path) -> None:
    """--absent-rate with distillation: the live teacher answers the drawn absent descriptions too; a teacher cache
    (answers to the dataset's own descriptions) cannot, and is refused in one line."""
    data = tmp_path / "syn"
    write_synthetic(data, 8, seed=4, size=(96, 96))
    common = ["--teacher", str(tiny_model_dir), "--student", str(student_dir), "--data", str(data), "--max-steps",
              "1", "--batch-size", "4", "--absent-rate", "0.5"]
    live = run_cli([*common, "--out", str(tmp_path / "live")], command="distill")
    assert live.returncode == 0, live.stderr[-2000:]
    cached = run_cli([*common, "--out", str(tmp_path / "cached"), "--attn-weight", "0", "--teacher-cache",
                      str(tmp_path / "c.safetensors")], command="distill")
    assert cached.returncode == 2 and "--absent-rate cannot be used with --teacher-cache" in cached.stderr
    assert "Traceback" not in cached.stderr
