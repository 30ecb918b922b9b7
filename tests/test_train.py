"""Training: the loss on known values, data/targets, a short run, bit-exact resume after SIGKILL, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ofa_grounding import Grounder
from ofa_grounding.checkpoint import load_checkpoint
from ofa_grounding.config import GenerationConfig, PreprocessConfig
from ofa_grounding.data import Sample
from ofa_grounding.synthetic import write_synthetic
from ofa_grounding.tokenizer import OFATokenizer
from ofa_grounding.train.data import GroundingTrainSet, ShardedShuffleSampler, collate
from ofa_grounding.train.losses import label_smoothed_nll

ROOT = Path(__file__).resolve().parents[1]


def test_label_smoothed_loss_known_values() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    loss, nll = label_smoothed_nll(probs.log(), torch.tensor([0, 2]), 0.1)
    eps_i = 0.1 / 2
    expected = sum((1 - 0.1 - eps_i) * -math.log(p[t]) + eps_i * -sum(math.log(x) for x in p)
                   for p, t in (([0.7, 0.2, 0.1], 0), ([0.25, 0.25, 0.5], 2)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert nll.item() == pytest.approx(-math.log(0.7) - math.log(0.5), rel=1e-6)
    assert label_smoothed_nll(probs.log(), torch.tensor([0, 2]), 0.0)[0].item() == pytest.approx(nll.item())


def test_soft_bin_loss_known_values() -> None:
    from ofa_grounding.train.losses import soft_bin_cross_entropy

    # columns 0..3 specials, 4..6 three bins; sigma 1: the bin-1 target spreads exp(-1/2) : 1 : exp(-1/2)
    lprobs = torch.tensor([[0.1, 0.1, 0.2, 0.1, 0.1, 0.3, 0.1]]).log()
    loss, nll = soft_bin_cross_entropy(lprobs, torch.tensor([5]), 0.0, 1.0)
    w = [math.exp(-0.5), 1.0, math.exp(-0.5)]
    expected = -sum(wi / sum(w) * math.log(p) for wi, p in zip(w, [0.1, 0.3, 0.1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6) and nll.item() == pytest.approx(-math.log(0.3), rel=1e-6)
    # an EOS target (column 2) keeps plain label smoothing, eps spread uniformly
    loss, _ = soft_bin_cross_entropy(lprobs, torch.tensor([2]), 0.1, 1.0)
    expected = 0.9 * -math.log(0.2) + 0.1 / 7 * -sum(math.log(p) for p in [0.1, 0.1, 0.2, 0.1, 0.1, 0.3, 0.1])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sampler_gives_disjoint_deterministic_shares() -> None:
    a, b = ShardedShuffleSampler(10, seed=3, rank=0, world_size=2), ShardedShuffleSampler(10, seed=3, rank=1,
                                                                                          world_size=2)
    assert len(a) == 5 and not set(a) & set(b) and sorted([*a, *b]) == list(range(10))
    assert list(a) == list(ShardedShuffleSampler(10, seed=3, rank=0, world_size=2))
    a.set_epoch(1)
    assert list(a) != list(ShardedShuffleSampler(10, seed=3, rank=0, world_size=2))
    a.set_epoch(1, start=2)
    assert list(a) == a.indices()[2:] and len(a) == 3


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


def test_image_index_equals_repeated_images(tiny_model_dir: Path) -> None:
    model = load_checkpoint(tiny_model_dir).model.eval()
    ids = torch.tensor([[0, 100, 200, 2], [0, 300, 2, 1], [0, 5, 6, 2]])
    images = torch.randn(2, 3, 64, 64)
    index = torch.tensor([1, 0, 1])
    prev = torch.tensor([[0, 58500, 58600, 58700, 58800]] * 3)
    with torch.no_grad():
        shared = model(ids, images, prev, image_index=index)
        repeated = model(ids, images[index], prev)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    write_synthetic(out, 48, seed=4, size=(96, 96))
    return out


def _train(args: list[str], nproc: int = 1, command: str = "train") -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29531"]
    launcher = launcher if nproc > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "ofa_grounding.cli", command, *args, "--no-progress"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


# `ofa-ground train ARGS` in a process that SIGKILLs itself after update N (from the trainer's per-update hook)
_KILLED_AFTER = """
import os, signal, sys
from ofa_grounding.cli import build_parser
from ofa_grounding.cli.train import training_config
from ofa_grounding.train.loop import train

