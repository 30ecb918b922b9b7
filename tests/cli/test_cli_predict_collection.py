"""`ofa-ground predict --jsonl IN --out OUT`: a collection streamed in chunks, one output line per input line in
order, errors as lines, resumed after a crash (cut short, or SIGKILLed) to the same bytes, refused on another
input's output, and the same bytes from two torchrun-style processes and from --workers 2.

Every run here takes --threads 1: the bytes are compared, and a different thread count may move a score's
last bits."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from ofa_grounding.cli import main
from ofa_grounding.collection import ChunkRule, Item, OutputMismatch, chunked, read_items, resume_point

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
IMAGES = ["images/noise_rgb_200x150.png", "images/scene_rgb_320x240.png", "images/scene_portrait_150x300.png",
          "images/scene_tiny_23x17.png", "images/scene_exif6_jpeg_240x160.jpg"]
WORDS = ["the red circle", "the blue square on the left", "a green triangle", "the small yellow star", "it"]
BATCH = ["--batch-size", "1"]  # chunks of 8 lines and 2 images (`ChunkRule.for_batch_size`): many chunks
BAD = {4: "{broken json", 7: json.dumps({"image": "images/missing.png", "text": "x"}),
       11: json.dumps({"image": "images/broken.png", "text": "the red circle"}), 18: json.dumps([1, 2]),
       22: json.dumps({"image": "images/scene_rgb_320x240.png", "text": "the red \ud800"})}  # a lone surrogate
EMPTY = 15  # an empty description: answered "not found", as `Grounder.predict` answers it, not an error


def write_collection(folder: Path, n: int, small_reference_dir: Path) -> Path:
    """`n` input lines in folder/in.jsonl: runs of 1-4 lines per image, the BAD lines at their numbers, an empty
    description at line EMPTY, and a blank line 9 (no input, but counted)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        shutil.copytree(small_reference_dir / "images", folder / "images")
        (folder / "images" / "broken.png").write_bytes(b"not a png at all")
    rng = random.Random(n)
    lines: list[str] = []
    while len(lines) < n:
        image = rng.choice(IMAGES)
        for _ in range(rng.randint(1, 4)):
            number = len(lines) + 1
            text = " " if number == EMPTY else f"{rng.choice(WORDS)} {number}"
            lines.append("" if number == 9 else BAD.get(number) or json.dumps({"image": image, "text": text}))
    (folder / "in.jsonl").write_text("\n".join(lines[:n]) + "\n")
    return folder / "in.jsonl"


def predict(model: Path, src: Path, out: Path | None, *more: str) -> int:
    return main(["predict", "--model", str(model), "--jsonl", str(src), *(["--out", str(out)] if out else []),
                 *BATCH, "--threads", "1", "--no-progress", *more])


def command(model: Path, src: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "ofa_grounding.cli", "predict", "--model", str(model), "--jsonl", str(src),
            "--out", str(out), *BATCH, "--threads", "1", "--no-progress", *more]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, small_model_dir: Path, small_reference_dir: Path
               ) -> tuple[Path, bytes]:
    """A 60-line collection and its output from one uninterrupted run (exit 1: it has failed lines)."""
    folder = tmp_path_factory.mktemp("collection")
    src = write_collection(folder, 60, small_reference_dir)
    assert predict(small_model_dir, src, folder / "reference.jsonl") == 1
    return src, (folder / "reference.jsonl").read_bytes()


