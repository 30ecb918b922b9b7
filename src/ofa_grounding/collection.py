"""Grounding a collection: a JSONL file of {"image", "text"} lines answered into a JSONL output, one line per
input line, streamed in constant memory, resumable after a crash, and the same bytes however many processes
share the work. `ofa-ground predict --jsonl IN [--out OUT]` (cli/predict_jsonl.py) drives these pieces.

Data flows one way:
- `read_items`: the input's lines, read lazily, as `Item`s (line number, byte offset, image, text, or why the
  line is unusable: not UTF-8, not JSON, not {"image": str, "text": str}). Blank lines are no inputs:
  skipped, but counted in the line numbers.
- `chunked`: consecutive items cut into chunks by a rule that reads the input alone (`ChunkRule`), so that a
  chunk is the same whichever process answers it and wherever a run starts again; lines of one image stay
  in one chunk.
- `load_chunk_images`, `answer_chunk`: a chunk's images, each read once (a bad one fails only its own lines),
  then one `Grounder.predict_batch` call for the chunk (one backbone pass per image, descriptions of several
  images decoded together), giving the chunk's output lines as bytes.
- `resume_point`: how much of the input an existing output already answers, checked line by line.
- `Output`: the output file, locked against a second writer, cut back to the resume point, then appended one
  chunk at a time, each flushed and fsynced before the next.

An output line is the input's line number, image and text, then the answer: {"line", "image", "text",
"width", "height", "box", "score", "confidence", "found", "tokens", "raw_confidence", "calibrated", "zoomed"} (as
`GroundingResult.to_dict` orders them), or {"line", "image", "text", "error"}.

Why the output holds whole chunks: descriptions decoded in one batch get the same tokens and boxes as one by
one, but their scores may differ in the last bits with the batch's other rows. A run that starts again at a
chunk boundary recomputes exactly the chunks an uninterrupted run would have, so the two outputs are the same
bytes; so are the outputs of any number of processes, which answer whole chunks too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .data import check_unicode
from .errors import ImageLoadError, first_line

__all__ = ["Answer", "ChunkAnswers", "ChunkRule", "Item", "Output", "OutputBusy", "OutputMismatch", "Start",
           "answer_chunk", "chunked", "count_items", "load_chunk_images", "read_items", "resume_point"]


class Item(NamedTuple):
    """One non-blank input line. `image` and `text` are None when the line is not {"image": str, "text": str};
    `error` says why the line cannot be answered (None when it can)."""

    line: int  # 1-based, counting every line of the file
    offset: int  # byte offset of the line's start in the file
    image: str | None
    text: str | None
    error: str | None


class Answer(NamedTuple):
    """A chunk's output: its lines, encoded, and the error messages among them (for stderr)."""

    data: bytes
    lines: int
    errors: list[str]


class OutputMismatch(ValueError):
    """The output file holds something other than answers to the first lines of this input."""


class OutputBusy(OSError):
    """Another process holds the output file's lock (a second run writing to it)."""


# -- reading --------------------------------------------------------------------------------------------


def read_items(path: str | Path, offset: int = 0, line: int = 1, where: str | None = None) -> Iterator[Item]:
    """The usable and unusable input lines of `path` from byte `offset` (where line number `line` starts), in
    order, read lazily. Lines end at b"\\n" only (a JSON string may hold U+2028, which `str.splitlines` would
    split). `where` (default: the path) starts every error message: "WHERE:LINE: why"."""
    where = str(path) if where is None else where
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            if raw.strip():
                yield _parse(raw, line, offset, where)
            offset += len(raw)
            line += 1


def _parse(raw: bytes, line: int, offset: int, where: str) -> Item:
    try:
        value = json.loads(raw.decode("utf-8-sig"))  # a BOM (some Windows tools write one) is no error
        if not isinstance(value, dict) or not isinstance(value.get("image"), str) or not isinstance(
                value.get("text"), str):
            raise ValueError('expected {"image": str, "text": str}')
        check_unicode(value["text"])
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return Item(line, offset, None, None, f"{where}:{line}: {first_line(exc)}")
    # An empty description is answered, as `Grounder.predict` answers it: not found (found false), the box the
    # reference's answer to the bare prompt.
    return Item(line, offset, value["image"], value["text"], None)