n, args = int(sys.argv[1]), build_parser().parse_args(sys.argv[2:])
train(training_config(args), on_update=lambda step: step == n and os.kill(os.getpid(), signal.SIGKILL))
"""


def _train_killed_after(n: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _KILLED_AFTER, str(n), "train", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _common(model: Path, data: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "4", "--lr", "1e-3",
            "--drop-path", "0.1", "--dropout", "0.1", "--augment", "flip,jitter", "--seed", "5"]


@pytest.mark.slow
def test_short_run_validates_saves_and_loads(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _train([*_common(tiny_model_dir, data, out), "--max-steps", "4", "--accum", "2", "--val", str(data),
                   "--val-limit", "4", "--eval-every", "2", "--save-every", "2", "--modelscope",
                   "--group-by-image", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["best"] is not None
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,lr,loss") and len(rows) == 5 and rows[2].split(",")[6] != ""
    before = load_checkpoint(tiny_model_dir).model.state_dict()
    after = load_checkpoint(out / "last").model.state_dict()
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
    whole = _train([*_common(tiny_model_dir, data, out), *SIX_STEPS])
    assert whole.returncode == 0, whole.stderr[-3000:]
    return out


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tiny_model_dir: Path, data: Path, six_step_run: Path,
                                           tmp_path: Path) -> None:
    args, whole = SIX_STEPS, six_step_run
    killed = _train_killed_after(4, [*_common(tiny_model_dir, data, tmp_path / "cut"), *args])
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL one step after the checkpoint: no clean-up ran
    assert json.loads((tmp_path / "cut/last/trainer_state.json").read_text())["step"] == 3
    resumed = _train([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--resume"])
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
def test_time_limit_stops_and_saves_and_image_size_is_kept(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "short"
    proc = _train([*_common(tiny_model_dir, data, out), "--max-steps", "50", "--max-minutes", "0.0001",
                   "--image-size", "64"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["out_of_time"]
    assert json.loads((out / "last/trainer_state.json").read_text())["step"] == 1
    ckpt = load_checkpoint(out / "last")
    assert ckpt.preprocess.patch_image_size == ckpt.preprocess.max_image_size == 64  # the model's was 128


@pytest.mark.slow
def test_stop_at_step_keeps_the_schedule_and_resumes_to_the_end(tiny_model_dir: Path, data: Path,
                                                                 six_step_run: Path, tmp_path: Path) -> None:
    args = SIX_STEPS
    cut = _train([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--stop-at-step", "2"])
    assert cut.returncode == 0, cut.stderr[-3000:]
    summary = json.loads(cut.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["stopped_early"] and not summary["out_of_time"]
    assert json.loads((tmp_path / "cut/last/trainer_state.json").read_text())["step"] == 2  # saved off-cycle

    def rows(run: Path) -> list[list[str]]:
        return [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]

    # the learning rates of a 6-step schedule (a 2-step run would have decayed to 0 by step 2)
    assert [r[2] for r in rows(tmp_path / "cut")] == [r[2] for r in rows(six_step_run)[:2]]
    again = _train([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--stop-at-step", "2", "--resume"])
    assert again.returncode != 0 and "already at step 2" in again.stderr
    resumed = _train([*_common(tiny_model_dir, data, tmp_path / "cut"), *args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(six_step_run / "last/model.safetensors"))
    b = load_file(str(tmp_path / "cut/last/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r[3] for r in rows(tmp_path / "cut")] == [r[3] for r in rows(six_step_run)]


@pytest.mark.slow
def test_two_processes_ddp(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--lr", "1e-4", "--seed", "5", "--max-steps", "2"]
    double = _train([*common, "--out", str(tmp_path / "ddp"), "--batch-size", "4"], nproc=2)
    assert double.returncode == 0, double.stderr[-3000:]
    state = json.loads((tmp_path / "ddp/last/trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    assert {"rng.torch.0", "rng.torch.1"} <= set(load_file(str(tmp_path / "ddp/last/trainer_state.safetensors")))
    # The same 8 samples per update as one process with batch 8 (the ranks take alternate positions of one
    # shuffled order), and gradients averaged: the parameters stay within what BatchNorm's per-process
    # batch statistics change (AdamW moves a parameter by at most ~lr per step).
    single = _train([*common, "--out", str(tmp_path / "one"), "--batch-size", "8"])
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_file(str(tmp_path / "ddp/last/model.safetensors"))
    b = load_file(str(tmp_path / "one/last/model.safetensors"))
    init = load_checkpoint(tiny_model_dir).model.state_dict()
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert max((a[k] - b[k]).abs().max().item() for k in params) < 4e-4
    assert max((a[k] - init[k]).abs().max().item() for k in params) > 5e-5  # both trained


def test_kd_cross_entropy_known_values() -> None:
    from ofa_grounding.train.losses import kd_cross_entropy

    teacher = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    student = torch.tensor([[math.log(0.2), math.log(0.3), math.log(0.5)]])
    expected = -(0.5 * math.log(0.2) + 0.25 * math.log(0.3) + 0.25 * math.log(0.5))
    assert kd_cross_entropy(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # temperature 2: both distributions flatten; teacher sqrt(p) normalised, student log_softmax(z / 2)
    pt = torch.tensor([0.5, 0.25, 0.25]).sqrt()
    pt = pt / pt.sum()
    ls = torch.log_softmax(student[0] / 2, -1)
    assert kd_cross_entropy(student, teacher, 2.0).item() == pytest.approx(-(pt * ls).sum().item(), rel=1e-6)
    # sums over tokens
    assert kd_cross_entropy(student.repeat(3, 1), teacher.repeat(3, 1)).item() == pytest.approx(3 * expected, rel=1e-6)


def test_attention_mse_sum_known_values() -> None:
    from ofa_grounding.train.losses import attention_mse_sum

    student = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # (B 1, H 1, T 2, S 2)
    teacher = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [0.0, 1.0]]]])  # two heads, summed
    # head sums: student [[1, 0], [.5, .5]], teacher [[1.5, .5], [.5, 1.5]]: errors .5, .5, 0, 1
    assert attention_mse_sum(student, teacher).item() == pytest.approx((0.25 + 0.25 + 0 + 1) / 4)
    # head means: teacher [[.75, .25], [.25, .75]]: errors .25, .25, .25, .25
    assert attention_mse_sum(student, teacher, reduce_heads="mean").item() == pytest.approx(0.0625)
    # a mask keeps only position 0's pair: (1 - 1.5)^2 / 1^2
    assert attention_mse_sum(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="reduce_heads"):
        attention_mse_sum(student, teacher, reduce_heads="max")


def test_hidden_mse_with_projection_and_mask() -> None:
    from ofa_grounding.train.losses import hidden_mse

    s = torch.tensor([[[1.0], [2.0]]])
    t = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])
    proj = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        proj.weight.fill_(1.0)
    # projected student [[1, 1], [2, 2]] vs teacher [[2, 2], [0, 0]]: squared errors 1, 1, 4, 4
    assert hidden_mse(s, t, proj).item() == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert hidden_mse(s, t, proj, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)


@pytest.mark.slow
def test_a_run_directory_is_not_overwritten_unasked(tmp_path: Path) -> None:
    data = tmp_path / "syn"
    write_synthetic(data, 8, seed=4, size=(64, 64))
    out = tmp_path / "run"
    args = ["--model", "demo", "--data", str(data), "--out", str(out), "--max-steps", "1", "--batch-size", "2",
            "--image-size", "64"]
    assert _train(args).returncode == 0
    (out / "best").mkdir()
    (out / "best" / "stale.txt").write_text("from the old run")
    before = (out / "log.csv").read_text()
    again = _train(args)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (out / "log.csv").read_text() == before
    fresh = _train([*args, "--overwrite"])
    assert fresh.returncode == 0, fresh.stderr
    assert not (out / "best").exists() and (out / "last" / "trainer_state.json").is_file()
