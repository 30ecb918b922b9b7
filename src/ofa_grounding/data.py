"""Grounding datasets: one sample type, streaming readers for REFER releases, OFA TSVs and JSONL.

Every reader yields `Sample`s lazily (images stay on disk, or base64 in the TSV line, until asked for)
and records input problems as `DataIssue`s (line or id, and what is wrong) instead of failing or
silently dropping them; `strict=True` turns the first problem into a `DataError`.

JSONL, the recommended format for custom data, one object per line:
    {"image": "images/0001.jpg", "text": "the dog on the left", "box": [x0, y0, x1, y1]}
with image paths relative to the file; optional "id" and "split", other keys kept in `Sample.meta`.
`"box": null` marks a description of an object the image does not contain (`Sample.box` None; the right
answer is "not found"); a row without "box" is an error.
"""

from __future__ import annotations

import base64
import binascii
import json
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, first_line

__all__ = ["Sample", "DataIssue", "DataError", "Dataset", "check_unicode", "open_dataset", "read_jsonl", "read_tsv",
           "read_refer", "load_refer_pickle", "list_splits", "FORMATS"]

FORMATS = ("jsonl", "tsv", "refer")




@dataclass
class Sample:
    """One referring expression: the image (path or encoded bytes), the text and its box in pixels (None: the
    text describes an object the image does not contain)."""

    id: str
    image: Path | bytes  # a file path, or the encoded image bytes (OFA TSV)
    text: str
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in original-image pixels; None: absent
    split: str | None = None
    image_id: str | None = None  # groups samples of one image (file path or dataset image id)
    ref_id: int | None = None
    ann_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image_key(self) -> str:
        return self.image_id if self.image_id is not None else str(self.image)


