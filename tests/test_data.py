"""Readers: files of each format are written here, then read back."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from ofa_grounding.data import DataError, list_splits, load_refer_pickle, open_dataset, read_jsonl, read_refer, read_tsv


def _png(w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_jsonl_paths_relative_to_the_file_and_bad_rows_reported(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs/a.png").write_bytes(_png())
    rows = [
        {"image": "imgs/a.png", "text": "the cat", "box": [1, 2, 30, 25], "id": "s1", "kind": "attribute"},
        {"image": "imgs/a.png", "text": "bad box", "box": [30, 2, 1, 25]},
        "not json",
        {"image": "imgs/a.png", "box": [1, 2, 3, 4]},
        {"image": "imgs/a.png", "text": "second", "box": [0, 0, 5, 5], "split": "val"},
        {"image": "imgs/a.png", "text": "the \ud800 cat", "box": [1, 2, 3, 4]},  # JSON's lone surrogate
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    ds = read_jsonl(tmp_path / "d.jsonl")
    samples = list(ds)
    assert [s.id for s in samples] == ["s1", "d:5"]
    assert samples[0].image == tmp_path / "imgs/a.png" and samples[0].box == (1.0, 2.0, 30.0, 25.0)
    assert samples[0].meta["kind"] == "attribute" and samples[1].split == "val"
    assert [i.where for i in ds.issues] == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:4", "d.jsonl:6"]
    assert "inverted" in ds.issues[0].message and '"text"' in ds.issues[2].message
    assert ds.issues[3].message == "text is not Unicode text: a lone surrogate at character 4"
    assert [s.id for s in read_jsonl(tmp_path / "d.jsonl", split="val")] == ["d:5"]
    with pytest.raises(DataError, match=r"d.jsonl:2"):
        list(read_jsonl(tmp_path / "d.jsonl", strict=True))
    assert list_splits(tmp_path / "d.jsonl") == [None, "val"]


def test_tsv(tmp_path: Path) -> None:
    image = base64.b64encode(_png()).decode()
    urlsafe = base64.urlsafe_b64encode(_png(8, 8)).decode()
    lines = [f"79_1\t237367\tA woman in white.\t230.79,121.75,423.66,463.06\t{image}",
             "only\tthree\tcolumns",
             f"80_0\t5\ttext\t1,2,3\t{image}",
             f"81_0\t6\ttext\t1,2,3,4\t{urlsafe}"]
    (tmp_path / "refcoco_val.tsv").write_text("\n".join(lines) + "\n")
    ds = read_tsv(tmp_path / "refcoco_val.tsv", split="val")
    samples = list(ds)
    assert [s.id for s in samples] == ["79_1", "81_0"]
    assert samples[0].box == (230.79, 121.75, 423.66, 463.06) and samples[0].text == "A woman in white."
    assert Image.open(io.BytesIO(samples[0].image)).size == (40, 30) and samples[0].image_key == "237367"
    assert Image.open(io.BytesIO(samples[1].image)).size == (8, 8)
    assert [i.where for i in ds.issues] == ["refcoco_val.tsv:2", "refcoco_val.tsv:3 (id 80_0)"]


def _refer_fixture(root: Path) -> Path:
    data = root / "refcoco"
    (data / "images").mkdir(parents=True)
    (data / "images/COCO_train2014_000000000001.jpg").write_bytes(_png(100, 80))
    instances = {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 100, "height": 80}],
                 "annotations": [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [10.5, 20, 30, 40]},
                                 {"id": 12, "image_id": 1, "category_id": 3, "bbox": [50, 5, 20, 10]}],
                 "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
    (data / "instances.json").write_text(json.dumps(instances))
    refs = [{"ref_id": 7, "ann_id": 11, "image_id": 1, "category_id": 1, "split": "testA",
             "file_name": "COCO_train2014_000000000001_11.jpg", "sent_ids": [1, 2],
             "sentences": [{"sent_id": 1, "raw": "Man on the left.", "sent": "man on the left", "tokens": []},
                           {"sent_id": 2, "raw": "left guy", "sent": "left guy", "tokens": []}]},
            {"ref_id": 8, "ann_id": 12, "image_id": 1, "category_id": 3, "split": "val", "sent_ids": [3],
             "sentences": [{"sent_id": 3, "raw": "red car", "sent": "red car", "tokens": []}]},
            {"ref_id": 9, "ann_id": 999, "image_id": 1, "split": "val", "sentences": []}]
    with (data / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return data


def test_refer(tmp_path: Path) -> None:
    data = _refer_fixture(tmp_path)
    ds = read_refer(data, split="testA")
    samples = list(ds)
    assert [(s.id, s.text, s.box, s.split) for s in samples] == [
        ("7_0", "Man on the left.", (10.5, 20.0, 40.5, 60.0), "testA"), ("7_1", "left guy", (10.5, 20.0, 40.5, 60.0),
                                                                         "testA")]
    assert samples[0].image == data / "images/COCO_train2014_000000000001.jpg" and samples[0].ref_id == 7
    assert list_splits(data) == ["val", "testA"]
    val = open_dataset(data, split="val")
    assert [s.id for s in val] == ["8_0"] and "ref 9" in str(val.issues[0])
    assert next(s.text for s in read_refer(data, split="testA", text_field="sent")) == "man on the left"


class Gadget:
    def __reduce__(self):
        return (print, ("ran code",))


def test_refer_pickle_refuses_anything_but_plain_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": Gadget()}]))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_refer_pickle(path)
    assert "ran code" not in capsys.readouterr().out
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="not a readable REFER pickle"):
        load_refer_pickle(path)


def test_open_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such dataset"):
        open_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(DataError, match="use --format"):
        open_dataset(tmp_path / "x.csv")
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(DataError, match="choose one with --split"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="no val.jsonl"):
        open_dataset(tmp_path, split="val")
    assert list_splits(tmp_path) == ["train", "test"]


def test_jsonl_box_null_is_an_absent_object(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    rows = [{"image": "a.png", "text": "the purple star", "box": None, "kind": "absent"},
            {"image": "a.png", "text": "no box key"},
            {"image": "a.png", "text": "bad box", "box": [1, 2]},
            {"image": None, "text": "no image", "box": None}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = read_jsonl(tmp_path / "d.jsonl")
    samples = list(ds)
    assert [(s.text, s.box, s.meta["kind"]) for s in samples] == [("the purple star", None, "absent")]
    assert [i.where for i in ds.issues] == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:4"]
    assert 'missing "box"' in ds.issues[0].message and "null for an object" in ds.issues[0].message
    assert "4 numbers" in ds.issues[1].message and '"image"' in ds.issues[2].message


def test_jsonl_rows_of_one_image_share_one_copy_of_its_scene(tmp_path: Path) -> None:
    # A training mix repeats each scene's objects on every row of its image: held once, a 500k-row mix fits twice
    # in memory. Rows whose lists differ keep their own.
    scene = [{"shape": "circle", "color": "red", "box": [1, 2, 3, 4]}]
    other = [{"shape": "square", "color": "blue", "box": [5, 6, 7, 8]}]
    rows = [{"image": "a.png", "text": "the red circle", "box": [1, 2, 3, 4], "objects": scene, "image_size": [9, 9]},
            {"image": "a.png", "text": "the circle", "box": [1, 2, 3, 4], "objects": scene, "image_size": [9, 9]},
            {"image": "b.png", "text": "the red circle", "box": [1, 2, 3, 4], "objects": scene, "image_size": [9, 9]},
            {"image": "a.png", "text": "the blue square", "box": [5, 6, 7, 8], "objects": other, "image_size": [9, 9]}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a1, a2, b, a3 = read_jsonl(tmp_path / "d.jsonl")
    assert [s.meta["objects"] for s in (a1, a2, b, a3)] == [scene, scene, scene, other]
    assert a1.meta["objects"] is a2.meta["objects"] and a1.meta["image_size"] is a2.meta["image_size"]
    assert a1.image is a2.image and a1.image_id == str(tmp_path / "a.png")
    assert b.meta["objects"] is not a1.meta["objects"] and a3.meta["objects"] is not a1.meta["objects"]
    assert a3.image_id == a1.image_id and a3.meta["line"] == "d.jsonl:4"
