"""What the commands share: exit codes, the one-line error and warning, the arguments several commands take,
and the one error handler through which every exception becomes an exit code."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

from ..errors import CheckpointError, DataError, ImageLoadError, first_line
from ..model_names import PRESET_PREFIX, bundled_models
from ..presets import list_presets

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad usage: wrong arguments, an unusable --model, an unreadable --jsonl file (exit 2)."""


def error(message: str) -> None:
    print(f"ofa-ground: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"ofa-ground: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """What a command did that the user did not ask for outright (resumed a run, found nothing to do)."""
    print(f"ofa-ground: {message}", file=sys.stderr)


def handle_error(exc: BaseException) -> int:
    """The exit code for what a command raised, after its one line on stderr: 2 for bad usage and for the
    library's unusable model or dataset (UsageError, CheckpointError, DataError), 1 for an image that could
    not be read (ImageLoadError) and for anything unexpected (-v logs where it came from), 130 for Ctrl-C.
    Commands that want an option's name in front of a library's message raise UsageError themselves."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, (UsageError, CheckpointError, DataError)):
        error(str(exc))
        return EXIT_USAGE
    if isinstance(exc, ImageLoadError):
        error(str(exc))
        return EXIT_FAILED
    logging.getLogger("ofa_grounding.cli").debug("unexpected error", exc_info=exc)
    error(f"unexpected {first_line(exc, typed=True)} (run with -v for details)")
    return EXIT_FAILED


class HelpFormatter(argparse.HelpFormatter):
    """argparse's --help, with each option's default appended where its help does not speak of one already
    (switches, and options whose default is None, have none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_with_default(action)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, with the description printed as written (line breaks kept)."""


def help_with_default(action: argparse.Action) -> str:
    """An option's help (an argparse template: %(default)s and the like), with " (default: %(default)s)" appended
    where the option has a default to show and its help does not mention one."""
    text = action.help or ""
    if (not action.option_strings or action.nargs == 0 or action.required
            or action.default in (None, "", argparse.SUPPRESS) or "default" in text.lower()):
        return text
    return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """`old`: a hidden, deprecated spelling of the option `new` (removed in the next release). It takes the same
    values into the same destination, after a one-line warning on stderr."""
    p.add_argument(old, dest=new.dest, choices=new.choices, metavar=new.metavar, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS, action=_DeprecatedAlias, new=new.option_strings[0])


class _DeprecatedAlias(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None):
        prog = parser.prog.split()[0]  # "ofa-ground", not "ofa-ground predict": as `warn` words it
        print(f"{prog}: warning: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


class WarningLine(logging.Handler):
    """The package's warnings (a truncated description, a precision mode this CPU cannot run) as one
    'ofa-ground: warning:' line each."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:  # errors reach the user through main()'s one line
            warn(record.getMessage())


def setup_logging(verbose: bool) -> None:
    root = logging.StreamHandler()  # -v: everything; else errors only (warnings come as one line, below)
    root.setLevel(logging.DEBUG if verbose else logging.ERROR)
    root.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, handlers=[root])
    package = logging.getLogger("ofa_grounding")
    if not verbose and not any(isinstance(h, WarningLine) for h in package.handlers):
        package.addHandler(WarningLine(logging.WARNING))
        package.setLevel(logging.WARNING)


def min_confidence_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-confidence", type=float, metavar="C",
                   help="answer 'not found' (found: false) below this confidence, a probability when the model "
                        "is calibrated (default: the value in the model folder's grounding.json, if any; 0 turns "
                        "it off)")


def precision_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="hub cache for --model ids (default: the hubs' own caches; see README)")
    precision = p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="fp32 (default): the reference's arithmetic, and the choice on GPUs (bf16 was no faster there for "
             "OFA-tiny on an H200); bf16: bfloat16 weights, about 2x faster on CPUs with AVX-512 BF16/AMX, not "
             "bit-faithful (on other CPUs it runs fp32, with a warning)")
    deprecated_alias(p, "--dtype", precision)
    p.add_argument("--cache-mb", type=float, default=64,
                   help="backbone-output cache for repeated images, in MB (default 64; 0 turns it off)")
    p.add_argument("--no-zoom", action="store_true",
                   help="answer from the first look only, as the reference does (default: a second look at small "
                        "answers where the model folder's grounding.json asks for one; the bundled models do)")