@dataclass(frozen=True)
class DataIssue:
    where: str  # "file:line" or "id"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check_unicode(text: str) -> None:
    """ValueError unless `text` is Unicode text: JSON's "\\ud800" decodes to a lone surrogate, which is a str
    to Python but which no tokenizer (nor UTF-8) takes."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"text is not Unicode text: a lone surrogate at character {exc.start}") from None


def _check_box(box: Any) -> tuple[float, float, float, float]:
    """A box of four finite numbers with x0 < x1 and y0 < y1, or ValueError saying what is wrong."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"box must be 4 numbers [x0, y0, x1, y1], got {box!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers [x0, y0, x1, y1], got {box!r}") from None
    if not all(v == v and abs(v) != float("inf") for v in (x0, y0, x1, y1)):
        raise ValueError(f"box has a non-finite value: {box!r}")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box is empty or inverted (need x0 < x1 and y0 < y1): {box!r}")
    return x0, y0, x1, y1


class Dataset:
    """An iterable of samples from one reader, with the problems met while reading.

    Iterating again re-reads the source (nothing is cached), so a 140k-row dataset never sits in memory.
    """

    def __init__(self, reader: Any, *args: Any, strict: bool = False, **kwargs: Any) -> None:
        self._reader, self._args, self._kwargs = reader, args, kwargs
        self.strict = strict
        self.issues: list[DataIssue] = []

    def report(self, where: str, message: str) -> None:
        issue = DataIssue(where, message)
        if self.strict:
            raise DataError(str(issue))
        self.issues.append(issue)

    def __iter__(self) -> Iterator[Sample]:
        self.issues = []
        yield from self._reader(self, *self._args, **self._kwargs)


# --------------------------------------------------------------------------------------------------
# JSONL


def _jsonl(ds: Dataset, path: Path, split: str | None) -> Iterator[Sample]:
    base = path.parent
    # Rows of one image repeat its path and its scene (make-synthetic's "objects", "image_size"): one copy per
    # image, so that a training mix of half a million rows holds each scene once, not six times.
    per_image: dict[str, tuple[Path, str, dict[str, Any]]] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                image, text = row.get("image"), row.get("text")
                if not isinstance(image, str) or not image:
                    raise ValueError('missing "image" (a path)')
                if not isinstance(text, str):
                    raise ValueError('missing "text" (a string)')
                check_unicode(text)
                if "box" not in row:
                    raise ValueError('missing "box" ([x0, y0, x1, y1], or null for an object the image lacks)')
                box = None if row["box"] is None else _check_box(row["box"])
            except ValueError as exc:
                ds.report(where, first_line(exc))
                continue
            row_split = row.get("split")
            if split is not None and row_split != split:
                continue  # rows without a split label only count when no split is asked for
            if image not in per_image:
                image_path = Path(image) if Path(image).is_absolute() else base / image
                per_image[image] = (image_path, str(image_path), {})
            image_path, image_id, scene = per_image[image]
            meta = {k: v for k, v in row.items() if k not in ("image", "text", "box", "id", "split")}
            for key, value in meta.items():
                if isinstance(value, list):
                    if scene.get(key) == value:
                        meta[key] = scene[key]
                    else:
                        scene[key] = value
            meta["line"] = where
            yield Sample(str(row.get("id", f"{path.stem}:{n}")), image_path, text, box, row_split,
                         image_id=image_id, meta=meta)


def read_jsonl(path: str | Path, split: str | None = None, strict: bool = False) -> Dataset:
    """JSONL rows {"image", "text", "box"[, "id", "split", ...]}; `split` keeps only rows of that split.
    `"box": null`: the text describes an object the image does not contain (`Sample.box` None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such JSONL file")
    return Dataset(_jsonl, path, split, strict=strict)


# --------------------------------------------------------------------------------------------------
# OFA TSV: uniq-id \t image-id \t text \t x0,y0,x1,y1 \t base64 image


def _tsv(ds: Dataset, path: Path, split: str | None) -> Iterator[Sample]:
    with path.open(encoding="utf-8", newline="\n") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            where = f"{path.name}:{n}"
            cols = line.split("\t")
            if len(cols) != 5:
                ds.report(where, f"expected 5 tab-separated columns (id, image id, text, box, base64 image), "
                                 f"got {len(cols)}")
                continue
            uniq_id, image_id, text, box_text, image_b64 = cols
            try:
                box = _check_box(box_text.split(","))
                image = base64.urlsafe_b64decode(image_b64.encode("ascii"))  # OFA decodes urlsafe (accepts both)
                if not image:
                    raise ValueError("empty image column")
            except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
                ds.report(f"{where} (id {uniq_id})", first_line(exc))
                continue
            yield Sample(uniq_id, image, text, box, split, image_id=image_id or None, meta={"line": where})


def read_tsv(path: str | Path, split: str | None = None, strict: bool = False) -> Dataset:
    """OFA's grounding TSV (e.g. refcoco_val.tsv); `split` only labels the samples."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such TSV file")
    return Dataset(_tsv, path, split, strict=strict)


# --------------------------------------------------------------------------------------------------
# REFER releases: refs(<split_by>).p + instances.json + COCO images


class _Refused(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits only plain data: dicts, lists, tuples, strings, numbers (no classes, no functions)."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"refusing to load {module}.{name}: REFER pickles hold plain data only")


def load_refer_pickle(path: str | Path) -> list[dict]:
    """Read a REFER `refs(...).p` (a Python 2 pickle of a list of dicts) without running any code."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            refs = _PlainDataUnpickler(f, encoding="latin1").load()
    except _Refused as exc:
        raise DataError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # a damaged pickle can fail in many ways
        raise DataError(f"{path}: not a readable REFER pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{path}: expected a list of ref dicts")
    return refs


_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def _find_refs_file(root: Path, split_by: str | None) -> Path:
    if split_by is not None:
        path = root / f"refs({split_by}).p"
        if not path.is_file():
            raise DataError(f"{path}: not found")
        return path
    preferred = _SPLIT_BY.get(root.name.lower())
    candidates = sorted(root.glob("refs(*).p"))
    for path in candidates:
        if preferred and path.name == f"refs({preferred}).p":
            return path
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{root}: no refs(<split_by>).p file (a REFER dataset folder holds refs(unc).p or similar)")
    raise DataError(f"{root}: several refs files ({', '.join(p.name for p in candidates)}); choose one with split_by")


def _refer(ds: Dataset, root: Path, images: Path, split: str | None, split_by: str | None,
           text_field: str) -> Iterator[Sample]:
    refs = load_refer_pickle(_find_refs_file(root, split_by))
    try:
        instances = json.loads((root / "instances.json").read_text(encoding="utf-8"))
        anns = {a["id"]: a for a in instances["annotations"]}
        files = {im["id"]: im for im in instances["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{root / 'instances.json'}: unreadable COCO instances ({exc})") from None
    for ref in refs:
        ref_split = ref.get("split")
        if split is not None and ref_split != split:
            continue
        ref_id = ref.get("ref_id")
        ann = anns.get(ref.get("ann_id"))
        image_info = files.get(ref.get("image_id"))
        if ann is None or image_info is None:
            ds.report(f"ref {ref_id}", "annotation or image not found in instances.json")
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])  # COCO xywh
            box = _check_box((x, y, x + w, y + h))
        except (KeyError, TypeError, ValueError) as exc:
            ds.report(f"ref {ref_id}", str(exc))
            continue
        for i, sentence in enumerate(ref.get("sentences", [])):
            text = sentence.get(text_field, sentence.get("sent")) if isinstance(sentence, dict) else None
            try:
                if not isinstance(text, str):
                    raise ValueError(f"no {text_field!r} text")
                check_unicode(text)
            except ValueError as exc:
                ds.report(f"ref {ref_id} sentence {i}", str(exc))
                continue
            yield Sample(f"{ref_id}_{i}", images / image_info["file_name"], text, box, ref_split,
                         image_id=str(ref.get("image_id")), ref_id=ref_id, ann_id=ref.get("ann_id"),
                         meta={"category_id": ref.get("category_id"), "sent_id": sentence.get("sent_id")})


def read_refer(root: str | Path, images: str | Path | None = None, split: str | None = None,
               split_by: str | None = None, text_field: str = "raw", strict: bool = False) -> Dataset:
    """A REFER dataset folder (`refcoco/`, `refcoco+/`, `refcocog/`: refs pickle + instances.json).

    `images`: the COCO train2014 folder (default: `<root>/images`, then `<root>/../images/mscoco/images/
    train2014` as in the REFER layout). `split_by` picks `refs(<split_by>).p` (default: unc for RefCOCO and
    RefCOCO+, umd for RefCOCOg, or the only one present). Ids are `<ref_id>_<sentence index>` as in OFA's
    TSVs; text is the annotator's `raw` sentence (OFA lower-cases it anyway).
    """
    root = Path(root)
    if not (root / "instances.json").is_file():
        raise DataError(f"{root}: not a REFER dataset folder (no instances.json)")
    if images is None:
        layout = root.parent / "images" / "mscoco" / "images" / "train2014"
        images = root / "images" if (root / "images").is_dir() or not layout.is_dir() else layout
    return Dataset(_refer, root, Path(images), split, split_by, text_field, strict=strict)


# --------------------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "instances.json").is_file():
            return "refer"
        if list(path.glob("*.jsonl")):
            return "jsonl"
        raise DataError(f"{path}: cannot tell the dataset format (no instances.json, no .jsonl files); use --format")
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".tsv":
        return "tsv"
    raise DataError(f"{path}: cannot tell the dataset format from the name; use --format jsonl|tsv|refer")


def open_dataset(path: str | Path, format: str | None = None, split: str | None = None, strict: bool = False,
                 images: str | Path | None = None) -> Dataset:
    """Open a dataset by path: a .jsonl or .tsv file, a folder of <split>.jsonl files, or a REFER folder.

    For a folder of JSONL files (as `make-synthetic` writes), `split` picks `<split>.jsonl`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such dataset file or folder")
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
    if format == "refer":
        return read_refer(path, images=images, split=split, strict=strict)
    if path.is_dir():
        if format != "jsonl":
            raise DataError(f"{path}: a folder holds JSONL or REFER data, not {format}")
        name = f"{split}.jsonl" if split else None
        files = [path / name] if name else sorted(path.glob("*.jsonl"))
        if name and not files[0].is_file():
            raise DataError(f"{path}: no {name} (splits here: {', '.join(p.stem for p in path.glob('*.jsonl'))})")
        if len(files) != 1:
            raise DataError(f"{path}: several splits ({', '.join(p.stem for p in files)}); choose one with --split")
        return read_jsonl(files[0], split=None, strict=strict)
    if format == "jsonl":
        return read_jsonl(path, split=split, strict=strict)
    return read_tsv(path, split=split, strict=strict)


def list_splits(path: str | Path, format: str | None = None) -> list[str | None]:
    """The splits a dataset offers, in a stable order (None: the data has no split labels)."""
    path = Path(path)
    format = format or detect_format(path)
    if format == "jsonl" and path.is_dir():
        return _split_order(p.stem for p in path.glob("*.jsonl"))
    if format == "tsv":
        return [None]
    if format == "jsonl":
        seen: dict[str | None, None] = {}
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    seen[row.get("split") if isinstance(row, dict) else None] = None
                except ValueError:
                    continue
        return list(seen)
    return _split_order({r.get("split") for r in load_refer_pickle(_find_refs_file(path, None))})


def _split_order(names: Iterable[str | None]) -> list[str | None]:
    order = ["train", "val", "test", "testA", "testB", "testC"]
    return sorted(set(names), key=lambda s: (order.index(s) if s in order else len(order), str(s)))