def count_items(path: str | Path) -> int:
    """The number of non-blank lines (inputs) of `path`, without parsing them: the progress bar's total."""
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


@dataclass(frozen=True)
class ChunkRule:
    """Where chunks end, from the input alone. A chunk ends before a line whose image it does not hold yet once
    it has `lines` lines or `images` images; a run of lines of one image continues it up to `max_lines`.
    `for_batch_size(b)`: 8b lines, 2b images, 32b lines at most (64, 16 and 256 for the default batch size 8):
    enough descriptions for 8 decoder batches, a bounded number of decoded images in memory."""

    lines: int = 64
    images: int = 16
    max_lines: int = 256

    @classmethod
    def for_batch_size(cls, batch_size: int) -> ChunkRule:
        return cls(8 * batch_size, 2 * batch_size, 32 * batch_size)


def chunked(items: Iterator[Item] | Sequence[Item], rule: ChunkRule) -> Iterator[list[Item]]:
    """`items` cut into consecutive chunks by `rule`. Deterministic: chunking the items from any chunk's first
    item on gives the same later chunks as chunking from the start."""
    chunk: list[Item] = []
    images: set[str] = set()
    for item in items:
        new_image = item.image is None or item.image not in images
        if chunk and ((new_image and (len(chunk) >= rule.lines or len(images) >= rule.images))
                      or len(chunk) >= rule.max_lines):
            yield chunk
            chunk, images = [], set()
        chunk.append(item)
        if item.error is None:
            images.add(item.image)  # type: ignore[arg-type]  # a usable item has an image
    if chunk:
        yield chunk


# -- answering ------------------------------------------------------------------------------------------


def load_chunk_images(grounder: Any, chunk: Sequence[Item], folder: Path) -> dict[str, Any]:
    """Each image of the chunk's usable items, read once: image -> RGB PIL image, or the one-line reason it could
    not be read (a str). Relative paths are read from `folder` (the input file's)."""
    images: dict[str, Any] = {}
    for item in chunk:
        if item.error is not None or item.image in images:
            continue
        path = Path(item.image)  # type: ignore[arg-type]
        path = path if path.is_absolute() else folder / path
        try:
            images[item.image] = grounder.load_image(path)  # type: ignore[index]
        except ImageLoadError as exc:
            images[item.image] = str(exc)  # type: ignore[index]
        except Exception as exc:  # a decoder's surprise: this image's lines fail, not the run
            images[item.image] = f"{path}: cannot read image ({first_line(exc, typed=True)})"  # type: ignore[index]
    return images


def answer_chunk(grounder: Any, chunk: Sequence[Item], images: dict[str, Any], where: str,
                 alternatives: bool = False) -> Answer:
    """The chunk's output lines, in input order: one `grounder.predict_batch` call over its readable images
    (each image's descriptions together, in order of first appearance), error lines for the rest."""
    rows: list[dict[str, Any] | None] = [None] * len(chunk)
    by_image: dict[str, list[int]] = {}
    for i, item in enumerate(chunk):
        if item.error is not None:
            rows[i] = _error_row(item, item.error)
        elif isinstance(images[item.image], str):  # type: ignore[index]
            rows[i] = _error_row(item, f"{where}:{item.line}: {images[item.image]}")  # type: ignore[index]
        else:
            by_image.setdefault(item.image, []).append(i)  # type: ignore[arg-type]
    groups = list(by_image.items())
    answers = grounder.predict_batch([(images[image], [chunk[i].text for i in indices]) for image, indices in groups])
    for (_, indices), results in zip(groups, answers):
        for i, result in zip(indices, results):
            rows[i] = {"line": chunk[i].line, **result_row(chunk[i].image, result, alternatives)}  # type: ignore[arg-type]
    lines = [json.dumps(row) + "\n" for row in rows]
    return Answer("".join(lines).encode("utf-8"), len(lines), [r["error"] for r in rows if "error" in r])  # type: ignore[operator]


def result_row(image: str, result: Any, alternatives: bool) -> dict[str, Any]:
    """An answer's fields: the input's image and text, the image's size, then the rest of `to_dict`."""
    fields = result.to_dict(alternatives=alternatives)
    width, height = result.image_size
    return {"image": image, "text": fields.pop("text"), "width": width, "height": height, **fields}


