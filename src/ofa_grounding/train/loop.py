"""Finetuning OFA for grounding, after OFA's RefCOCO recipe, on one process or many (torchrun, DDP).

Recipe (OFA, see the README): targets are the box's 4 bin tokens + EOS, label-smoothed cross-entropy
(0.1) over ids 0..3 and the bins (OFA-Compress's constraint), AdamW (0.9, 0.999, eps 1e-8, weight
decay 0.01 on every parameter), linear warmup over 6 % of the updates then linear decay to 0, gradient
clipping at 1.0, optional drop-path, the inference resize. Only rank 0 logs, validates and saves.

With `distill` set (`ofa-ground distill`), a teacher adds OFA-Compress's distillation terms to the same
loss (distill.py); everything else is this loop.

A checkpoint is a model directory (loadable by `Grounder.from_pretrained`) plus `trainer_state.json`
(step, epoch, position in the epoch, scheduler, Python RNG, settings) and `trainer_state.safetensors`
(optimizer moments, torch RNG): `--resume` continues bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..backbone import cpu_bf16_supported
from ..checkpoint import CheckpointError, LoadedCheckpoint, save_checkpoint
from ..data import Sample, open_dataset
from ..evaluate import distributed_context, evaluate
from ..generation import open_vocab_ids
from ..image import normalize_batch
from ..loader import load_model
from ..model import OFAModel
from ..predictor import Grounder
from ..presets import list_presets
from ..tokenizer import OFATokenizer
from .cells import CellHeads, cell_labels, has_cell_labels, smooth_bin_embeddings
from .data import GroundingTrainSet, ShardedShuffleSampler, collate
from .distill import DistillConfig, Distiller, build_teacher_cache
from .losses import label_smoothed_nll, soft_bin_cross_entropy

__all__ = ["TrainConfig", "train", "load_initial_model"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str  # a model directory, or a preset name for random weights
    data: str
    out: str
    split: str | None = "train"
    val: str | None = None
    val_split: str | None = "val"
    val_limit: int | None = None
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 16  # samples per process and micro-batch
    group_by_image: int = 1  # ours: up to this many samples of one image share a backbone pass
    accum: int = 1
    lr: float = 5e-5
    min_lr: float = 0.0
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    bin_sigma: float = 0.0  # ours, off by default: Gaussian-smoothed coordinate targets (in bins)
    attr_weight: float = 0.0  # ours, off by default: per-cell colour/shape/size head on the image tokens (cells.py)
    pointer_weight: float = 0.0  # ours, off by default: which cells hold the target, on the encoder's image tokens
    smooth_bins: bool = False  # ours: fresh bin embeddings start smooth in the bin index (presets only)
    absent_rate: float = 0.0  # ours: this share of samples describe an absent object, target the null box
    clip_norm: float = 1.0
    drop_path: float | None = None  # encoder/decoder drop-path rate (None: keep the checkpoint's)
    dropout: float | None = None
    bf16: bool = False
    augment: list[str] = field(default_factory=list)
    eval_every: int = 500
    save_every: int = 500
    seed: int = 1
    workers: int = 0
    cache_images: bool = False
    device: str | None = None
    resume: bool = False
    overwrite: bool = False  # start afresh in an `out` that already holds a run (else refused)
    modelscope: bool = False  # also write pytorch_model.bin with every OFA key
    progress: bool = True
    distill: DistillConfig | None = None  # a teacher's extra loss terms (ofa-ground distill)
    image_size: int | None = None  # patch_image_size = max_image_size (None: the model's own)
    max_minutes: float | None = None  # wall-time limit: stop early, saving last/ (the schedule is not shortened)
    stop_at_step: int | None = None  # stop after this update, saving last/ (the schedule is not shortened)
    kill_at_step: int | None = None  # testing only: SIGKILL this process right after that step


def load_initial_model(name: str, device: str | torch.device | None = None) -> LoadedCheckpoint:
    """What training starts from (`loader.load_model`): a preset with fresh weights (OFA's initialisation), or a
    checkpoint's weights (a directory or file in any layout `load_checkpoint` reads, or a hub id)."""
    try:
        return load_model(name, device=device, allow_preset=True)
    except CheckpointError as exc:
        raise CheckpointError(f"--model {name}: {exc} (presets: {', '.join(list_presets())})") from None


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[key] = value
    return tensors, scalars


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in scalars["state"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


class _CsvLog:
    FIELDS = ("step", "epoch", "lr", "loss", "nll", "samples_per_s", "val_acc50", "val_acc75", "val_miou", "kd",
              "attn", "hidden", "nll_x0", "nll_y0", "nll_x1", "nll_y1", "attr", "pointer", "pointer_acc")

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():  # drop what was logged after the checkpoint
            with path.open(newline="") as f:
                rows = [r for r in csv.reader(f)]
            rows = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= resume_step]
        else:
            rows = [list(self.FIELDS)]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    def write(self, **row: Any) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.FIELDS])


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training; returns a summary (steps, best validation Acc@0.5, output paths)."""
    ctx = distributed_context(cfg.device)
    device = torch.device(cfg.device or "cpu")
    if ctx.world_size > 1 and device.type == "cuda":
        device = torch.device(f"cuda:{ctx.local_rank}")
    out = Path(cfg.out)
    last_dir, best_dir = out / "last", out / "best"
    if not cfg.resume and not cfg.overwrite and any((out / name).exists() for name in ("last", "best", "log.csv")):
        raise ValueError(f"--out {out} already holds a run: pass --resume to continue it or --overwrite to start "
                         "afresh (its last/, best/ and log.csv are replaced)")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite:  # nothing of the old run may pass for the new one's (a stale best/ above all)
            import shutil

            for name in ("last", "best"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "log.csv").unlink(missing_ok=True)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    initial = load_initial_model(str(last_dir) if cfg.resume else cfg.model)
    model, tokenizer, preprocess, generation = initial.model, initial.tokenizer, initial.preprocess, initial.generation
    tokenizer_dir = initial.tokenizer_dir
    if cfg.image_size is not None:
        preprocess = dataclasses.replace(preprocess, patch_image_size=cfg.image_size, max_image_size=cfg.image_size)
    if cfg.drop_path is not None:
        model.config.encoder_drop_path_rate = model.config.decoder_drop_path_rate = cfg.drop_path
    if cfg.dropout is not None:
        model.config.dropout = cfg.dropout
    if cfg.drop_path is not None or cfg.dropout is not None:  # rebuild so the layers pick the rates up
        state = model.state_dict()
        model = OFAModel(model.config)
        model.load_state_dict(state)
    if cfg.smooth_bins and initial.layout == "preset":
        smooth_bin_embeddings(model, tokenizer.bin_offset, generation.num_bins, seed=cfg.seed)
    if cfg.bf16 and device.type == "cpu" and not cpu_bf16_supported():
        log.warning("--bf16 on a CPU without bfloat16 units (AVX-512 BF16 or AMX) is emulated: about 7x slower "
                    "than fp32 (measured on an AVX2 CPU); leave --bf16 out here")
    model.to(device).train()
    distiller = None
    if cfg.distill is not None and cfg.absent_rate:
        raise ValueError("--absent-rate cannot be used with distillation (the teacher was not taught absent objects)")
    if cfg.distill is not None:
        if not Path(cfg.distill.teacher).exists():
            raise CheckpointError(f"--teacher {cfg.distill.teacher}: no such model directory")
        loaded_teacher = load_model(cfg.distill.teacher)
        teacher, teacher_pre = loaded_teacher.model, loaded_teacher.preprocess
        matched = cfg.distill.attn_weight > 0 or cfg.distill.hidden_weight > 0
        if matched and teacher_pre.patch_image_size != preprocess.patch_image_size:
            raise ValueError(f"teacher and student image sizes differ ({teacher_pre.patch_image_size} vs "
                             f"{preprocess.patch_image_size} px): their attention maps and hidden states cannot be "
                             "matched (use --attn-weight 0 --hidden-weight 0, or a student with the teacher's "
                             "image size)")
        distiller = Distiller(cfg.distill, teacher.to(device), model)

    dataset = open_dataset(cfg.data, split=cfg.split)
    samples = list(dataset)
    for issue in dataset.issues:
        log.warning("skipped training sample: %s", issue)
    if not samples:
        raise ValueError(f"{cfg.data}: no training samples (split {cfg.split!r})")
    cells = None
    if cfg.attr_weight > 0 or cfg.pointer_weight > 0:
        unlabelled = sum(not has_cell_labels(s) for s in samples)
        if unlabelled:
            raise ValueError(f"--attr-weight/--pointer-weight need every sample's objects (the synthetic benchmark's "
                             f"'objects' and 'image_size'): {unlabelled} of {len(samples)} samples have none")
        cells = _CellSupervision(model, CellHeads(model.config.d_model).to(device))
    train_set = GroundingTrainSet(samples, tokenizer, preprocess, generation, cfg.augment, cfg.seed, cfg.cache_images,
                                  group_by_image=cfg.group_by_image, absent_rate=cfg.absent_rate)
    if cfg.batch_size % cfg.group_by_image:
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of --group-by-image {cfg.group_by_image}")
    units_per_batch = cfg.batch_size // cfg.group_by_image  # images when grouping, else samples
    sampler = ShardedShuffleSampler(len(train_set), cfg.seed, ctx.rank, ctx.world_size)
    steps_per_epoch = max(1, len(sampler) // (units_per_batch * cfg.accum))
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_ratio * total)

    vocab_ids = open_vocab_ids(generation, model.config.vocab_size, device)
    if distiller and cfg.distill.teacher_cache:
        distiller.soft_labels = _teacher_cache(cfg, ctx, distiller, train_set, vocab_ids, tokenizer)
        distiller.teacher = None  # every soft label is in the cache: the teacher's memory is free again
    column = torch.full((model.config.vocab_size,), -1, dtype=torch.long, device=device)
    column[vocab_ids] = torch.arange(len(vocab_ids), device=device)

    # the distiller's hidden-state projections (if any) train with the student
    params = [*model.parameters(), *(distiller.parameters() if distiller else []),
              *(cells.heads.parameters() if cells else [])]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cfg.min_lr / cfg.lr + (1 - cfg.min_lr / cfg.lr) * _lr_factor(s, total, warmup))
    step, epoch, position, best = 0, 0, 0, {"acc50": -1.0, "step": None}
    if cfg.resume:
        state = json.loads((last_dir / "trainer_state.json").read_text())
        if state["world_size"] != ctx.world_size:
            raise ValueError(f"--resume: the run used {state['world_size']} process(es), not {ctx.world_size}")
        changed = [k for k in ("data", "split", "max_steps", "epochs", "batch_size", "accum", "lr", "seed", "augment",
                                           "group_by_image")
                   if state["config"].get(k) != getattr(cfg, k)]
        if changed:
            log.warning("--resume with other settings than the run's (%s): it will not match an uninterrupted run",
                        ", ".join(changed))
        tensors = load_file(str(last_dir / "trainer_state.safetensors"))
        _restore_optimizer(optimizer, tensors, state["optimizer"])
        if distiller:
            distiller.projections.load_state_dict({k[len("distill."):]: v.to(device) for k, v in tensors.items()
                                                   if k.startswith("distill.")})
        if cells:
            cells.heads.load_state_dict({k[len("cells."):]: v.to(device) for k, v in tensors.items()
                                         if k.startswith("cells.")})
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, position, best = state["step"], state["epoch"], state["position"], state["best"]
        rng = state["python_rng"]
        random.setstate((rng[0], tuple(rng[1]), rng[2]))
        torch.set_rng_state(tensors[f"rng.torch.{ctx.rank}"])
    if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
        raise ValueError(f"--stop-at-step {cfg.stop_at_step}: the run is already at step {step}")
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    val_set = open_dataset(cfg.val, split=cfg.val_split) if cfg.val and ctx.is_main else None
    csv_log = _CsvLog(out / "log.csv", step if cfg.resume else None) if ctx.is_main else None

    def validate() -> dict[str, float]:
        model.eval()
        grounder = Grounder(model, tokenizer, preprocess, generation, device=device, fuse=False)
        report = evaluate(grounder, val_set, cfg.val_split, progress=False, limit=cfg.val_limit)
        model.train()
        return report.summary

    def save(directory: Path) -> None:
        save_checkpoint(directory, model, tokenizer_dir, preprocess, generation,
                        metadata={"step": str(step), "source": "ofa-grounding train"},
                        layout="modelscope" if cfg.modelscope else "ours")

    def save_state() -> None:
        tensors, scalars = _optimizer_state_tensors(optimizer)
        rng_states = [torch.get_rng_state()]
        if ctx.world_size > 1:  # every rank's dropout RNG, so that each resumes where it stopped
            import torch.distributed as dist

            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if not ctx.is_main:
            return
        save(last_dir)
        for r, s in enumerate(rng_states):
            tensors[f"rng.torch.{r}"] = s
        if distiller:  # the hidden-state projections: trainer state, not part of the model
            tensors.update({f"distill.{k}": v.detach().cpu().contiguous()
                            for k, v in distiller.projections.state_dict().items()})
        if cells:  # the cell heads: trainer state, not part of the model
            tensors.update({f"cells.{k}": v.detach().cpu().contiguous() for k, v in cells.heads.state_dict().items()})
        save_file(tensors, str(last_dir / "trainer_state.safetensors"))
        state = {"step": step, "epoch": epoch, "position": position, "best": best, "optimizer": scalars,
                 "scheduler": scheduler.state_dict(), "python_rng": list(random.getstate()),
                 "config": dataclasses.asdict(cfg), "world_size": ctx.world_size}
        (last_dir / "trainer_state.json").write_text(json.dumps(state))

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not cfg.progress or not ctx.is_main,
               dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    collate_fn = partial(collate, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id)
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else None
    out_of_time = stopped = False
    while step < total and not stopped:
        sampler.set_epoch(epoch, position)
        train_set.set_epoch(epoch)
        # Its own generator: a loader draws a seed from the global RNG when it starts an epoch, which would
        # shift the dropout stream of a run resumed in the middle of an epoch.
        loader = torch.utils.data.DataLoader(train_set, batch_size=units_per_batch, sampler=sampler,
                                             num_workers=cfg.workers, drop_last=True, collate_fn=collate_fn,
                                             generator=torch.Generator().manual_seed(cfg.seed + epoch))
        batches = iter(loader)
        for micro in _updates(batches, cfg.accum):
            n_tokens = sum(b["target"].numel() for b in micro)
            loss_sum = nll_sum = kd_sum = attn_sum = hidden_sum = 0.0
            position_nll = torch.zeros(5, device=device)
            cell_sums: dict[str, float] = {}
            for i, batch in enumerate(micro):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                batch["patch_images"] = normalize_batch(batch.pop("pixels"), preprocess.mean, preprocess.std)
                # DDP averages gradients over processes, each normalised by its own token count: equal
                # counts give fairseq's per-token mean over the whole update (with --group-by-image an
                # image with fewer than K samples makes them differ slightly).
                sync = ctx.world_size == 1 or i == len(micro) - 1
                teacher_out = distiller.teacher_forward(batch, vocab_ids) if distiller else None
                recording = distiller.recording(model, 0) if distiller else contextlib.nullcontext()
                observing = cells.observing() if cells else contextlib.nullcontext()
                with (net.no_sync() if not sync else contextlib.nullcontext()), autocast, recording as rec, \
                        observing:
                    logits = net(batch["input_ids"], batch["patch_images"], batch["prev_tokens"], vocab_ids,
                                 batch.get("image_index"), record=rec.attention_record if distiller else None)
                    lprobs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.shape[-1])
                    target = column[batch["target"].view(-1)]
                    if cfg.bin_sigma > 0:
                        loss, nll = soft_bin_cross_entropy(lprobs, target, cfg.label_smoothing, cfg.bin_sigma)
                    else:
                        loss, nll = label_smoothed_nll(lprobs, target, cfg.label_smoothing)
                    total_loss = loss / n_tokens
                    if distiller:
                        kd, attn, hidden = distiller.losses(logits, rec, teacher_out, batch["input_ids"],
                                                            tokenizer.pad_id)
                        # kd per token like the task loss; the attention and hidden MSEs are means per micro-batch
                        total_loss = total_loss + cfg.distill.kd_weight * kd / n_tokens \
                            + (cfg.distill.attn_weight * attn + cfg.distill.hidden_weight * hidden) / len(micro)
                        kd_sum += kd.item()
                        attn_sum += attn.item() / len(micro)
                        hidden_sum += hidden.item() / len(micro)
                    if cells:  # per-cell terms are means over cells and samples, like the attention MSE
                        terms = cells.losses([samples[j] for j in batch["index"].tolist()], batch)
                        total_loss = total_loss + (cfg.attr_weight * terms["attr"]
                                                   + cfg.pointer_weight * terms["pointer"]) / len(micro)
                        for k, v in terms.items():
                            cell_sums[k] = cell_sums.get(k, 0.0) + v.item() / len(micro)
                    total_loss.backward()
                with torch.no_grad():  # NLL per box token position (x0, y0, x1, y1, EOS), for the log
                    position_nll -= lprobs.detach().gather(1, target[:, None]).view(-1, 5).sum(0)
                loss_sum += loss.item()
                nll_sum += nll.item()
            if distiller and ctx.world_size > 1:  # DDP averages the student's gradients, not the projections'
                _average_gradients(distiller.parameters(), ctx.world_size)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            if math.isfinite(float(grad_norm)):
                optimizer.step()
            else:
                log.warning("step %d: non-finite gradient norm, update skipped", step)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            position += len(micro) * units_per_batch
            window_samples += sum(len(b["target"]) for b in micro) * ctx.world_size
            rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_tokens:.3f}", lr=f"{lr:.2e}", samples_s=f"{rate:.0f}")
            row = {"step": step, "epoch": epoch, "lr": f"{lr:.6g}", "loss": f"{loss_sum / n_tokens:.5f}",
                   "nll": f"{nll_sum / n_tokens:.5f}", "samples_per_s": f"{rate:.1f}"}
            n_samples = n_tokens // 5
            row.update({f"nll_{name}": f"{float(v) / n_samples:.4f}"
                        for name, v in zip(("x0", "y0", "x1", "y1"), position_nll)})
            row.update({k: f"{v:.4f}" for k, v in cell_sums.items()})
            if distiller:
                row.update(kd=f"{kd_sum / n_tokens:.5f}", attn=f"{attn_sum:.5f}")
                if cfg.distill.hidden_weight > 0:
                    row.update(hidden=f"{hidden_sum:.5f}")
            if val_set is not None and (step % cfg.eval_every == 0 or step == total):
                summary = validate()
                row.update(val_acc50=f"{summary['acc50']:.4f}", val_acc75=f"{summary['acc75']:.4f}",
                           val_miou=f"{summary['miou']:.4f}")
                if summary["acc50"] > best["acc50"]:
                    best = {"acc50": summary["acc50"], "step": step}
                    save(best_dir)
                window_start, window_samples = time.perf_counter(), 0  # validation time is not training time
            if csv_log:
                csv_log.write(**row)
            if step % cfg.save_every == 0 or step == total:
                save_state()
            if cfg.kill_at_step is not None and step == cfg.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if step >= total:
                break
            # Early stops keep the schedule planned for `total` (a run on a long schedule, stopped part way).
            if cfg.stop_at_step is not None and step >= cfg.stop_at_step:
                log.warning("--stop-at-step %d reached (schedule of %d steps): stopping; last/ holds step %d",
                            cfg.stop_at_step, total, step)
                stopped = True
            elif deadline is not None and _rank0_says(time.monotonic() > deadline, ctx):
                log.warning("--max-minutes %g reached at step %d of %d: stopping; last/ holds step %d",
                            cfg.max_minutes, step, total, step)
                stopped = out_of_time = True
            if stopped:
                if step % cfg.save_every:
                    save_state()
                break
        else:  # the epoch ran out (a partial last update is dropped)
            epoch, position = epoch + 1, 0
    bar.close()
    if ctx.world_size > 1:  # DDP keeps replicas identical; check it rather than trust it
        import torch.distributed as dist

        checksum = [float(sum(p.double().sum() for p in model.parameters()))]
        sums: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(sums, checksum)
        if len({s[0] for s in sums}) != 1:
            raise RuntimeError(f"replicas diverged: parameter checksums {sums}")
    ctx.close()
    return {"steps": step, "epochs": epoch, "out_of_time": out_of_time, "stopped_early": stopped,
            "best_acc50": best["acc50"] if val_set is not None else None, "best_step": best["step"],
            "last": str(last_dir), "best": str(best_dir) if best["step"] else None}


class _CellSupervision:
    """The cell heads (cells.py) and the tensors they read, captured by forward hooks during the model's own
    forward pass (so DDP and autocast see one ordinary forward): the image tokens from `image_proj` and the
    encoder's output."""

    def __init__(self, model: OFAModel, heads: CellHeads) -> None:
        self.model, self.heads = model, heads
        self.seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def observing(self):
        hooks = [self.model.encoder.image_proj.register_forward_hook(
                     lambda m, i, o: self.seen.__setitem__("image", o)),
                 self.model.encoder.register_forward_hook(lambda m, i, o: self.seen.__setitem__("encoder", o))]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def losses(self, samples: list[Sample], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The heads' terms for the batch just forwarded; its grid is the one the image tokens came in."""
        image = self.seen.pop("image").float()
        if "image_index" in batch:  # one backbone pass per image, labels per sample
            image = image.index_select(0, batch["image_index"])
        P = image.shape[1]
        grid = math.isqrt(P)  # training images are square (resize_square)
        if grid * grid != P:
            raise ValueError(f"cell labels need a square image grid, got {P} image tokens")
        labels = cell_labels(samples, batch["flipped"].tolist(), grid, batch["absent"].tolist())
        labels = {k: v.to(image.device) for k, v in labels.items()}
        return self.heads.losses(image, self.seen.pop("encoder").hidden[:, :P].float(), labels)


def _teacher_cache(cfg: TrainConfig, ctx: Any, distiller: Distiller, train_set: GroundingTrainSet,
                   vocab_ids: torch.Tensor, tokenizer: OFATokenizer) -> torch.Tensor:
    """Soft labels read from --teacher-cache, or computed by rank 0 and written there first."""
    if cfg.distill.attn_weight > 0 or cfg.distill.hidden_weight > 0:
        raise ValueError("--teacher-cache stores the teacher's soft labels only: give --attn-weight 0 and "
                         "--hidden-weight 0 with it")
    if "jitter" in cfg.augment:
        raise ValueError("--teacher-cache cannot be used with --augment jitter (random colours make every "
                         "teacher input new)")
    identity = {"teacher": str(Path(cfg.distill.teacher).resolve()), "data": str(cfg.data), "split": str(cfg.split),
                "teacher_bf16": str(cfg.distill.teacher_bf16)}
    path = Path(cfg.distill.teacher_cache)
    build = partial(build_teacher_cache, path, distiller, train_set, vocab_ids, identity, batch_size=cfg.batch_size,
                    pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, flips="flip" in cfg.augment)
    if ctx.world_size == 1:
        return build()
    import torch.distributed as dist

    labels = build() if ctx.is_main else None
    dist.barrier()  # the others read what rank 0 wrote
    return labels if labels is not None else build()


def _average_gradients(params: Any, world_size: int) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def _rank0_says(flag: bool, ctx: Any) -> bool:
    """Rank 0's flag, on every process (its clock decides: the processes must stop at the same step)."""
    if ctx.world_size == 1:
        return flag
    import torch.distributed as dist

    decision = [flag]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def _updates(batches, accum: int):
    """Groups of `accum` micro-batches until the loader runs out."""
    while True:
        micro = [b for _, b in zip(range(accum), batches)]
        if len(micro) < accum:
            return
        yield micro
