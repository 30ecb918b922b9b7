"""`ofa-ground` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad usage (wrong arguments, unusable --model, unreadable --jsonl file);
1 when any input (image or description) failed. Errors go to stderr, one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import DEFAULT_MAX_PIXELS
from ..data import FORMATS
from ..errors import CheckpointError, DataError, ImageLoadError

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa-ground", description="Visual grounding with OFA: find the box a "
                                     "description refers to.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="ground descriptions in an image",
                       description="Ground one or more descriptions in an image, or a batch from --jsonl.")
    p.add_argument("--model", help="model directory, ModelScope OFA layout or ours "
                   "(default: the bundled demo model, trained on synthetic shapes)")
    p.add_argument("image", nargs="?", help="image file")
    p.add_argument("text", nargs="*", help="one or more descriptions")
    p.add_argument("--jsonl", type=Path, help='file with one {"image": path, "text": str} per line '
                   "(paths relative to the file's folder); prints one JSON line per input")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--alternatives", action="store_true", help="also print the other beams' boxes")
    p.add_argument("--onnx", type=Path, metavar="DIR",
                   help="run an `export-onnx` folder with onnxruntime instead of torch (instead of --model)")
    p.add_argument("--draw", type=Path, metavar="OUT.png",
                   help="also write the image with the boxes drawn and labelled (one image; not with --jsonl)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--batch-size", type=int, default=8, help="descriptions decoded together (default 8)")
    _min_confidence_argument(p)
    _precision_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.set_defaults(func=_predict)

    e = sub.add_parser("eval", help="evaluate a model on a grounding dataset",
                       description="Acc@0.5, Acc@0.75 and mean IoU per split, with breakdowns. Runs sharded "
                                   "under torchrun (e.g. torchrun --nproc_per_node 2 -m ofa_grounding.cli eval ...).")
    e.add_argument("--model", help="model directory (default: the bundled demo model)")
    e.add_argument("--data", required=True, type=Path,
                   help="a .jsonl or .tsv file, a folder of <split>.jsonl files, or a REFER dataset folder")
    e.add_argument("--split", action="append", help="split(s) to evaluate (repeatable; default: all but train)")
    e.add_argument("--format", choices=FORMATS, help="dataset format (default: from the path)")
    e.add_argument("--images", type=Path, help="REFER: the COCO train2014 image folder")
    e.add_argument("--out", type=Path, help="write predictions as JSONL (id, text, box, gt_box, iou, score, split)")
    e.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    e.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
    e.add_argument("--limit", type=int, help="evaluate only the first N samples of each split")
    e.add_argument("--batch-size", type=int, default=8, help="descriptions of one image decoded together")
    e.add_argument("--device", default=None)
    e.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    _precision_arguments(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(func=_eval)

    t = sub.add_parser("train", help="finetune (or train from a preset) on grounding data",
                       description="OFA's RefCOCO finetuning recipe. Multi-process: torchrun --nproc_per_node N "
                                   "-m ofa_grounding.cli train ... (DDP; gloo on CPU, nccl on GPU).")
    t.add_argument("--model", required=True, help="initial model directory, or a preset name for random weights")
    _training_arguments(t, TRAIN_DEFAULTS)
    t.set_defaults(func=_train)

    d = sub.add_parser("distill", help="train a student with a teacher's help (OFA-Compress's distillation)",
                       description="OFA-Compress's task-specific distillation for grounding: the task loss plus a "
                                   "soft-label loss on the teacher's distribution over the bins and attention-map "
                                   "matching between mapped layers. Everything else as `train` (resume, torchrun, "
                                   "bf16, validation, logs). Defaults: OFA-Compress's RefCOCO settings.")
    d.add_argument("--teacher", required=True, help="teacher model directory")
    d.add_argument("--student", required=True, dest="model",
                   help="student: a model directory, or a preset name for random weights")
    _training_arguments(d, DISTILL_DEFAULTS)
    d.add_argument("--kd-weight", type=float, default=10000 / 59457,  # = train.losses.OFA_COMPRESS_KD_WEIGHT
                   help="weight of the per-token soft cross-entropy (default 10000/59457, OFA-Compress's 10000 on its "
                        "vocabulary-mean loss)")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--attn-weight", type=float, default=1.0, help="weight of the attention-map MSE (0: off)")
    d.add_argument("--layer-map", choices=("first", "uniform"), default="first",
                   help="student layer i <-> teacher layer i (first, OFA-Compress) or spread over the teacher's "
                        "depth (uniform)")
    d.add_argument("--attn-heads", choices=("sum", "mean"), default="sum",
                   help="sum (OFA-Compress) or average attention maps over heads before comparing")
    d.add_argument("--hidden-weight", type=float, default=0.0,
                   help="ours, off by default (0; OFA-Compress matches no hidden states): weight of the MSE between "
                        "mapped layers' outputs, through a learned projection where the widths differ")
    d.add_argument("--teacher-cache", metavar="FILE",
                   help="ours: compute the teacher's soft labels for every training sample (and its mirror with "
                        "--augment flip) once, into FILE (safetensors, float16), and read them from there instead "
                        "of running the teacher at every step; reused by later runs with the same teacher and data "
                        "(needs --attn-weight 0 --hidden-weight 0, no jitter)")
    d.add_argument("--teacher-bf16", action="store_true", help="run the teacher under bfloat16 autocast")
    d.set_defaults(func=_train)

    c = sub.add_parser("convert", help="convert a checkpoint to another layout",
                       description="Read a checkpoint in any supported layout (ours, ModelScope, Hugging Face OFA, "
                                   "OFA's fairseq .pt, or a hub id) and write it as --to: safetensors (ours), "
                                   "modelscope (pytorch_model.bin + configuration.json) or hf (Hugging Face OFA).")
    c.add_argument("src", help="model directory, weights file, fairseq .pt, or hub id")
    c.add_argument("dst", type=Path, help="output directory")
    c.add_argument("--to", required=True, choices=("safetensors", "modelscope", "hf"))
    c.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="stored precision (default fp32)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    c.add_argument("--cache-dir", help="hub cache for ids")
    c.set_defaults(func=_convert)

    i = sub.add_parser("info", help="describe a model: preset, parameters by part, vocabulary, settings")
    i.add_argument("model", help="model directory, weights file, fairseq .pt, or hub id")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--cache-dir", help="hub cache for ids")
    i.set_defaults(func=_info)

    x = sub.add_parser("export-onnx", help="export a model to ONNX graphs (needs the onnx extra)",
                       description="Write image.onnx, encoder.onnx, decoder_start.onnx, decoder_step.onnx (KV cache "
                                   "as inputs/outputs) and onnx_config.json to OUT; `predict --onnx OUT` runs them "
                                   "with onnxruntime through the same beam search.")
    x.add_argument("model", help="model directory, weights file, fairseq .pt, or hub id")
    x.add_argument("out", type=Path, help="output directory")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--cache-dir", help="hub cache for ids")
    x.set_defaults(func=_export_onnx)

    v = sub.add_parser("serve", help="HTTP service and web page (needs the serve extra)",
                       description="FastAPI service on uvicorn: POST /v1/ground, GET /v1/model, GET /healthz, "
                                   "the web page at /, API docs at /docs. Binds 127.0.0.1 unless --host says "
                                   "otherwise. Needs: pip install 'ofa-grounding[serve]'.")
    v.add_argument("--model", help="model directory (default: the bundled demo model)")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own model copy and cores/N torch threads (default 1)")
    v.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    v.add_argument("--batch-size", type=int, default=8, help="descriptions encoded and decoded together (default 8)")
    _min_confidence_argument(v)
    _precision_arguments(v)
    from ..serve.config import ServeConfig  # stdlib-only: keeps --help working without the serve extra

    defaults = ServeConfig()
    v.add_argument("--max-batch", type=int, default=defaults.max_batch,
                   help=f"descriptions per model call across concurrent requests (default {defaults.max_batch}; "
                        "1 turns micro-batching off)")
    v.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                   help=f"how long an idle model waits to fill a batch (default {defaults.max_wait_ms})")
    v.add_argument("--max-queue", type=int, default=defaults.max_queue,
                   help=f"requests allowed to wait; beyond it 503 + Retry-After (default {defaults.max_queue})")
    v.add_argument("--max-request-mb", type=float, default=defaults.max_request_bytes / 2**20,
                   help=f"largest request body in MB (default {defaults.max_request_bytes / 2**20:g})")
    v.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                   help=f"largest image in pixels (default {defaults.max_pixels})")
    v.add_argument("--max-texts", type=int, default=defaults.max_texts,
                   help=f"descriptions per request (default {defaults.max_texts})")
    v.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars,
                   help=f"characters per description (default {defaults.max_text_chars})")
    v.add_argument("--allow-urls", action="store_true",
                   help='let JSON requests give "image_url" for the server to fetch (off by default)')
    v.add_argument("-v", "--verbose", action="store_true")
    v.set_defaults(func=_serve)

    s = sub.add_parser("make-synthetic", help="write the synthetic referring-expression benchmark",
                       description="Deterministic scenes of shapes with referring expressions, written as "
                                   "OUT/{train,val,test}.jsonl + OUT/images/*.png; prints trivial baselines.")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--per-scene", type=int, default=2, help="expressions per scene (default 2)")
    s.add_argument("--simple", type=int, default=0,
                   help="training data only: add up to this many easy expressions per train scene "
                        "(kind 'simple'; benchmark rows unchanged; default 0)")
    s.add_argument("--workers", type=int, default=1, help="processes drawing scenes (same files; default 1)")
    s.add_argument("--json", action="store_true", help="print counts and baselines as JSON")
    s.set_defaults(func=_make_synthetic)

    from .. import bench  # stdlib-only at import time

    b = sub.add_parser("bench", help="latency / throughput / memory, ours beside the reference",
                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(func=bench.run)
    return parser


def _min_confidence_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-confidence", type=float, metavar="C",
                   help="answer 'not found' (found: false) below this confidence (default: the model's calibrated "
                        "value, if its folder has one (grounding.json); 0 turns it off)")


def _precision_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="hub cache for --model ids (default: the hubs' own caches; see README)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="fp32: the reference's arithmetic (default); bf16: bfloat16 weights, about 2x faster on "
                        "CPUs with AVX-512 BF16/AMX and on GPUs, not bit-faithful")
    p.add_argument("--cache-mb", type=float, default=64,
                   help="backbone-output cache for repeated images, in MB (default 64; 0 turns it off)")


# (epochs, batch size, lr, min lr, warmup ratio): OFA's RefCOCO finetuning, OFA-Compress's distillation
TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 16, "lr": 5e-5, "min_lr": 0.0, "warmup_ratio": 0.06}
DISTILL_DEFAULTS = {"epochs": 5, "batch_size": 8, "lr": 1e-4, "min_lr": 1e-7, "warmup_ratio": 0.01}


def _training_arguments(t: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    t.add_argument("--data", required=True, help="training data (any format `eval` reads)")
    t.add_argument("--split", default="train", help="training split (default train; 'all' for every row)")
    t.add_argument("--val", help="validation data (default: none)")
    t.add_argument("--val-split", default="val")
    t.add_argument("--val-limit", type=int, help="validate on the first N samples only")
    t.add_argument("--out", required=True, help="output folder: last/ and best/ model directories, log.csv")
    t.add_argument("--epochs", type=int, default=defaults["epochs"])
    t.add_argument("--max-steps", type=int, help="stop after this many updates (overrides --epochs)")
    t.add_argument("--max-minutes", type=float, help="also stop (saving last/) after this much wall time; the "
                   "learning-rate schedule still follows --epochs/--max-steps")
    t.add_argument("--stop-at-step", type=int, metavar="N", help="stop (saving last/) after update N; the "
                   "learning-rate schedule still follows --epochs/--max-steps (a long schedule, cut short)")
    t.add_argument("--image-size", type=int, help="train at this image side (patch and max image size; default: "
                   "the model's)")
    t.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="samples per process per micro-batch")
    t.add_argument("--accum", type=int, default=1, help="micro-batches per update (gradient accumulation)")
    t.add_argument("--group-by-image", type=int, default=1, metavar="K",
                   help="ours, off by default (1): batches of images with up to K of each image's samples, "
                        "which share one backbone pass (--batch-size counts samples and must be a multiple of K)")
    t.add_argument("--lr", type=float, default=defaults["lr"])
    t.add_argument("--min-lr", type=float, default=defaults["min_lr"])
    t.add_argument("--warmup-ratio", type=float, default=defaults["warmup_ratio"])
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--clip-norm", type=float, default=1.0)
    t.add_argument("--bin-sigma", type=float, default=0.0, help="ours, off by default (0): spread each "
                   "coordinate target as a Gaussian of this many bins, so near misses earn credit")
    t.add_argument("--attr-weight", type=float, default=0.0, help="ours, off by default (0): weight of a "
                   "training-only head that names each image cell's object (colour, shape, size) from the image "
                   "tokens; needs data that lists every object (make-synthetic's)")
    t.add_argument("--pointer-weight", type=float, default=0.0, help="ours, off by default (0): weight of a "
                   "training-only head that finds the described object's cells in the encoder's output; same data")
    t.add_argument("--absent-rate", type=float, default=0.0, metavar="P", help="ours, off by default (0): this "
                   "share of samples get a description of an object their image lacks and the null box as target, "
                   "which the model then answers for absent objects ('not found'); needs make-synthetic's data")
    t.add_argument("--smooth-bins", action="store_true", help="ours: a preset's fresh bin embeddings start as a "
                   "smooth function of the bin index")
    t.add_argument("--drop-path", type=float, help="encoder/decoder drop-path rate (default: the model's)")
    t.add_argument("--dropout", type=float, help="dropout (default: the model's)")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    t.add_argument("--augment", default="", help="comma-separated, off by default: flip (mirrors left/right "
                   "words too), jitter (brightness/contrast)")
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--workers", type=int, default=0, help="data-loading processes")
    t.add_argument("--cache-images", action="store_true", help="keep resized training images in memory")
    t.add_argument("--device", default=None)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start afresh in an --out that already holds a run "
                   "(without it, or --resume, such an --out is refused)")
    t.add_argument("--modelscope", action="store_true", help="also write pytorch_model.bin with every OFA key")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--kill-at-step", type=int, help=argparse.SUPPRESS)  # tests: SIGKILL after that step
    t.add_argument("-v", "--verbose", action="store_true")


def _error(message: str) -> None:
    print(f"ofa-ground: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"ofa-ground: warning: {message}", file=sys.stderr)


class _WarningLine(logging.Handler):
    """The package's warnings (a truncated description, a precision mode this CPU cannot run) as one
    'ofa-ground: warning:' line each."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:  # errors reach the user through main()'s one line
            _warn(record.getMessage())