def test_one_line_per_input_line_in_order_errors_as_lines(small_model_dir: Path, collection: tuple[Path, bytes],
                                                          capsys: pytest.CaptureFixture) -> None:
    src, reference = collection
    rows = [json.loads(line) for line in reference.decode().splitlines()]
    inputs = {n: line for n, line in enumerate(src.read_text().splitlines(), 1) if line.strip()}
    assert [r["line"] for r in rows] == list(inputs) and len(rows) == 59  # the blank line 9: no input, no answer
    for row in rows:
        if row["line"] in BAD:
            assert list(row) == ["line", "image", "text", "error"]
            assert row["error"].startswith(f"{src}:{row['line']}: ")
        else:
            given = json.loads(inputs[row["line"]])
            assert list(row) == ["line", "image", "text", "width", "height", "box", "score", "confidence", "found",
                                 "tokens", "raw_confidence", "calibrated", "zoomed"]
            assert (row["image"], row["text"]) == (given["image"], given["text"])
    errors = {r["line"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == set(BAD)
    assert "Expecting property name" in errors[4] and errors[18].endswith('expected {"image": str, "text": str}')
    assert "missing.png: image file not found" in errors[7] and "broken.png" in errors[11]
    assert errors[22].endswith("text is not Unicode text: a lone surrogate at character 8")
    assert rows[EMPTY - 2]["line"] == EMPTY and rows[EMPTY - 2]["found"] is False
    by_text = {r["text"]: r for r in rows if "error" not in r}
    # the answers are the Grounder's: the same tokens one by one (scores may differ in the last bits)
    from ofa_grounding import Grounder

    grounder = Grounder.from_pretrained(small_model_dir)
    for text in list(by_text)[:3]:
        row = by_text[text]
        assert grounder.predict(src.parent / row["image"], text).tokens == tuple(row["tokens"])
    # without --out: the same lines on stdout; one stderr line per failed input
    capsys.readouterr()
    assert predict(small_model_dir, src, None) == 1
    captured = capsys.readouterr()
    assert captured.out.encode() == reference
    assert captured.err.splitlines() == [f"ofa-ground: error: {errors[n]}" for n in sorted(errors)]


def test_chunks_are_cut_from_the_input_alone() -> None:
    def item(n: int, image: str | None) -> Item:
        return Item(n, 10 * n, image, "t" if image else None, None if image else "bad")

    images = ["a"] * 5 + ["b", "c", "d", "e"] + ["f"] * 40 + [None, "g", "g", "h"]
    items = [item(n, image) for n, image in enumerate(images, 1)]
    rule = ChunkRule(lines=4, images=2, max_lines=16)
    chunks = list(chunked(items, rule))
    assert [len(c) for c in chunks] == [5, 2, 2, 16, 16, 8, 4]
    assert [i for c in chunks for i in c] == items
    assert [c[0].image for c in chunks[:3]] == ["a", "b", "d"]  # a run of one image is not cut before max_lines
    for k in range(len(chunks)):  # from any chunk's first line on: the same later chunks
        start = items.index(chunks[k][0])
        assert list(chunked(items[start:], rule)) == chunks[k:]
    assert ChunkRule.for_batch_size(8) == ChunkRule(64, 16, 256)


@pytest.mark.slow
def test_a_crash_cut_anywhere_resumes_to_the_same_bytes(small_model_dir: Path, collection: tuple[Path, bytes],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What a crash can leave: whole lines, a line cut short, a line without its newline, bytes of a write that
    never reached the disk. Each is cut back to its chunk's start, and the rerun's output is the uninterrupted
    run's, byte for byte."""
    src, reference = collection
    lines = reference.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    cuts = {"mid-line": starts[23] + 17, "a whole chunk": starts[8], "no final newline": starts[31] - 1,
            "past chunk 1, whole lines": starts[13]}
    out = tmp_path / "out.jsonl"
    for name, cut in cuts.items():
        out.write_bytes(reference[:cut])
        assert predict(small_model_dir, src, out) == 1, name
        assert out.read_bytes() == reference, name
    out.write_bytes(reference[:starts[40]] + b"\0" * 300)  # a lost write: zeros where the data should be
    assert predict(small_model_dir, src, out) == 1
    assert out.read_bytes() == reference
    err = capsys.readouterr().err
    assert f"ofa-ground: --out {out}: resuming after the " in err
    # complete: nothing to do, said so, without a model (the exit code says that it holds failed lines)
    assert predict(tmp_path / "no-model", src, out) == 1
    assert capsys.readouterr().err.strip() == (f"ofa-ground: --out {out} already answers all 59 inputs of {src}: "
                                               "nothing to do")
    assert out.read_bytes() == reference


def test_resume_point_reads_what_a_crash_left(tmp_path: Path, collection: tuple[Path, bytes]) -> None:
    src, reference = collection
    rule = ChunkRule.for_batch_size(1)
    chunks = list(chunked(read_items(src), rule))
    lines = reference.splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    whole = len(chunks[0]) + len(chunks[1])  # two whole chunks, then part of the third
    out.write_bytes(b"".join(lines[:whole + 2]) + lines[whole + 2][:5])
    start = resume_point(src, out, rule)
    assert (start.chunk, start.answered, start.complete) == (2, whole, False)
    assert start.out_offset == len(b"".join(lines[:whole])) and start.line == chunks[2][0].line
    assert start.failed == sum(b'"error"' in line for line in lines[:whole])
    assert list(read_items(src, start.offset, start.line)) == [i for c in chunks[2:] for i in c]
    out.write_bytes(b"".join(lines[:5]) + b"not json\n" + b"".join(lines[6:]))
    with pytest.raises(OutputMismatch, match="its line 6 is not JSON, and more lines follow"):
        resume_point(src, out, rule)
    out.write_bytes(reference + lines[0])
    with pytest.raises(OutputMismatch, match="more lines than"):
        resume_point(src, out, rule)


def test_an_out_of_another_input_is_refused(small_model_dir: Path, collection: tuple[Path, bytes], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    src, reference = collection
    other = tmp_path / "in.jsonl"
    shutil.copytree(src.parent / "images", tmp_path / "images")
    lines = src.read_text().splitlines()
    lines[1] = json.dumps({"image": IMAGES[0], "text": "something else"})  # line 2 differs
    other.write_text("\n".join(lines[:20]) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_bytes(reference[:3000])
    assert predict(tmp_path / "no-model", other, out) == 2  # refused before any model loads
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ofa-ground: error: --out {out}: its line 2 is not the answer to line 2 of {other} "
                          "(line 2, image ") and err.endswith("pass --overwrite to start it again, or choose "
                                                              "another --out") and "\n" not in err
    assert out.read_bytes() == reference[:3000]
    assert predict(small_model_dir, other, out, "--overwrite") == 1
    fresh = tmp_path / "fresh.jsonl"
    assert predict(small_model_dir, other, fresh) == 1
    assert out.read_bytes() == fresh.read_bytes()
    assert json.loads(out.read_bytes().splitlines()[1])["text"] == "something else"
    # an input shorter than the output's answers: another input too
    shorter = tmp_path / "short.jsonl"
    shorter.write_text("\n".join(src.read_text().splitlines()[:20]) + "\n")
    out.write_bytes(reference)
    assert predict(tmp_path / "no-model", shorter, out) == 2
    assert "more lines than" in capsys.readouterr().err


def test_usage_errors(small_model_dir: Path, collection: tuple[Path, bytes], tmp_path: Path,
                      capsys: pytest.CaptureFixture) -> None:
    src, _ = collection
    image = str(src.parent / IMAGES[0])
    for args, message in [(["--jsonl", str(src), "--out", str(src)], "that is the --jsonl file itself"),
                          ([image, "x", "--out", str(tmp_path / "o.jsonl")], "--out goes with --jsonl"),
                          ([image, "x", "--workers", "2"], "--workers goes with --jsonl"),
                          (["--jsonl", str(src), "--overwrite"], "--overwrite goes with --out"),
                          (["--jsonl", str(src), "--workers", "0"], "--workers must be at least 1"),
                          (["--jsonl", str(src), "--out", str(tmp_path / "no" / "o.jsonl")], "cannot write")]:
        assert main(["predict", "--model", str(small_model_dir), *args]) == 2, args
        assert message in capsys.readouterr().err, args


def test_a_second_run_on_the_same_out_is_refused(collection: tuple[Path, bytes], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    fcntl = pytest.importorskip("fcntl")
    src, _ = collection
    out = tmp_path / "out.jsonl"
    with out.open("wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert predict(tmp_path / "no-model", src, out) == 2
    assert capsys.readouterr().err.strip() == f"ofa-ground: error: --out {out}: another run is writing it"


@pytest.mark.slow
def test_a_run_killed_at_a_random_point_resumes_to_the_same_bytes(small_model_dir: Path, small_reference_dir: Path,
                                                                  tmp_path: Path) -> None:
    src = write_collection(tmp_path, 240, small_reference_dir)
    reference = tmp_path / "reference.jsonl"
    assert predict(small_model_dir, src, reference) == 1
    seed = int.from_bytes(os.urandom(4), "little")
    delay = random.Random(seed).uniform(0.0, 0.5)
    out = tmp_path / "out.jsonl"
    run = subprocess.Popen(command(small_model_dir, src, out), cwd=ROOT, env=ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.stat().st_size == 0) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    killed_at = out.stat().st_size
    assert run.returncode == -signal.SIGKILL and 0 < killed_at < reference.stat().st_size, (seed, killed_at)
    again = subprocess.run(command(small_model_dir, src, out), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 1, again.stderr[-2000:]
    assert "resuming after the" in again.stderr or killed_at < 3000, (seed, again.stderr[-2000:])
    assert out.read_bytes() == reference.read_bytes(), (seed, killed_at)


@pytest.mark.slow
def test_two_processes_write_what_one_does(small_model_dir: Path, collection: tuple[Path, bytes],
                                           tmp_path: Path) -> None:
    """RANK/WORLD_SIZE set by hand, as torchrun sets them (gloo on CPU): the ranks answer every other chunk, rank 0
    writes OUT, the same bytes as one process; and a two-process rerun continues a one-process run's OUT."""
    src, reference = collection

    def two_ranks(out: Path) -> None:
        port = str(free_port())
        ranks = [subprocess.Popen(command(small_model_dir, src, out), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
                 for r in (0, 1)]
        results = [(rank.wait(timeout=300), *rank.communicate()) for rank in ranks]
        assert [code for code, _, _ in results] == [1, 0], [err[-2000:] for _, _, err in results]
        assert results[1][2] == ""  # errors and notes: rank 0's to say

    out = tmp_path / "two.jsonl"
    two_ranks(out)
    assert out.read_bytes() == reference
    out.write_bytes(reference[:len(reference) // 2 + 11])
    two_ranks(out)
    assert out.read_bytes() == reference


@pytest.mark.slow
def test_workers_write_what_one_process_does(small_model_dir: Path, collection: tuple[Path, bytes],
                                             tmp_path: Path) -> None:
    src, reference = collection
    out = tmp_path / "workers.jsonl"
    assert predict(small_model_dir, src, out, "--workers", "2") == 1
    assert out.read_bytes() == reference
    one = tmp_path / "one.jsonl"
    assert predict(small_model_dir, src, one, "--workers", "1") == 1
    assert one.read_bytes() == reference
    out.write_bytes(reference[:len(reference) // 3])  # and a workers run resumes the same way
    assert predict(small_model_dir, src, out, "--workers", "2") == 1
    assert out.read_bytes() == reference


@pytest.mark.slow
def test_torchrun_itself_writes_what_one_process_does(small_model_dir: Path, collection: tuple[Path, bytes],
                                                      tmp_path: Path) -> None:
    """The launcher a user types, `torchrun --nproc_per_node 2 -m ofa_grounding.cli predict ...` (here as
    `python -m torch.distributed.run`, the same entry point): the same bytes as one process."""
    src, reference = collection
    out = tmp_path / "torchrun.jsonl"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "-m", "ofa_grounding.cli"]
    done = subprocess.run(launcher + command(small_model_dir, src, out)[3:], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]  # 1, as one process: the collection holds bad lines
    assert out.read_bytes() == reference, done.stderr[-2000:]
