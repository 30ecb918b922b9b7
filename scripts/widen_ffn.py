"""Make a copy of a trained model with wider feed-forward blocks that answers as the original does, to train further.

    python scripts/widen_ffn.py src/ofa_grounding/models/demo runs/demo/stage20-init --factor 2

Each FFN unit (a row of `fc1`, its entry of the LayerNorm at FFN width, a column of `fc2`) is copied `factor`
times. The copies compute the same activation; copying every unit leaves the mean and variance that NormFormer's
LayerNorm at FFN width takes over the units unchanged, so its outputs are the same values, repeated; `fc2`'s
column for a unit is split among its copies in random shares that sum to one, so the sum it computes is the
original's. The uneven shares give the copies different gradients, so that training can tell them apart
(Net2Net's widening, arXiv:1511.05641, with the split made uneven instead of adding noise).
The result is still OFA's architecture (only `encoder_ffn_dim` / `decoder_ffn_dim` change) and loads wherever the
original does. The script checks that the copy's answers equal the original's before writing it.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from ofa_grounding import load_model
from ofa_grounding.model import OFAModel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a sibling script, also when loaded by path
from deepen_model import write_if_same


def widen(model: OFAModel, factor: int, seed: int = 0) -> OFAModel:
    """A copy of `model` whose encoder and decoder FFNs are `factor` times wider, computing the same function."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    cfg = copy.deepcopy(model.config)
    cfg.encoder_ffn_dim, cfg.decoder_ffn_dim = cfg.encoder_ffn_dim * factor, cfg.decoder_ffn_dim * factor
    wider = OFAModel(cfg)
    state = dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    for side in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, side).layers):
            prefix = f"{side}.layers.{i}."
            # unit u of the wide layer is unit u % n of the original (copies side by side, in blocks of n)
            state[prefix + "fc1.weight"] = layer.fc1.weight.detach().repeat(factor, 1)
            state[prefix + "fc1.bias"] = layer.fc1.bias.detach().repeat(factor)
            state[prefix + "ffn_layer_norm.weight"] = layer.ffn_layer_norm.weight.detach().repeat(factor)
            state[prefix + "ffn_layer_norm.bias"] = layer.ffn_layer_norm.bias.detach().repeat(factor)
            shares = torch.rand(factor, layer.fc2.in_features, generator=generator) + 0.5  # within 1:3 of each other
            shares = shares / shares.sum(0, keepdim=True)
            state[prefix + "fc2.weight"] = layer.fc2.weight.detach().repeat(1, factor) * shares.reshape(1, -1)
    wider.load_state_dict(state)
    return wider.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model directory or bundled model name")
    parser.add_argument("out", type=Path, help="the new model directory (must not exist)")
    parser.add_argument("--factor", type=int, default=2, help="how many times wider (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split shares (default 0)")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; pass a new folder", file=sys.stderr)
        return 2
    if args.factor < 2:
        print(f"error: --factor must be at least 2, got {args.factor}", file=sys.stderr)
        return 2
    loaded = load_model(args.model)
    loaded.model.float().eval()  # bundled models may keep their token table in float16
    wider = widen(loaded.model, args.factor, args.seed)
    cfg = wider.config
    return write_if_same(loaded, wider, args.out, {"widened_from": str(args.model)},
                         f"FFN {cfg.encoder_ffn_dim} (encoder) / {cfg.decoder_ffn_dim} (decoder)", tolerance=1e-4)


if __name__ == "__main__":
    sys.exit(main())