def _load_grounder(args: argparse.Namespace) -> Any:
    from ..predictor import DEFAULT_MODEL, Grounder  # torch import deferred so that --help is instant

    if getattr(args, "onnx", None) is not None:
        if args.model is not None:
            raise _UsageError("give either --model or --onnx, not both")
        _require_extra("onnx", "--onnx", "onnxruntime")
        from ..onnx_export import onnx_grounder

        try:
            return onnx_grounder(args.onnx, max_pixels=args.max_pixels, batch_size=args.batch_size)
        except (OSError, ValueError, KeyError) as exc:
            raise _UsageError(f"--onnx {args.onnx}: not an export-onnx folder ({exc})") from None
    if args.model is None and not DEFAULT_MODEL.is_dir():
        raise _UsageError("no --model given, and this installation has no bundled demo model; "
                          "pass --model DIR (an OFA model directory)")
    if args.batch_size < 1:
        raise _UsageError("--batch-size must be at least 1")
    if args.cache_mb < 0:
        raise _UsageError("--cache-mb must not be negative")
    threshold = getattr(args, "min_confidence", None)
    if threshold is not None and not 0 <= threshold <= 1:
        raise _UsageError(f"--min-confidence must be in [0, 1], got {threshold}")
    try:
        return Grounder.from_pretrained(args.model, device=args.device, max_pixels=args.max_pixels,
                                        batch_size=args.batch_size, dtype=args.dtype, cache_mb=args.cache_mb,
                                        cache_dir=args.cache_dir,
                                        **({} if threshold is None else {"min_confidence": threshold}))
    except CheckpointError as exc:
        raise _UsageError(f"--model: {exc}") from None
    except (RuntimeError, ValueError) as exc:  # e.g. an unknown or unavailable device
        raise _UsageError(f"--device {args.device}: {str(exc).splitlines()[0]}") from None


