"""Make a deeper copy of a trained model that answers exactly as the original does, to train further.

    python scripts/deepen_model.py src/ofa_grounding/models/demo runs/demo/stage9-init --encoder-layers 4 \
        --decoder-layers 4

Each new layer is a copy of the layer below it (weights and relative-position table) whose residual branches are
switched off: the LayerNorms after its attention (`*_mid_layer_norm`) and its FFN's output projection (`fc2`) start
at zero, so the layer adds nothing to the stream until training opens it (as progressive stacking grows BERT).
The result is still OFA's architecture (only `encoder_layers` / `decoder_layers` change) and loads wherever the
original does. The script checks that the copy's answers equal the original's before writing it.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from ofa_grounding import load_model
from ofa_grounding.checkpoint import LoadedCheckpoint, save_checkpoint
from ofa_grounding.model import OFAModel


def layer_plan(old: int, new: int) -> list[tuple[int, bool]]:
    """For each new layer, (the old layer it copies, whether it is a fresh copy): old layers in order, each
    followed by its copies, the first `new % old` layers getting one copy more."""
    plan = []
    for j in range(old):
        copies = new // old - 1 + (j < new % old)
        plan += [(j, False)] + [(j, True)] * copies
    return plan


def _silence(layer: torch.nn.Module) -> None:
    for name, module in layer.named_modules():
        if name.endswith("mid_layer_norm") or name == "fc2":
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def deepen(model: OFAModel, encoder_layers: int, decoder_layers: int) -> OFAModel:
    cfg = copy.deepcopy(model.config)
    if encoder_layers < cfg.encoder_layers or decoder_layers < cfg.decoder_layers:
        raise ValueError(f"can only add layers: the model has {cfg.encoder_layers}+{cfg.decoder_layers}")
    if cfg.share_attn_bias:
        raise ValueError("models sharing one attention bias table are not supported")
    old = model.state_dict()
    cfg.encoder_layers, cfg.decoder_layers = encoder_layers, decoder_layers
    deeper = OFAModel(cfg)
    state = {k: v for k, v in old.items() if ".layers." not in k and "rel_pos_table_list." not in k}
    for side, depth in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        part = getattr(model, side)
        for i, (j, fresh) in enumerate(layer_plan(len(part.layers), depth)):
            layer = copy.deepcopy(part.layers[j])
            if fresh:
                _silence(layer)
            state.update({f"{side}.layers.{i}.{k}": v for k, v in layer.state_dict().items()})
            for table in ("token_rel_pos_table_list", "image_rel_pos_table_list"):
                if hasattr(part, table):
                    state[f"{side}.{table}.{i}.weight"] = getattr(part, table)[j].weight.detach().clone()
    deeper.load_state_dict(state)
    return deeper.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model directory or bundled model name")
    parser.add_argument("out", type=Path, help="the new model directory (must not exist)")
    parser.add_argument("--encoder-layers", type=int, required=True)
    parser.add_argument("--decoder-layers", type=int, required=True)
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; pass a new folder", file=sys.stderr)
        return 2
    loaded = load_model(args.model)
    deeper = deepen(loaded.model.eval(), args.encoder_layers, args.decoder_layers)
    return write_if_same(loaded, deeper, args.out, {"deepened_from": str(args.model)},
                         f"{args.encoder_layers}+{args.decoder_layers} layers")


def write_if_same(loaded: LoadedCheckpoint, grown: OFAModel, out: Path, metadata: dict[str, str], what: str,
                  tolerance: float = 1e-5) -> int:
    """Save `grown` to `out` (beside `loaded`'s tokenizer and settings) if it gives the same decoder logits as
    `loaded.model` on a random image and some tokens; 0 when written, 1 (with a message) when it answers differently.
    """
    torch.manual_seed(0)
    side = loaded.preprocess.patch_image_size
    images, tokens = torch.randn(2, 3, side, side), torch.randint(4, 1000, (2, 9))
    prev = torch.randint(4, 1000, (2, 4))
    with torch.no_grad():
        a, b = (m(tokens, images, prev) for m in (loaded.model, grown))
    diff = (a - b).abs().max().item()
    if diff > tolerance:
        print(f"error: the grown copy answers differently (max logit difference {diff:.3g})", file=sys.stderr)
        return 1
    save_checkpoint(out, grown, loaded.tokenizer_dir, loaded.preprocess, loaded.generation, metadata=metadata)
    n = sum(p.numel() for p in grown.parameters())
    print(f"{out}: {what}, {n / 1e6:.2f} M parameters (max logit difference from the original {diff:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
