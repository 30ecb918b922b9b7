"""Learning lab for the demo model: pilots of training recipes, compared at equal samples seen.

Trains the demo preset (or any preset / model directory) on a synthetic benchmark folder with the
trainer's own data layer and loss, plus optional training-only heads (the saved model stays plain OFA):
  --attr W     per grid cell, the colour / shape / size of the object centred there (or none), read from
               the image tokens before the encoder: dense supervision of the backbone
  --pointer W  which grid cells the target covers, read from the encoder's image tokens: the encoder
               learns to mark the target
and `--positions` (OFA's entangle_position_embedding / disable_entangle flags).

Logs every --log-every steps: NLL per box token (x0, y0, x1, y1, EOS), the cell heads' accuracies. At the
end: Acc@0.5 / Acc@0.75 / mIoU per expression kind on the first --eval-n val samples, where wrong boxes
land, and a text-swap check (same image, other expression). Results: OUT/log.jsonl, OUT/summary.json.

usage: python scripts/lab.py --data DATA --out OUT --max-steps N [options]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ofa_grounding.checkpoint import save_checkpoint
from ofa_grounding.data import open_dataset
from ofa_grounding.evaluate import evaluate
from ofa_grounding.generation import allowed_token_ids
from ofa_grounding.image import normalize_batch
from ofa_grounding.metrics import box_iou
from ofa_grounding.predictor import Grounder
from ofa_grounding.train.cells import CellHeads, cell_labels, smooth_bin_embeddings
from ofa_grounding.train.data import GroundingTrainSet, collate
from ofa_grounding.train.loop import load_initial_model, lr_factor
from ofa_grounding.train.losses import soft_bin_cross_entropy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="preset:demo")
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--schedule-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bin-sigma", type=float, default=12.0)
    ap.add_argument("--attr", type=float, default=0.0)
    ap.add_argument("--pointer", type=float, default=0.0)
    ap.add_argument("--positions", choices=("preset", "entangled", "encoder", "bias"), default="preset",
                    help="entangled: in every token value (the demo preset); encoder: only the encoder's; bias: "
                         "only in attention biases (OFA's default)")
    ap.add_argument("--smooth-bins", action="store_true")
    ap.add_argument("--position-std", type=float, default=None)
    ap.add_argument("--kinds", default=None, help="train only on these kinds (comma-separated)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    initial = load_initial_model(args.model)
    model, tok, pre, gen, tok_dir = (initial.model, initial.tokenizer, initial.preprocess, initial.generation,
                                     initial.tokenizer_dir)
    if args.positions != "preset":  # configuration flags: the same weights either way
        model.config.entangle_position_embedding = args.positions != "bias"
        model.config.disable_entangle = args.positions == "encoder"
    if args.smooth_bins:
        smooth_bin_embeddings(model, tok.bin_offset, gen.num_bins, seed=args.seed)
    if args.position_std is not None:
        smooth_image_positions(model, pre.patch_image_size // 16, seed=args.seed, std=args.position_std)
    grid = pre.patch_image_size // 16
    samples = list(open_dataset(args.data, split="train"))
    if args.kinds:
        keep = set(args.kinds.split(","))
        samples = [s for s in samples if s.meta.get("kind") in keep]
    print(f"train samples: {len(samples)}", flush=True)
    ds = GroundingTrainSet(samples, tok, pre, gen, ("flip",), args.seed, cache_images=True)
    heads = CellHeads(model.config.d_model)
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True)
    total = args.schedule_steps or args.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, args.warmup))
    vocab_ids = allowed_token_ids(gen, model.config.vocab_size)
    column = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    column[vocab_ids] = torch.arange(len(vocab_ids))
    model.train()
    log = (out / "log.jsonl").open("w")
    t0 = time.perf_counter()
    step, epoch = 0, 0
    acc: dict[str, float] = {}
    n_acc = 0
    while step < args.max_steps:
        ds.set_epoch(epoch)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed * 100003 + epoch)).tolist()
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            items = [ds[i] for i in order[start:start + args.batch_size]]
            batch = collate(items, tok.pad_id, tok.bos_id)
            imgs = normalize_batch(batch["pixels"], pre.mean, pre.std)
            labels = cell_labels([samples[it.index] for it in items], [it.flipped for it in items], grid)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                image_embeds, g = model.encoder.embed_image(imgs)
                enc = model.encoder(batch["input_ids"], image_embeds, g)
                logits = model.decoder(batch["prev_tokens"], enc, vocab_ids)
            lprobs = F.log_softmax(logits.float(), -1).view(-1, logits.shape[-1])
            target = column[batch["target"].view(-1)]
            loss, nll = soft_bin_cross_entropy(lprobs, target, 0.1, args.bin_sigma)
            n_tok = target.numel()
            total_loss = loss / n_tok
            terms = heads.losses(image_embeds.float(), enc.hidden[:, :grid * grid].float(), labels)
            if args.attr > 0:
                total_loss = total_loss + args.attr * terms["attr"]
            if args.pointer > 0:
                total_loss = total_loss + args.pointer * terms["pointer"]
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            with torch.no_grad():
                lp5 = lprobs.view(-1, 5, lprobs.shape[-1])
                pos_nll = -lp5.gather(-1, target.view(-1, 5, 1)).squeeze(-1).mean(0)
            for k, v in {"nll": nll.item() / n_tok, **{f"nll{i}": float(x) for i, x in enumerate(pos_nll)},
                         **{k: v.item() for k, v in terms.items()}}.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            if step % args.log_every == 0:
                row = {"step": step, "samples": step * args.batch_size, "t": round(time.perf_counter() - t0),
                       "lr": f"{sched.get_last_lr()[0]:.2e}", **{k: round(v / n_acc, 3) for k, v in acc.items()}}
                print(json.dumps(row), flush=True)
                log.write(json.dumps(row) + "\n")
                log.flush()
                acc, n_acc = {}, 0
            if step >= args.max_steps:
                break
        epoch += 1
    train_s = time.perf_counter() - t0
    save_checkpoint(out / "model", model, tok_dir, pre, gen, metadata={"step": str(step), "source": "scripts/lab.py"})
    summary = diagnose(model, tok, pre, gen, args.data, args.eval_n)
    summary.update(steps=step, samples=step * args.batch_size, train_seconds=round(train_s),
                   args=vars(args))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


@torch.no_grad()
def smooth_image_positions(model: nn.Module, grid: int, seed: int = 0, std: float = 0.02) -> None:
    """Start the image position embeddings as a smooth 2-D function of (row, column) on a grid x grid image
    (a sum of low-frequency cosines of the row and of the column, randomly mixed), at `std`: neighbouring
    cells start similar, so a read-out of positions learned on some cells carries to their neighbours."""
    table = model.encoder.embed_image_positions.weight
    side = model.config.image_bucket_size
    g = torch.Generator().manual_seed(seed + 1)
    u = (torch.arange(side, dtype=torch.float32) + 0.5) / grid  # 0..1 across the training grid
    basis = torch.stack([torch.cos(math.pi * k * u) for k in range(1, 2 * grid + 1)], dim=1)  # (side, 2g)
    rows, cols = basis @ torch.randn(2 * grid, table.shape[1], generator=g), \
        basis @ torch.randn(2 * grid, table.shape[1], generator=g)
    emb = (rows[:, None, :] + cols[None, :, :]).reshape(side * side, -1)  # id - 1 = r * side + c
    table[1:] = (emb / emb.std() * std).to(table.dtype)  # pilot C: dropped (docs/experiments/2026-12-04-demo-model.md)


@torch.no_grad()
def diagnose(model, tok, pre, gen, data: str, n: int) -> dict:
    model.eval()
    val = [s for _, s in zip(range(n), open_dataset(data, split="val"))]

    class Rows(list):  # evaluate() wants a dataset: iterable with `issues`
        issues = ()

    report = evaluate(Grounder(model, tok, pre, gen, fuse=False), Rows(val), "val", progress=False)
    by_kind: dict[str, list] = {}
    lands = {"target": 0, "same_noun_distractor": 0, "other_object": 0, "no_object": 0}
    for r, s in zip(report.records, val):
        by_kind.setdefault(s.meta["kind"], []).append(r)
        objs = s.meta["objects"]
        ious = [box_iou(r["box"], o["box"]) for o in objs]
        best = max(range(len(objs)), key=lambda i: ious[i])
        desc = s.meta["expression"]["desc"]
        if ious[best] < 0.5:
            lands["no_object"] += 1
        elif objs[best]["box"] == list(s.box):
            lands["target"] += 1
        elif all(objs[best][k] == v for k, v in desc.items()):
            lands["same_noun_distractor"] += 1
        else:
            lands["other_object"] += 1
    pairs = same = 0
    by_image: dict[str, list] = {}
    for r, s in zip(report.records, val):
        by_image.setdefault(s.image_key, []).append(r)
    for rs in by_image.values():
        for a in range(len(rs)):
            for b in range(a + 1, len(rs)):
                if rs[a]["gt_box"] != rs[b]["gt_box"]:
                    pairs += 1
                    same += box_iou(rs[a]["box"], rs[b]["box"]) > 0.7
    return {"val_n": len(report.records), **{k: round(v, 4) for k, v in report.summary.items()},
            "by_kind": {k: round(sum(r["hit"] for r in v) / len(v), 3) for k, v in sorted(by_kind.items())},
            "wrong_or_right_box_lands_on": {k: round(v / len(val), 3) for k, v in lands.items()},
            "text_swap_same_box": round(same / max(pairs, 1), 3), "text_swap_pairs": pairs}


if __name__ == "__main__":
    main()