def _predict(args: argparse.Namespace) -> int:
    if args.jsonl is not None:
        if args.image or args.text:
            raise _UsageError("give either IMAGE TEXT... or --jsonl FILE, not both")
        if args.draw is not None:
            raise _UsageError("--draw works with one IMAGE, not with --jsonl")
        return _predict_jsonl(args)
    if not args.image or not args.text:
        raise _UsageError("predict needs IMAGE and at least one TEXT (or --jsonl FILE)")
    if args.draw is not None:
        _check_writable_image(args.draw)
    grounder = _load_grounder(args)
    try:
        results = grounder.predict(args.image, args.text)
    except ImageLoadError as exc:
        _error(str(exc))
        return EXIT_FAILED
    width, height = results[0].image_size
    if args.draw is not None:
        from ..draw import draw_results

        try:
            draw_results(grounder.load_image(args.image), results).save(args.draw)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"--draw {args.draw}: cannot write ({str(exc).splitlines()[0]})") from None
    if args.json:
        print(json.dumps({"image": args.image, "width": width, "height": height,
                          "results": [r.to_dict(alternatives=args.alternatives) for r in results]}))
    else:
        print(_table(args.image, width, height, results, args.alternatives))
    return EXIT_OK  # truncated descriptions: the Grounder's warning, on stderr


