#!/usr/bin/env python
"""Is reading data the bottleneck of evaluation? Samples/s of the data layer alone vs of the model alone.

    python benchmarks/data_throughput.py --data DIR_OR_FILE [--model DIR] [--split test] [--n 200] [--repeats 3]

Data layer: iterate the dataset, decode each image and turn it into the model's pixel tensor, tokenize
each text (everything `evaluate` does before the model). Model: the same samples with images and
token ids already prepared (encoder + decoder, the descriptions of one image batched together, as in
`evaluate`). Medians over --repeats passes, 2 torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT.parent / "shared" / "reference" / "ofa-tiny-random"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--split", default=None)
    ap.add_argument("--format", default=None)
    ap.add_argument("--n", type=int, default=200, help="samples per pass")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from ofa_grounding import Grounder
    from ofa_grounding.data import open_dataset
    from ofa_grounding.evaluate import _groups

    grounder = Grounder.from_pretrained(args.model)
    dataset = open_dataset(args.data, args.format, args.split)

    def read_pass() -> tuple[float, list]:
        start, prepared = time.perf_counter(), []
        samples = (s for _, s in zip(range(args.n), dataset))
        for group in _groups(samples, grounder.batch_size):
            image = grounder.load_image(group[0][1].image)
            pixels = grounder.image_tensor(image)
            ids = [grounder.tokenize_text(s.text) for _, s in group]
            prepared.append((pixels, image.size, [s.text for _, s in group], ids))
        return time.perf_counter() - start, prepared

    def model_pass(prepared: list) -> float:
        start = time.perf_counter()
        for pixels, size, texts, ids in prepared:
            features, grid = grounder.model.image_features(pixels.unsqueeze(0))  # no feature cache
            enc, src_len = grounder.encode_texts(features.expand(len(ids), -1, -1), grid, [i for i, _ in ids])
            grounder.decode(enc, src_len, [size] * len(texts), texts, [cut for _, cut in ids])
        return time.perf_counter() - start

    read_times, prepared = [], []
    for _ in range(args.repeats):
        t, prepared = read_pass()
        read_times.append(t)
    n = sum(len(texts) for _, _, texts, _ in prepared)
    model_times = [model_pass(prepared) for _ in range(args.repeats)]
    read_rate, model_rate = n / statistics.median(read_times), n / statistics.median(model_times)
    print(f"{n} samples from {args.data}{' split ' + args.split if args.split else ''}, "
          f"{len(prepared)} image groups, median of {args.repeats} passes, 2 threads")
    print(f"{'data layer (read, decode, resize, tokenize)':45} {read_rate:10.1f} samples/s")
    print(f"{'model (encoder + beam search)':45} {model_rate:10.1f} samples/s")
    print(f"{'data layer / model':45} {read_rate / model_rate:10.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
