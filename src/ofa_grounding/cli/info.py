"""`ofa-ground info`: a model's preset, parameters by part, vocabulary and settings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import EXIT_OK, model_sources
from .loading import load_any


def add_parser(sub: Any) -> None:
    i = sub.add_parser("info", help="describe a model: preset, parameters by part, vocabulary, settings")
    i.add_argument("model", metavar="MODEL", help=model_sources())
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--cache-dir", help="hub cache for ids (default: the hubs' own caches; see README)")
    i.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import describe

    info = describe(load_any(args.model, args.cache_dir))
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    print(f"{args.model}: {info['layout']} layout, preset {info['preset'] or '(none: custom architecture)'}, "
          f"stored as {info['stored_dtype']}")
    a = info["architecture"]
    print(f"  architecture: {a['resnet_type']} backbone, d_model {a['d_model']}, {a['encoder_layers']}+"
          f"{a['decoder_layers']} layers, {a['encoder_attention_heads']} heads, ffn {a['encoder_ffn_dim']}")
    print(f"  parameters: {info['parameters']['total']:,}")
    for part, n in info["parameters"].items():
        if part != "total":
            print(f"    {part:<18} {n:>12,}")
    v, p, g = info["vocabulary"], info["preprocess"], info["generation"]
    print(f"  vocabulary: {v['size']:,} ids ({v['bins']} location bins from id {v['first_bin']}), "
          f"language {p['language']}")
    print(f"  images: {p['patch_image_size']} px square, mean {p['mean']}, std {p['std']}")
    print(f"  generation: beam {g['beam_size']}, {g['min_len']}-{g['max_len_b']} tokens, "
          f"no-repeat {g['no_repeat_ngram_size']}-grams, constraint {g['constraint_range']}")
    z = info["zoom"]
    print(f"  answers: confidence {'calibrated' if info['calibrated'] else 'raw'}, "
          + ("no 'not found' threshold" if info["min_confidence"] is None
             else f"'not found' below {info['min_confidence']:g}")
          + (f", a second look at answers up to {z['max_share']:g} of the image (zoom)" if z else ", no second look"))
    return EXIT_OK