def _check_writable_image(path: Path) -> None:
    """--draw's file, checked before the model loads: a known image extension, a folder that takes it."""
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise _UsageError(f"--draw {path}: unknown image type {path.suffix or '(no extension)'!r}; use .png or .jpg")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise _UsageError(f"--draw {path}: cannot write ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()


def _printable(text: str) -> str:
    """Control characters (a terminal would act on ESC sequences) as escapes, for table output."""
    import unicodedata

    return "".join(c if unicodedata.category(c)[0] != "C" else repr(c)[1:-1] if ord(c) < 0x10000 else
                   f"\\U{ord(c):08x}" for c in text)


def _require_extra(extra: str, what: str, *modules: str) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise _UsageError(f"{what} needs the {extra} extra ({exc.name} is missing): "
                              f"pip install 'ofa-grounding[{extra}]'") from None


def _cap_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives threads that allocate their own heap arenas, and each keeps what was freed in it: with the
    server's threads (the thread pool that decodes images, the model thread) RSS crept up 508 -> 540 MB over
    4,000 requests of a soak and had not levelled off; with 2 arenas it stayed at 417-422 MB (docs/
    serving-load-test.md). Like MALLOC_ARENA_MAX=2, which wins when set. Linux/glibc only."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, arenas) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def _serve(args: argparse.Namespace) -> int:
    _require_extra("serve", "serve", "fastapi", "uvicorn", "multipart")
    _cap_malloc_arenas()  # before the server's threads start
    import uvicorn

    from ..serve import create_app
    from ..serve.app import SERVE_ENV
    from ..serve.config import ServeConfig

    for name in ("workers", "max_batch", "max_queue", "max_texts", "max_text_chars", "max_pixels"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_request_mb <= 0 or args.max_wait_ms < 0:
        raise _UsageError("--max-request-mb must be positive and --max-wait-ms not negative")
    config = ServeConfig(max_request_bytes=int(args.max_request_mb * 2**20), max_pixels=args.max_pixels,
                         max_texts=args.max_texts, max_text_chars=args.max_text_chars, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, allow_urls=args.allow_urls)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _warn(f"binding {args.host}: the service is reachable from other machines")
    log_level = "info" if args.verbose else "warning"
    print(f"ofa-ground serve: http://{'127.0.0.1' if args.host == '0.0.0.0' else args.host}:{args.port}/ "
          f"(API docs at /docs; Ctrl-C stops)", file=sys.stderr)
    if args.workers == 1:
        grounder = _load_grounder(args)
        app = create_app(grounder, config, model_name=str(args.model or "bundled demo"))
        uvicorn.run(app, host=args.host, port=args.port, log_level=log_level)
        return EXIT_OK
    _load_grounder(args)  # fail here, once, with a clear message, not in every worker
    os.environ[SERVE_ENV] = json.dumps({
        "model": args.model, "device": args.device, "dtype": args.dtype, "cache_mb": args.cache_mb,
        "min_confidence": args.min_confidence,
        "batch_size": args.batch_size, "threads": max(1, (os.cpu_count() or 1) // args.workers),
        "config": config.__dict__})
    uvicorn.run("ofa_grounding.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=log_level)
    return EXIT_OK


def _load_any(model: str, cache_dir: str | None) -> Any:
    from ..checkpoint import load_checkpoint
    from ..hub import resolve_model

    try:
        return load_checkpoint(resolve_model(model, cache_dir))
    except CheckpointError as exc:
        raise _UsageError(str(exc)) from None


def _convert(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import save_checkpoint

    if args.dst.exists() and any(args.dst.iterdir()) and not args.overwrite:
        raise _UsageError(f"{args.dst} exists and is not empty (use --overwrite to replace it)")
    ckpt = _load_any(args.src, args.cache_dir)
    layout = {"safetensors": "ours", "modelscope": "modelscope", "hf": "hf"}[args.to]
    save_checkpoint(args.dst, ckpt.model, ckpt.tokenizer_dir, ckpt.preprocess, ckpt.generation, layout=layout,
                    dtype=torch.float16 if args.dtype == "fp16" else None,
                    metadata={"source": str(args.src), "converted_by": f"ofa-grounding {__version__}"})
    print(f"{args.src} ({ckpt.layout}) -> {args.dst} ({args.to}, {args.dtype})")
    return EXIT_OK


def _export_onnx(args: argparse.Namespace) -> int:
    _require_extra("onnx", "export-onnx", "onnx", "onnxscript")
    from ..onnx_export import export_onnx

    ckpt = _load_any(args.model, args.cache_dir)
    try:
        out = export_onnx(ckpt, args.out, args.opset)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MB" for p in sorted(out.glob("*.onnx")))
    print(f"{args.model} -> {out}: {sizes}")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from ..checkpoint import describe

    info = describe(_load_any(args.model, args.cache_dir))
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
    return EXIT_OK


def _table(image: str, width: int, height: int, results: list, alternatives: bool) -> str:
    lines = [f"{_printable(image)} ({width}x{height})",
             f"{'x0':>9} {'y0':>9} {'x1':>9} {'y1':>9} {'score':>8} {'conf':>7}  text"]
    for r in results:
        lines.append(" ".join(f"{v:9.2f}" for v in r.box) + f" {r.score:8.4f} {r.confidence:7.4f}  {_printable(r.text)}"
                     + ("" if r.found else "  (not found: empty description)" if not r.text.strip() else
                        "  (not found)"))
        if alternatives:
            for a in r.alternatives:
                lines.append(" ".join(f"{v:9.2f}" for v in a.box) + f" {a.score:8.4f} {a.confidence:7.4f}    (alt)")
    return "\n".join(lines)


def _predict_jsonl(args: argparse.Namespace) -> int:
    try:
        lines = args.jsonl.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"--jsonl {args.jsonl}: cannot read ({exc})") from None
    base = args.jsonl.parent
    # Parse every line first, so that one image's descriptions run together (one image load).
    records: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(
                    item.get("text"), str):
                raise ValueError('expected {"image": str, "text": str}')
            records.append({"image": item["image"], "text": item["text"]})
        except ValueError as exc:
            records.append({"image": None, "text": None, "error": f"{args.jsonl}:{n}: {str(exc).splitlines()[0]}"})
    if not records:  # an empty batch is not an error (a pipeline's empty day), but say so
        _warn(f"--jsonl {args.jsonl}: no inputs, nothing to do")
        return EXIT_OK
    grounder = _load_grounder(args)
    by_image: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if "error" not in rec:
            by_image.setdefault(rec["image"], []).append(i)
    outputs: list[dict[str, Any]] = [dict(r) for r in records]
    # Images are loaded one by one (a bad one fails only its own lines), then run 16 at a time through
    # predict_batch: one backbone pass per image, descriptions of several images decoded together.
    groups = list(by_image.items())
    for start in range(0, len(groups), 16):
        batch: list[tuple[Any, list[int]]] = []
        for image, indices in groups[start:start + 16]:
            path = Path(image) if Path(image).is_absolute() else base / image
            try:
                batch.append((grounder.load_image(path), indices))
            except ImageLoadError as exc:
                for i in indices:
                    outputs[i]["error"] = str(exc)
        answers = grounder.predict_batch([(rgb, [records[i]["text"] for i in indices]) for rgb, indices in batch])
        for (_, indices), results in zip(batch, answers):
            for i, r in zip(indices, results):
                outputs[i].update(width=r.image_size[0], height=r.image_size[1], box=list(r.box), score=r.score,
                                  confidence=r.confidence, found=r.found, tokens=list(r.tokens))
                if args.alternatives:
                    outputs[i]["alternatives"] = r.to_dict(alternatives=True)["alternatives"]
    failed = 0
    for out in outputs:
        print(json.dumps(out))
        if "error" in out:
            failed += 1
            _error(out["error"])
    return EXIT_FAILED if failed else EXIT_OK


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def _summary_table(rows: list[tuple[str, dict]], first: str = "split") -> str:
    width = max([len(first)] + [len(name) for name, _ in rows])
    lines = [f"{first:<{width}} {'count':>7} {'Acc@0.5':>8} {'Acc@0.75':>8} {'mIoU':>6}"]
    for name, s in rows:
        lines.append(f"{name:<{width}} {s['count']:>7} {_pct(s['acc50']):>8} {_pct(s['acc75']):>8} {s['miou']:6.3f}")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from ..data import list_splits, open_dataset
    from ..evaluate import distributed_context, evaluate

    if not Path(args.data).exists():
        raise _UsageError(f"--data {args.data}: no such file or folder")
    ctx = distributed_context(args.device)
    if ctx.world_size > 1 and args.device and args.device.startswith("cuda"):
        args.device = f"cuda:{ctx.local_rank}"
    try:
        splits = args.split or [s for s in list_splits(args.data, args.format) if s != "train"] or [None]
        datasets = [(split, open_dataset(args.data, args.format, split, strict=args.strict, images=args.images))
                    for split in splits]
    except DataError as exc:
        raise _UsageError(f"--data: {exc}") from None
    grounder = _load_grounder(args)
    reports = []
    try:
        for split, dataset in datasets:
            report = evaluate(grounder, dataset, split, rank=ctx.rank, world_size=ctx.world_size,
                              progress=not args.no_progress, limit=args.limit)
            reports.append(ctx.gather(report))
    except DataError as exc:  # --strict
        _error(str(exc))
        ctx.close()
        return EXIT_FAILED
    ctx.close()
    if not ctx.is_main:
        return EXIT_OK
    if args.out:
        with args.out.open("w", encoding="utf-8") as f:
            for report in reports:
                for row in report.predictions():
                    f.write(json.dumps(row) + "\n")
    issues = [i for r in reports for i in r.issues]
    for issue in issues:
        _error(f"skipped: {issue}")
    if sum(r.summary["count"] for r in reports) == 0:
        names = ", ".join(str(r.split) for r in reports)
        _error(f"--data {args.data}: no usable samples (split {names}"
               + (f"; {len(issues)} skipped, listed above)" if issues else ")"))
        return EXIT_FAILED
    if args.json:
        splits = {str(r.split): {**r.summary, "seconds": r.seconds, "skipped": len(r.issues),
                                 "breakdowns": r.breakdowns()} for r in reports}
        print(json.dumps({"model": str(args.model or "(bundled demo)"), "data": str(args.data),
                          "processes": ctx.world_size, "splits": splits}))
        return EXIT_OK
    print(_summary_table([(str(r.split), r.summary) for r in reports]))
    for r in reports:
        for title, groups in r.breakdowns().items():
            print(f"\n{r.split}: by {title}")
            print(_summary_table(list(groups.items()), title))
    seconds = sum(r.seconds for r in reports)
    count = sum(r.summary["count"] for r in reports)
    print(f"\n{count} samples in {seconds:.1f} s on {ctx.world_size} process(es)"
          + (f"; {len(issues)} skipped (listed on stderr)" if issues else ""))
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from ..train.distill import DistillConfig
    from ..train.loop import TrainConfig, train

    if args.resume and not (Path(args.out) / "last" / "trainer_state.json").is_file():
        raise _UsageError(f"--resume: no checkpoint in {args.out}/last")
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, split=None if args.split == "all" else args.split,
                      val=args.val, val_split=args.val_split, val_limit=args.val_limit, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, accum=args.accum, lr=args.lr,
                      group_by_image=args.group_by_image,
                      min_lr=args.min_lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, clip_norm=args.clip_norm, bin_sigma=args.bin_sigma,
                      attr_weight=args.attr_weight, pointer_weight=args.pointer_weight, smooth_bins=args.smooth_bins,
                      absent_rate=args.absent_rate,
                      drop_path=args.drop_path,
                      dropout=args.dropout, bf16=args.bf16, augment=[a for a in args.augment.split(",") if a],
                      eval_every=args.eval_every, save_every=args.save_every, seed=args.seed, workers=args.workers,
                      cache_images=args.cache_images, device=args.device, resume=args.resume,
                      overwrite=args.overwrite,
                      modelscope=args.modelscope, progress=not args.no_progress, kill_at_step=args.kill_at_step,
                      image_size=args.image_size, max_minutes=args.max_minutes,
                      stop_at_step=args.stop_at_step)
    if args.command == "distill":
        cfg.distill = DistillConfig(teacher=args.teacher, kd_weight=args.kd_weight, temperature=args.temperature,
                                    attn_weight=args.attn_weight, layer_map=args.layer_map,
                                    attn_heads=args.attn_heads, teacher_bf16=args.teacher_bf16,
                                    hidden_weight=args.hidden_weight, teacher_cache=args.teacher_cache)
    try:
        summary = train(cfg)
    except (CheckpointError, DataError, ValueError) as exc:  # train() raises ValueError for bad settings
        raise _UsageError(str(exc)) from None
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return EXIT_OK


def _make_synthetic(args: argparse.Namespace) -> int:
    from ..synthetic import baseline_accuracies, write_synthetic

    if args.n < 1 or args.size < 64 or args.per_scene < 1 or args.simple < 0 or args.workers < 1:
        raise _UsageError("--n, --per-scene and --workers must be positive, --simple not negative and --size "
                          "at least 64")
    counts = write_synthetic(args.out, args.n, args.seed, (args.size, args.size), args.per_scene, args.simple,
                             args.workers)
    rows = {split: [json.loads(line) for line in (args.out / f"{split}.jsonl").open(encoding="utf-8")]
            for split in counts}
    baselines = {split: baseline_accuracies(r) for split, r in rows.items() if r}
    if args.json:
        print(json.dumps({"out": str(args.out), "counts": counts, "baselines_acc50": baselines}))
        return EXIT_OK
    print(f"wrote {sum(counts.values())} samples to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    names = list(next(iter(baselines.values())))
    print("\ntrivial baselines, Acc@0.5 (%):")
    print(f"{'':50}" + "".join(f"{split:>8}" for split in baselines))
    for name in names:
        print(f"{name:50}" + "".join(f"{_pct(b[name]):>8}" for b in baselines.values()))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad usage
    verbose = getattr(args, "verbose", False)
    root = logging.StreamHandler()  # -v: everything; else errors only (warnings come as one line, below)
    root.setLevel(logging.DEBUG if verbose else logging.ERROR)
    root.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, handlers=[root])
    package = logging.getLogger("ofa_grounding")
    if not verbose and not any(isinstance(h, _WarningLine) for h in package.handlers):
        package.addHandler(_WarningLine(logging.WARNING))
        package.setLevel(logging.WARNING)
    try:
        return args.func(args)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the user; -v shows where it came from
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        first = str(exc).splitlines()[0] if str(exc) else ""
        _error(f"unexpected {type(exc).__name__}: {first} (run with -v for details)")
        return EXIT_FAILED

