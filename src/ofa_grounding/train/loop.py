"""Finetuning OFA for grounding, after OFA's RefCOCO recipe, on one process or many (torchrun, DDP).

Recipe (OFA, see docs/training-and-distillation.md): targets are the box's 4 bin tokens + EOS,
label-smoothed cross-entropy (0.1) over ids 0..3 and the bins (OFA-Compress's constraint), AdamW (0.9,
0.999, eps 1e-8, weight decay 0.01 on every parameter), linear warmup over 6 % of the updates then linear
decay to 0, gradient clipping at 1.0, optional drop-path, the inference resize. Only rank 0 logs,
validates and saves.

The trainer in parts, in the order they run:
- `Trainer.__init__`: setup: the output folder, the model, the loss terms, the data, the optimizer;
- `Trainer.resume` / `Trainer.save_state`: a run's checkpoint (the formats are in state.py);
- `Trainer.update`: one optimizer update over `accum` micro-batches, the loss a sum of terms (terms.py:
  the task loss, then distillation's terms (distill.py) and the cell heads' (cells.py) when asked for);
- `Trainer.validate`: Acc@0.5 and the rest on the validation data;
- `Trainer.run`: the loop over epochs that logs, validates, saves and stops.

A checkpoint is a model directory (loadable by `Grounder.from_pretrained`) plus `trainer_state.json`
(step, epoch, position in the epoch, scheduler, Python RNG, settings) and `trainer_state.safetensors`
(optimizer moments, torch RNG, the loss terms' own parameters): `--resume` continues bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..checkpoint import LoadedCheckpoint, save_checkpoint
from ..data import open_dataset
from ..distributed import distributed_context
from ..errors import CheckpointError
from ..evaluate import evaluate
from ..generation import allowed_token_ids as open_vocab_ids  # renamed; an import-only change here for now
from ..hardware import cpu_bf16_supported
from ..image import normalize_batch
from ..loader import load_model
from ..model import OFAModel
from ..model_names import parse_model_name
from ..predictor import Grounder
from .cells import CellTerm, smooth_bin_embeddings
from .config import DistillConfig, TrainConfig
from .data import GroundingTrainSet, ShardedShuffleSampler, collate
from .distill import DistillTerm
from .state import TrainLog, optimizer_state, restore_optimizer
from .terms import Forward, LossTerm, TaskLoss

__all__ = ["DistillConfig", "TrainConfig", "Trainer", "copy_backbone", "load_initial_model", "lr_factor", "train"]

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


def train(cfg: TrainConfig, on_update: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training; returns a summary (steps, best validation Acc@0.5, output paths).
    `on_update(step)` is called after every update, once its log row and any checkpoint are written."""
    return Trainer(cfg).run(on_update)


def copy_backbone(model: OFAModel, source: OFAModel, source_name: str) -> None:
    """Copy `source`'s ResNet backbone (weights and BatchNorm statistics) into `model`, in place; the projection to
    the model's width stays. Raises ValueError when the two backbones differ in type or width."""
    got = (source.config.resnet_type, source.config.resnet_width)
    want = (model.config.resnet_type, model.config.resnet_width)
    if got != want:
        raise ValueError(f"--backbone-from {source_name}: its backbone is {got[0]} at width {got[1]}, the model's "
                         f"{want[0]} at width {want[1]}")
    model.encoder.embed_images.load_state_dict(source.encoder.embed_images.state_dict())


def load_initial_model(name: str, device: str | torch.device | None = None) -> LoadedCheckpoint:
    """What training starts from (`loader.load_model`): `preset:NAME` with fresh weights (OFA's initialisation), or
    a checkpoint's weights (a directory or file in any layout `checkpoint.read_checkpoint` reads, a bundled model,
    or a hub id); see `model_names` for the names, and for bare preset names."""
    try:
        return load_model(name, device=device, allow_preset=True)
    except CheckpointError as exc:
        raise CheckpointError(f"--model {name}: {exc}") from None