def model_sources() -> str:
    """The kinds of model name every command that loads a model takes (`model_names.parse_model_name`)."""
    bundled = ", ".join(bundled_models()) or "none in this installation"
    return ("a model directory (ours, ModelScope's or Hugging Face OFA's layout), a weights file in one "
            f"(.safetensors, .bin), OFA's fairseq .pt file, a bundled model's name ({bundled}), or a hub id "
            "(ORG/NAME from ModelScope, hf:ORG/NAME from Hugging Face; see --cache-dir)")


def model_argument(p: argparse.ArgumentParser, default: str = "the bundled demo model, trained on synthetic "
                   "shapes") -> None:
    """--model of the commands that run a model (predict, eval, calibrate, serve)."""
    p.add_argument("--model", metavar="MODEL", help=f"{model_sources()} (default: {default})")


def training_model_help(what: str) -> str:
    """--model / --student of train and distill: what `model_sources` lists, or a preset's random weights."""
    return (f"{what}: {model_sources()}; or {PRESET_PREFIX}NAME for random weights of the architecture NAME (one "
            f"of {', '.join(list_presets())}; a bare NAME that is no bundled model's still works, deprecated)")


def threads_argument(p: argparse.ArgumentParser, what: str = "this command's", shared_by: str = "") -> None:
    """--threads (`set_threads`); `shared_by` names the processes that share the idle cores, if several."""
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"torch threads for {what} arithmetic (default: with OMP_NUM_THREADS set, that; else the "
                        f"cores this process may use that are idle when it starts{shared_by}, at least 1, so that a "
                        "core busy with other work does not stall every step)")


def cpu_quota() -> int | None:
    """The CPUs a cgroup v2 CPU limit (a container's --cpus) allows, rounded up, or None without one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def idle_cpus(cpus: set[int], seconds: float = 0.1) -> float | None:
    """How many of `cpus` were idle over the next `seconds` (Linux's /proc/stat counters), or None where
    unreadable. Counted per CPU, so that it holds in containers too (unlike the host-wide load average)."""

    def sample() -> dict[int, tuple[int, int]]:  # cpu -> (idle + iowait ticks, all ticks)
        counts = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                    counts[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
        return counts

    try:
        before = sample()
        time.sleep(seconds)
        after = sample()
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for cpu, (idle_then, total_then) in before.items():
        idle_now, total_now = after.get(cpu, (idle_then, total_then))
        idle += (idle_now - idle_then) / (total_now - total_then) if total_now > total_then else 1.0
    return idle if before else None


def default_threads() -> int:
    """Torch threads for a command without --threads: the CPUs this process may use (its affinity, capped by a
    cgroup CPU limit) that are idle now, rounded, at least 1. Torch's own default (every core) stalls when a core
    is busy with other work: each step waits for the thread that shares a core. Where /proc/stat cannot be read,
    the CPUs less the 1-minute load average."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    usable = min(len(cpus), cpu_quota() or len(cpus))
    idle = idle_cpus(cpus)
    if idle is None:
        idle = len(cpus) - os.getloadavg()[0] if hasattr(os, "getloadavg") else usable
    return max(1, min(usable, round(idle)))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads for this command: `threads` (--threads), else torch's own setting where
    OMP_NUM_THREADS is set (the user's; torchrun sets 1 per process), else `default_threads()`. Returns the count."""
    import torch

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()
        how = "OMP_NUM_THREADS"
    else:
        how = "--threads" if threads is not None else "the idle cores"
        threads = threads or default_threads()
        torch.set_num_threads(threads)
    logging.getLogger("ofa_grounding.cli").info("torch threads: %d (%s)", threads, how)
    return threads


def require_extra(extra: str, what: str, *modules: str) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"{what} needs the {extra} extra ({exc.name} is missing): "
                             f"pip install 'ofa-grounding[{extra}]'") from None


def pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def check_writable_image(path: Path, option: str) -> None:
    """An image file an option will write, checked before the model loads: a known image extension, a folder
    that takes it."""
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"{option} {path}: unknown image type {path.suffix or '(no extension)'!r}; use .png or .jpg")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()