def _error_row(item: Item, message: str) -> dict[str, Any]:
    return {"line": item.line, "image": item.image, "text": item.text, "error": message}


class ChunkAnswers(list):
    """(chunk index, `Answer`) pairs of one process; `merge` (for `DistributedContext.gather`) puts every
    process's pairs in chunk order."""

    @classmethod
    def merge(cls, parts: Sequence[ChunkAnswers]) -> ChunkAnswers:
        return cls(sorted((pair for part in parts for pair in part), key=lambda pair: pair[0]))


# -- resuming -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Where a run starts: at chunk `chunk` of the input, whose first line is line `line` at byte `offset` of
    the input, writing the output from byte `out_offset`. `answered` inputs (`failed` of them error lines) are
    in the output already; `complete`: all of them."""

    chunk: int = 0
    line: int = 1
    offset: int = 0
    out_offset: int = 0
    answered: int = 0
    failed: int = 0
    complete: bool = False


def resume_point(src: str | Path, out: str | Path, rule: ChunkRule, where: str | None = None) -> Start:
    """How far the output `out` answers the input `src`: its lines must answer `src`'s first inputs in order
    (the same line number, image and text in each; else `OutputMismatch`). Reading stops at the end of the
    file or at a final line cut short (no newline, or not JSON: a write the crash interrupted); the run then
    starts again at the first chunk the output does not hold whole, and the output is cut back to that chunk's
    start. A missing or empty output: a fresh start."""
    if not Path(out).exists():
        return Start()
    answered = failed = 0
    out_line = 0
    with open(out, "rb") as f:
        chunk_index = -1
        for chunk_index, chunk in enumerate(chunked(read_items(src, where=where), rule)):
            begin = f.tell()
            chunk_failed = 0
            for item in chunk:
                out_line += 1
                row = _written_row(f, out_line)
                if row is None:  # the end of what was written: this chunk again, from its start
                    return Start(chunk_index, chunk[0].line, chunk[0].offset, begin, answered, failed)
                if not (row.get("line") == item.line and row.get("image") == item.image
                        and row.get("text") == item.text):
                    raise OutputMismatch(f"its line {out_line} is not the answer to line {item.line} of {src} "
                                         f"({_summary(row)}): it holds another input's answers")
                chunk_failed += "error" in row
            answered += len(chunk)
            failed += chunk_failed
        end = f.tell()
        if _written_row(f, out_line + 1) is not None:
            raise OutputMismatch(f"it has more lines than {src} has inputs ({answered}): it holds another input's "
                                 "answers")
    return Start(chunk_index + 1, 0, 0, end, answered, failed, complete=True)


def _written_row(f: Any, number: int) -> dict[str, Any] | None:
    """The output's next line as JSON, or None at the end of what was written: the end of the file, or a last
    line cut short (no newline, or not JSON). A line that is not JSON with more after it: `OutputMismatch`."""
    raw = f.readline()
    if not raw.endswith(b"\n"):
        return None  # the end, or a last line without its newline
    try:
        row = json.loads(raw)
    except ValueError:
        if f.read(1) == b"":
            return None
        raise OutputMismatch(f"its line {number} is not JSON, and more lines follow: not an output of "
                             "`predict --jsonl`") from None
    if not isinstance(row, dict):
        raise OutputMismatch(f"its line {number} is not a JSON object: not an output of `predict --jsonl`")
    return row


def _summary(row: dict[str, Any]) -> str:
    text = row.get("text")
    shown = text if not isinstance(text, str) or len(text) <= 40 else text[:37] + "..."
    return f"line {row.get('line')!r}, image {row.get('image')!r}, text {shown!r}"


class Output:
    """The output file, opened for a run: locked (a second run on the same file: `OutputBusy`), cut back to
    `start(offset)`, then appended chunk by chunk with `write`, each write flushed to the disk (fsync) before
    it returns, so that what a crash leaves is whole chunks and at most one chunk cut short."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise OutputBusy(f"{self.path}: another run is writing it") from None

    def start(self, offset: int) -> None:
        os.ftruncate(self.fd, offset)
        os.lseek(self.fd, offset, os.SEEK_SET)
        os.fsync(self.fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # and the lock with it
            self.fd = -1

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