def lr_factor(step: int, total: int, warmup: int) -> float:
    """OFA's schedule: linear warmup over `warmup` updates, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class Trainer:
    """One training run. Everything is built here (see the module's docstring for the parts); `run` trains."""

    def __init__(self, cfg: TrainConfig) -> None:
        _check_settings(cfg)
        self.cfg = cfg
        self.ctx = distributed_context(cfg.device)
        device = torch.device(cfg.device or "cpu")
        if self.ctx.world_size > 1 and device.type == "cuda":
            device = torch.device(f"cuda:{self.ctx.local_rank}")
        self.device = device
        self.out = Path(cfg.out)
        self.last_dir, self.best_dir = self.out / "last", self.out / "best"
        self._prepare_out()

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.teacher_side: int | None = None  # distillation: the teacher's own image side, where it differs
        self._load_student()
        self.vocab_ids = open_vocab_ids(self.generation, self.model.config.vocab_size, device)
        column = torch.full((self.model.config.vocab_size,), -1, dtype=torch.long, device=device)
        column[self.vocab_ids] = torch.arange(len(self.vocab_ids), device=device)
        # the loss, in the order its parts are added: the task loss, then a teacher's terms, then the cell heads'
        self.terms: list[LossTerm] = [TaskLoss(column, cfg.label_smoothing, cfg.bin_sigma)]
        distill = self._distill_term(cfg.distill) if cfg.distill is not None else None
        if distill is not None:
            self.terms.append(distill)

        self._open_data()
        if cfg.attr_weight > 0 or cfg.pointer_weight > 0:  # built after the data: it checks every sample's labels
            cells = CellTerm(self.model, self.samples, cfg.attr_weight, cfg.pointer_weight, device)
            self.terms.append(cells)
            if cfg.heads_from:  # a new run only (_check_settings)
                self._load_heads(cells, cfg.heads_from)
        if distill is not None and cfg.distill.teacher_cache:
            identity = {"teacher": str(Path(cfg.distill.teacher).resolve()), "data": str(cfg.data),
                        "split": str(cfg.split)}
            distill.use_teacher_cache(self.ctx, self.train_set, identity, cfg.batch_size, self.tokenizer.bos_id,
                                      cfg.augment)
        self._make_optimizer()
        self.step, self.epoch, self.position = 0, 0, 0
        self.best: dict[str, Any] = {"acc50": -1.0, "step": None}
        if cfg.resume:
            self.resume()
        if cfg.stop_at_step is not None and self.step >= cfg.stop_at_step:
            raise ValueError(f"--stop-at-step {cfg.stop_at_step}: the run is already at step {self.step}")
        self.net = self.model
        if self.ctx.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.val_set = open_dataset(cfg.val, split=cfg.val_split) if cfg.val and self.ctx.is_main else None
        self.csv_log = TrainLog(self.out / "log.csv", self.step if cfg.resume else None) if self.ctx.is_main else None
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.window: dict[str, Any] = {"tokens": 0, "updates": 0, "skipped": 0}  # what take_log reports on

    # -- setup -------------------------------------------------------------------------------------------------

    def _prepare_out(self) -> None:
        """Refuse to replace a run unasked; with --overwrite, clear the old run's results."""
        cfg, out = self.cfg, self.out
        if not cfg.resume and not cfg.overwrite and any((out / n).exists() for n in ("last", "best", "log.csv")):
            raise ValueError(f"--out {out} already holds a run: pass --resume to continue it or --overwrite to start "
                             "afresh (its last/, best/ and log.csv are replaced)")
        if not self.ctx.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite:  # nothing of the old run may pass for the new one's (a stale best/ above all)
            for name in ("last", "best"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "log.csv").unlink(missing_ok=True)

    def _load_student(self) -> None:
        """The model to train (the run's last/ when resuming) with the run's image size and regularisation."""
        cfg = self.cfg
        initial = load_initial_model(str(self.last_dir) if cfg.resume else cfg.model)
        model, self.tokenizer, self.generation = initial.model, initial.tokenizer, initial.generation
        self.tokenizer_dir, self.preprocess = initial.tokenizer_dir, initial.preprocess
        if cfg.image_size is not None:
            most = 16 * model.config.image_bucket_size  # the image position table's side, in pixels
            if cfg.image_size > most:
                raise ValueError(f"--image-size {cfg.image_size}: this model's image positions reach {most} px")
            self.preprocess = dataclasses.replace(self.preprocess, patch_image_size=cfg.image_size,
                                                  max_image_size=cfg.image_size)
        if cfg.drop_path is not None:
            model.config.encoder_drop_path_rate = model.config.decoder_drop_path_rate = cfg.drop_path
        if cfg.dropout is not None:
            model.config.dropout = cfg.dropout
        if cfg.drop_path is not None or cfg.dropout is not None:  # rebuild so the layers pick the rates up
            state = model.state_dict()
            model = OFAModel(model.config)
            model.load_state_dict(state)
        if cfg.smooth_bins and initial.layout == "preset":
            smooth_bin_embeddings(model, self.tokenizer.bin_offset, self.generation.num_bins, seed=cfg.seed)
        if cfg.backbone_from and initial.layout == "preset" and not cfg.resume:
            try:  # trained weights only: a preset's random backbone would be no start at all
                source = load_model(cfg.backbone_from).model
            except CheckpointError as exc:
                raise CheckpointError(f"--backbone-from: {exc}") from None
            copy_backbone(model, source, cfg.backbone_from)
        if cfg.bf16 and self.device.type == "cpu" and not cpu_bf16_supported():
            log.warning("--bf16 on a CPU without bfloat16 units (AVX-512 BF16 or AMX) is emulated: about 7x slower "
                        "than fp32 (measured on an AVX2 CPU); leave --bf16 out here")
        self.model = model.to(self.device).train()

    def _load_heads(self, cells: CellTerm, run_last: str) -> None:
        """--heads-from: the cell heads as an earlier run saved them (a distiller's projections start afresh)."""
        path = Path(run_last) / "trainer_state.safetensors"
        if not path.is_file():
            raise ValueError(f"--heads-from {run_last}: no trainer_state.safetensors there (pass a run's last/ "
                             "directory)")
        own, mine = _term_tensors(load_file(str(path)), cells, self.device), cells.state_tensors()
        if set(own) != set(mine) or any(own[k].shape != v.shape for k, v in mine.items()):
            raise ValueError(f"--heads-from {run_last}: its {cells.name} heads do not fit this run's (other loss "
                             "settings or another model width?)")
        cells.load_state_tensors(own)

    def _open_data(self) -> None:
        """The training samples, their dataset (targets, augmentation), the sampler and the schedule's length."""
        cfg = self.cfg
        dataset = open_dataset(cfg.data, split=cfg.split)
        self.samples = list(dataset)
        for issue in dataset.issues:
            log.warning("skipped training sample: %s", issue)
        if not self.samples:
            raise ValueError(f"{cfg.data}: no training samples (split {cfg.split!r})")
        self.train_set = GroundingTrainSet(self.samples, self.tokenizer, self.preprocess, self.generation,
                                           cfg.augment, cfg.seed, cfg.cache_images, group_by_image=cfg.group_by_image,
                                           absent_rate=cfg.absent_rate, teacher_side=self.teacher_side,
                                           cache_limit_bytes=cfg.cache_images_mb * 2**20)
        self.units_per_batch = cfg.batch_size // cfg.group_by_image  # images when grouping, else samples
        self.sampler = ShardedShuffleSampler(len(self.train_set), cfg.seed, self.ctx.rank, self.ctx.world_size)
        steps_per_epoch = max(1, len(self.sampler) // (self.units_per_batch * cfg.accum))
        self.total = cfg.max_steps or cfg.epochs * steps_per_epoch

    def _make_optimizer(self) -> None:
        """AdamW over the model's and the loss terms' own parameters (distillation's projections, the cell
        heads), OFA's schedule."""
        cfg = self.cfg
        self.term_params = [p for term in self.terms for p in term.parameters()]
        self.params = [*self.model.parameters(), *self.term_params]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=cfg.weight_decay, fused=self.device.type in ("cpu", "cuda"))
        warmup, floor = int(cfg.warmup_ratio * self.total), (cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: floor + (1 - floor) * lr_factor(s, self.total, warmup))

    def _distill_term(self, dcfg: DistillConfig) -> DistillTerm:
        teacher_loaded = load_model(dcfg.teacher)
        matched = dcfg.attn_weight > 0 or dcfg.hidden_weight > 0
        teacher_pre = teacher_loaded.preprocess
        teacher_size, size = teacher_pre.patch_image_size, self.preprocess.patch_image_size
        if matched and teacher_size != size:
            raise ValueError(f"teacher and student image sizes differ ({teacher_size} vs {size} px): their attention "
                             "maps and hidden states cannot be matched (use --attn-weight 0 --hidden-weight 0, or a "
                             "student with the teacher's image size)")
        # The teacher sees each image as it was trained to: resized to its own side and normalised its own way
        # (the data gives a second copy of each image only where that differs from the student's).
        own_view = (teacher_size, tuple(teacher_pre.mean), tuple(teacher_pre.std)) != \
            (size, tuple(self.preprocess.mean), tuple(self.preprocess.std))
        self.teacher_side = teacher_size if own_view else None
        return DistillTerm(dcfg, teacher_loaded.model.to(self.device), self.model, self.vocab_ids,
                           self.tokenizer.pad_id, teacher_pre)

    # -- a run's checkpoint ------------------------------------------------------------------------------------

    def save_model(self, directory: Path) -> None:
        save_checkpoint(directory, self.model, self.tokenizer_dir, self.preprocess, self.generation,
                        metadata={"step": str(self.step), "source": "ofa-grounding train"},
                        layout="modelscope" if self.cfg.modelscope else "safetensors")

    def save_state(self) -> None:
        """last/: the model and what `resume` needs to continue bit for bit (every rank takes part)."""
        tensors, scalars = optimizer_state(self.optimizer)
        rng_states = [torch.get_rng_state()]
        if self.ctx.world_size > 1:  # every rank's dropout RNG, so that each resumes where it stopped
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        if not self.ctx.is_main:
            return
        self.save_model(self.last_dir)
        for r, s in enumerate(rng_states):
            tensors[f"rng.torch.{r}"] = s
        for term in self.terms:  # trainer state, not part of the model
            tensors.update({f"{term.name}.{k}": v.detach().cpu().contiguous()
                            for k, v in term.state_tensors().items()})
        save_file(tensors, str(self.last_dir / "trainer_state.safetensors"))
        state = {"step": self.step, "epoch": self.epoch, "position": self.position, "best": self.best,
                 "optimizer": scalars, "scheduler": self.scheduler.state_dict(),
                 "python_rng": list(random.getstate()), "config": dataclasses.asdict(self.cfg),
                 "world_size": self.ctx.world_size}
        (self.last_dir / "trainer_state.json").write_text(json.dumps(state))

    def resume(self) -> None:
        """Read back what `save_state` wrote into last/."""
        cfg = self.cfg
        state = json.loads((self.last_dir / "trainer_state.json").read_text())
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(f"--resume: the run used {state['world_size']} process(es), not {self.ctx.world_size}")
        changed = [k for k in ("data", "split", "max_steps", "epochs", "batch_size", "accum", "lr", "seed", "augment",
                               "group_by_image") if state["config"].get(k) != getattr(cfg, k)]
        if changed:
            log.warning("--resume with other settings than the run's (%s): it will not match an uninterrupted run",
                        ", ".join(changed))
        tensors = load_file(str(self.last_dir / "trainer_state.safetensors"))
        restore_optimizer(self.optimizer, tensors, state["optimizer"])
        for term in self.terms:
            own = _term_tensors(tensors, term, self.device)
            if term.state_tensors() and not own:
                raise ValueError(f"--resume: the run's trainer state has no {term.name} parameters (was it started "
                                 "with other loss settings?)")
            term.load_state_tensors(own)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.position, self.best = state["step"], state["epoch"], state["position"], \
            state["best"]
        rng = state["python_rng"]
        random.setstate((rng[0], tuple(rng[1]), rng[2]))
        torch.set_rng_state(tensors[f"rng.torch.{self.ctx.rank}"])

    # -- one update ----------------------------------------------------------------------------------------------

    def update(self, micro: list[Batch]) -> None:
        """One optimizer update over the micro-batches `micro` (as `collate` gives them, on the host). What the
        loss terms log stays on the device until `take_log`."""
        n_tokens = sum(b["target"].numel() for b in micro)
        for i, host in enumerate(micro):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
            batch["patch_images"] = normalize_batch(batch.pop("pixels"), self.preprocess.mean, self.preprocess.std)
            for term in self.terms:
                term.before_forward(batch, host)
            with contextlib.ExitStack() as stack:
                # DDP averages gradients over processes, each normalised by its own token count: equal counts
                # give fairseq's per-token mean over the whole update (with --group-by-image an image with fewer
                # than K samples makes them differ slightly).
                if self.ctx.world_size > 1 and i < len(micro) - 1:
                    stack.enter_context(self.net.no_sync())
                stack.enter_context(self.autocast)
                records = [stack.enter_context(term.observing()) for term in self.terms]
                logits = self.net(batch["input_ids"], batch["patch_images"], batch["prev_tokens"], self.vocab_ids,
                                  batch.get("image_index"), record=next((r for r in records if r is not None), None))
                fwd = Forward(batch, host, logits, n_tokens, len(micro))
                parts = [part for term in self.terms for part in term(fwd)]
                loss = parts[0]
                for part in parts[1:]:
                    loss = loss + part
                loss.backward()
        if self.ctx.world_size > 1:  # DDP averages the model's gradients, not the terms' own parameters'
            self.ctx.average_gradients(self.term_params)
        self._optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.position += len(micro) * self.units_per_batch
        self.window["tokens"] += n_tokens
        self.window["updates"] += 1

    def _optimizer_step(self) -> None:
        """Clip, then step unless the gradient norm is not finite. With --log-every 1 (or an optimizer that
        cannot skip on the device) the host reads the norm now; else the fused AdamW skips the update on the
        device, told through `found_inf` as torch.amp's GradScaler tells it, and the skips are counted there."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_norm)
        if self.cfg.log_every == 1 or not getattr(self.optimizer, "_step_supports_amp_scaling", False):
            if math.isfinite(float(grad_norm)):
                self.optimizer.step()
            else:
                log.warning("step %d: non-finite gradient norm, update skipped", self.step)
            return
        found_inf = (~torch.isfinite(grad_norm)).float()
        self.optimizer.found_inf = found_inf
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self.window["skipped"] = self.window["skipped"] + found_inf

    def take_log(self) -> dict[str, str]:
        """The loss terms' log.csv columns over the updates since the last call (the host waits for the device
        here), and a warning if any of them were skipped; starts a new window."""
        row: dict[str, str] = {}
        for term in self.terms:
            row.update(term.log(self.window["tokens"], self.window["updates"]))
            term.reset()
        skipped = int(self.window["skipped"])
        if skipped:
            log.warning("steps %d-%d: %d update(s) skipped: non-finite gradient norm",
                        self.step - self.window["updates"] + 1, self.step, skipped)
        self.window = {"tokens": 0, "updates": 0, "skipped": 0}
        return row

    # -- validation ----------------------------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """The summary of `evaluate` on the validation data (rank 0 only), the model back in training mode."""
        self.model.eval()
        grounder = Grounder(self.model, self.tokenizer, self.preprocess, self.generation, device=self.device,
                            fuse=False)
        report = evaluate(grounder, self.val_set, self.cfg.val_split, progress=False, limit=self.cfg.val_limit)
        self.model.train()
        return report.summary

    # -- the loop ------------------------------------------------------------------------------------------------

    def epoch_batches(self) -> Iterator[Batch]:
        """This epoch's micro-batches, from the run's position in it."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.position)
        self.train_set.set_epoch(self.epoch)
        # Its own generator: a loader draws a seed from the global RNG when it starts an epoch, which would
        # shift the dropout stream of a run resumed in the middle of an epoch.
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=self.units_per_batch, sampler=self.sampler, num_workers=cfg.workers,
            drop_last=True, collate_fn=partial(collate, pad_id=self.tokenizer.pad_id, bos_id=self.tokenizer.bos_id),
            pin_memory=self.device.type == "cuda",  # so that copies to the GPU do not wait for it
            generator=torch.Generator().manual_seed(cfg.seed + self.epoch))
        return iter(loader)

    def run(self, on_update: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to the end of the schedule (or --stop-at-step / --max-minutes); returns the summary."""
        cfg, ctx = self.cfg, self.ctx
        bar = tqdm(total=self.total, initial=self.step, desc="train" if cfg.distill is None else "distill", unit="step",
                   disable=not cfg.progress or not ctx.is_main, dynamic_ncols=True)
        window_start, window_samples = time.perf_counter(), 0
        deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else None
        out_of_time = stopped = False
        while self.step < self.total and not stopped:
            for micro in _updates(self.epoch_batches(), cfg.accum):
                self.update(micro)
                window_samples += sum(len(b["target"]) for b in micro) * ctx.world_size
                bar.update(1)
                # Early stops keep the schedule planned for `total` (a run on a long schedule, stopped part way).
                last = self.step >= self.total
                if not last and cfg.stop_at_step is not None and self.step >= cfg.stop_at_step:
                    log.warning("--stop-at-step %d reached (schedule of %d steps): stopping; last/ holds step %d",
                                cfg.stop_at_step, self.total, self.step)
                    stopped = True
                elif not last and deadline is not None and ctx.rank0_says(time.monotonic() > deadline):
                    log.warning("--max-minutes %g reached at step %d of %d: stopping; last/ holds step %d",
                                cfg.max_minutes, self.step, self.total, self.step)
                    stopped = out_of_time = True
                validating = self.val_set is not None and (self.step % cfg.eval_every == 0 or last)
                if self.step % cfg.log_every == 0 or last or stopped or validating:
                    terms_row = self.take_log()  # the one place the host waits for the device
                    rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{float(terms_row['loss']):.3f}", lr=f"{lr:.2e}", samples_s=f"{rate:.0f}")
                    row = {"step": self.step, "epoch": self.epoch, "lr": f"{lr:.6g}", "samples_per_s": f"{rate:.1f}",
                           **terms_row}
                    if validating:
                        row.update(self._validate_and_keep_best())
                        window_start, window_samples = time.perf_counter(), 0  # validation is not training time
                    if self.csv_log:
                        self.csv_log.write(**row)
                if self.step % cfg.save_every == 0 or last or (stopped and self.step % cfg.save_every):
                    self.save_state()
                if on_update is not None:
                    on_update(self.step)
                if last or stopped:
                    break
            else:  # the epoch ran out (a partial last update is dropped)
                self.epoch, self.position = self.epoch + 1, 0
        bar.close()
        self._check_replicas()
        if self.net is not self.model:
            # DDP's reducer holds the process group: let it go while the interpreter is whole. A group freed
            # only at interpreter exit can abort the process (gloo's threads; seen once in CI, SIGABRT on rank 0).
            self.net = self.model
            gc.collect()
        ctx.close()
        return {"steps": self.step, "epochs": self.epoch, "out_of_time": out_of_time, "stopped_early": stopped,
                "best_acc50": self.best["acc50"] if self.val_set is not None else None,
                "best_step": self.best["step"], "last": str(self.last_dir),
                "best": str(self.best_dir) if self.best["step"] else None}

    def _validate_and_keep_best(self) -> dict[str, str]:
        summary = self.validate()
        best = summary["acc50"] > self.best["acc50"]
        if best:
            self.best = {"acc50": summary["acc50"], "step": self.step}
            self.save_model(self.best_dir)
        if self.ctx.is_main:  # one line per validation, above the progress bar if there is one, or without it
            tqdm.write(validation_line(self.step, self.total, summary, best), file=sys.stderr)
        return {"val_acc50": f"{summary['acc50']:.4f}", "val_acc75": f"{summary['acc75']:.4f}",
                "val_miou": f"{summary['miou']:.4f}"}

    def _check_replicas(self) -> None:
        """DDP keeps the model's replicas identical, `update` the terms' parameters; check it rather than trust it."""
        if self.ctx.world_size == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():  # the loss terms' own parameters are averaged by hand (update): checked too
            checksum = [float(sum(p.double().sum() for p in self.params))]
        sums: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(sums, checksum)
        if len({s[0] for s in sums}) != 1:
            raise RuntimeError(f"replicas diverged: parameter checksums {sums}")


def validation_line(step: int, total: int, summary: dict[str, Any], best: bool) -> str:
    """What train and distill print after each validation: `metrics.summarize`'s numbers, labelled."""
    line = (f"step {step}/{total}: val Acc@0.5 {100 * summary['acc50']:.1f} %, Acc@0.75 {100 * summary['acc75']:.1f} "
            f"%, mIoU {100 * summary['miou']:.1f} % ({summary['count']} samples")
    if "absent" in summary:
        absent = summary["absent"]
        line += f"; absent objects answered not found {100 * absent['not_found']:.1f} % of {absent['count']}"
    return line + ("), best so far" if best else ")")


def _term_tensors(tensors: dict[str, torch.Tensor], term: LossTerm, device: torch.device) -> dict[str, torch.Tensor]:
    """A loss term's own tensors in a saved trainer state (stored under f"{term.name}."), on `device`."""
    prefix = f"{term.name}."
    return {k[len(prefix):]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}


def _check_settings(cfg: TrainConfig) -> None:
    """Contradictions among the settings, found before anything is loaded."""
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other")
    if cfg.heads_from and not (cfg.attr_weight > 0 or cfg.pointer_weight > 0):
        raise ValueError("--heads-from needs the heads it starts: --attr-weight or --pointer-weight above 0")
    if cfg.heads_from and cfg.resume:
        raise ValueError("--heads-from starts a new run; --resume continues one with its own heads")
    if not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"--lr {cfg.lr} and --min-lr {cfg.min_lr}: need 0 <= --min-lr <= --lr")
    at_least_one = {"--batch-size": cfg.batch_size, "--accum": cfg.accum, "--epochs": cfg.epochs,
                    "--max-steps": cfg.max_steps, "--stop-at-step": cfg.stop_at_step, "--val-limit": cfg.val_limit,
                    "--log-every": cfg.log_every, "--eval-every": cfg.eval_every, "--save-every": cfg.save_every}
    for option, value in at_least_one.items():
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    if cfg.workers < 0 or (cfg.max_minutes is not None and not cfg.max_minutes > 0):
        raise ValueError("--workers must not be negative and --max-minutes must be positive")
    if cfg.image_size is not None and (cfg.image_size < 32 or cfg.image_size % 16):
        raise ValueError(f"--image-size must be a multiple of 16 (the backbone's stride) of at least 32, got "
                         f"{cfg.image_size}")
    if not 0 <= cfg.warmup_ratio <= 1:  # also NaN, as below
        raise ValueError(f"--warmup-ratio must be in [0, 1], got {cfg.warmup_ratio}")
    for option, value in {"--label-smoothing": cfg.label_smoothing, "--drop-path": cfg.drop_path,
                          "--dropout": cfg.dropout}.items():
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"{option} must be in [0, 1), got {value}")
    for option, value in {"--weight-decay": cfg.weight_decay, "--bin-sigma": cfg.bin_sigma,
                          "--attr-weight": cfg.attr_weight, "--pointer-weight": cfg.pointer_weight,
                          "--cache-images-mb": cfg.cache_images_mb}.items():
        if not value >= 0:
            raise ValueError(f"{option} must not be negative, got {value}")
    if not cfg.clip_norm > 0:  # 0 would scale every gradient to nothing
        raise ValueError(f"--clip-norm must be positive, got {cfg.clip_norm}")
    if cfg.group_by_image < 1:
        raise ValueError(f"--group-by-image must be at least 1, got {cfg.group_by_image}")
    if cfg.batch_size % cfg.group_by_image:
        raise ValueError(f"--batch-size {cfg.batch_size} is not a multiple of --group-by-image {cfg.group_by_image}")
    if cfg.distill is not None and cfg.distill.teacher_cache and cfg.absent_rate:
        raise ValueError("--absent-rate cannot be used with --teacher-cache (the cache holds the teacher's answers to "
                         "the dataset's own descriptions, not to the absent ones drawn during training)")
    if cfg.distill is not None:
        try:
            parse_model_name(cfg.distill.teacher)  # the name only (a path, a bundled model, a hub id); no load
        except CheckpointError as exc:
            raise CheckpointError(f"--teacher {exc}") from None


def _updates(batches: Iterator[Batch], accum: int) -> Iterator[list[Batch]]:
    """Groups of `accum` micro-batches until the loader runs out."""
    while True:
        micro = [b for _, b in zip(range(accum), batches)]
        if len(micro) < accum:
            return
        yield micro
