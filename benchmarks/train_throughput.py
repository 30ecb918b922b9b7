#!/usr/bin/env python
"""Where does a training step's time go? Samples/s of the loader alone, of the model update alone, and of both.

    python benchmarks/train_throughput.py --data DIR [--model demo] [--device cuda] [--batch-size 32] \
        [--workers 4] [--steps 50] [--bf16] [--teacher DIR]

- loader: `train`'s data path alone (GroundingTrainSet with flip and cached images, collate, DataLoader
  with --workers processes), over --steps batches after one warm-up pass over the same batches;
- update: forward, soft-bin loss, backward, clipping and AdamW on one prepared batch already on the
  device, --steps times; "synced" reads the loss every step as the training loop does (`.item()`),
  "unsynced" only at the end (the gap is what per-step host syncs cost on a GPU);
- with --teacher DIR: the update plus the teacher's forward pass (distillation's extra work).
Medians of 3 passes; 2 torch threads on CPU. A step costs max(loader, update) at best when the
loader runs in other processes, their sum without workers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training data (any format `train` reads)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default="preset:demo",
                    help="preset:NAME (random weights) or a model name as train --model takes (default: preset:demo)")
    ap.add_argument("--teacher", help="also time the update with this teacher's forward pass")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    from ofa_grounding.data import open_dataset
    from ofa_grounding.generation import allowed_token_ids
    from ofa_grounding.image import normalize_batch
    from ofa_grounding.loader import load_model
    from ofa_grounding.train.data import GroundingTrainSet, collate
    from ofa_grounding.train.losses import soft_bin_cross_entropy

    device = torch.device(args.device)
    initial = load_model(args.model, allow_preset=True)
    model, tokenizer, pre, gen = initial.model, initial.tokenizer, initial.preprocess, initial.generation
    model.to(device).train()
    samples = list(open_dataset(args.data, split=args.split))[: args.batch_size * args.steps]
    if len(samples) < args.batch_size * args.steps:
        print(f"error: --data has {len(samples)} samples, fewer than --batch-size x --steps", file=sys.stderr)
        return 2
    train_set = GroundingTrainSet(samples, tokenizer, pre, gen, ["flip"], cache_images=True)

    def loader_pass() -> float:
        loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, num_workers=args.workers,
                                             collate_fn=collate, drop_last=True)
        t = time.perf_counter()
        for batch in loader:
            batch["pixels"].to(device)
        return len(samples) / (time.perf_counter() - t)

    batch = {k: v.to(device) for k, v in collate([train_set[i] for i in range(args.batch_size)]).items()}
    pixels = normalize_batch(batch["pixels"], pre.mean, pre.std)
    vocab = allowed_token_ids(gen, model.config.vocab_size, device)
    column = torch.full((model.config.vocab_size,), -1, dtype=torch.long, device=device)
    column[vocab] = torch.arange(len(vocab), device=device)
    target = column[batch["target"].view(-1)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type in ("cpu", "cuda"))
    teacher = None
    if args.teacher:
        teacher = load_model(args.teacher, device=device).model.eval().requires_grad_(False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def update_pass(sync: bool, with_teacher: bool = False) -> float:
        def sync_device() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        sync_device()
        t = time.perf_counter()
        for _ in range(args.steps):
            with autocast:
                if with_teacher:
                    with torch.no_grad():
                        teacher(batch["input_ids"], pixels, batch["prev_tokens"], vocab)
                logits = model(batch["input_ids"], pixels, batch["prev_tokens"], vocab)
                lprobs = torch.log_softmax(logits.float(), -1).view(-1, logits.shape[-1])
                loss, _ = soft_bin_cross_entropy(lprobs, target, 0.1, 12.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if sync:
                loss.item()
        sync_device()
        return args.steps * args.batch_size / (time.perf_counter() - t)

    rows = []
    loader_pass()  # fills the image cache (in the workers, for that pass only) and warms up
    rows.append(("loader", statistics.median(loader_pass() for _ in range(3))))
    update_pass(True)  # warm-up
    rows.append(("update, synced every step", statistics.median(update_pass(True) for _ in range(3))))
    rows.append(("update, unsynced", statistics.median(update_pass(False) for _ in range(3))))
    if teacher is not None:
        update_pass(True, True)
        rows.append(("update + teacher forward, synced", statistics.median(update_pass(True, True) for _ in range(3))))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} on {args.device} ({name}), batch {args.batch_size}, {args.workers} loader processes, "
          f"{'bf16' if args.bf16 else 'fp32'}, torch {torch.__version__}")
    print(f"{'stage':<36}{'samples/s':>12}{'steps/s':>10}")
    for stage, rate in rows:
        print(f"{stage:<36}{rate:>12.1f}{rate / args.batch_size:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
