"""Hub ids resolved through local directories laid out like the hubs' caches (no network in tests)."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from ofa_grounding import Grounder
from ofa_grounding.checkpoint import CheckpointError
from ofa_grounding.hub import resolve_model

MS_ID = "damo/ofa_visual-grounding_refcoco_distilled_en"
HF_ID = "OFA-Sys/ofa-tiny"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("MODELSCOPE_CACHE", "HF_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "OFA_GROUNDING_OFFLINE",
                "OFA_GROUND_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default caches live under an empty home


def _copy(model_dir: Path, to: Path) -> Path:
    shutil.copytree(model_dir, to)
    return to


def test_modelscope_cache_layouts(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new = _copy(tiny_model_dir, tmp_path / "ms" / "models" / MS_ID)
    assert resolve_model(MS_ID, cache_dir=tmp_path / "ms") == new
    assert resolve_model("modelscope:" + MS_ID, cache_dir=tmp_path / "ms") == new
    old = _copy(tiny_model_dir, tmp_path / "ms-old" / MS_ID)  # clients before the models/ folder
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-old"))
    assert resolve_model(MS_ID) == old
    default = _copy(tiny_model_dir, tmp_path / "home" / ".cache" / "modelscope" / "hub" / "models" / MS_ID)
    monkeypatch.delenv("MODELSCOPE_CACHE")
    assert resolve_model(MS_ID) == default


def test_huggingface_cache_layout(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hf" / "hub" / "models--OFA-Sys--ofa-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd\n")
    snapshot = _copy(tiny_model_dir, repo / "snapshots" / "0123abcd")
    _copy(tiny_model_dir, repo / "snapshots" / "old-revision")
    assert resolve_model("hf:" + HF_ID, cache_dir=tmp_path / "hf" / "hub") == snapshot
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert resolve_model("hf:" + HF_ID) == snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert resolve_model("hf:" + HF_ID) == snapshot


def test_missing_while_offline_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=f"offline mode is on; put its files .* in {tmp_path}/models/{MS_ID}"):
        resolve_model(MS_ID, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match=f"hf:{HF_ID}: not in the Hugging Face cache and offline mode is on"):
        resolve_model("hf:" + HF_ID, cache_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("OFA_GROUNDING_OFFLINE", "true")
    with pytest.raises(CheckpointError, match="offline mode is on"):
        resolve_model(MS_ID, cache_dir=tmp_path)
    monkeypatch.delenv("OFA_GROUNDING_OFFLINE")
    monkeypatch.setenv("OFA_GROUND_OFFLINE", "1")  # the old name: still read, for a release, with a warning
    with pytest.warns(DeprecationWarning, match="OFA_GROUNDING_OFFLINE"), \
            pytest.raises(CheckpointError, match="offline mode is on"):
        resolve_model(MS_ID, cache_dir=tmp_path)


def test_missing_without_the_client_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails: no download is attempted
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"needs the ModelScope client: pip install 'ofa-grounding\[hub\]'"):
        resolve_model(MS_ID, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"needs huggingface_hub: pip install 'ofa-grounding\[hub\]'"):
        resolve_model("hf:" + HF_ID, cache_dir=tmp_path)


def test_failed_downloads_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that fails with an empty or a many-line message (no network here: the clients are fakes)."""
    def raising(exc: Exception):
        def snapshot_download(*args, **kwargs):
            raise exc
        return snapshot_download

    modelscope_hub = types.ModuleType("modelscope.hub.snapshot_download")
    modelscope_hub.snapshot_download = raising(ConnectionError())  # type: ignore[attr-defined]
    for name in ("modelscope", "modelscope.hub"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelscope.hub.snapshot_download", modelscope_hub)
    huggingface_hub = types.ModuleType("huggingface_hub")
    huggingface_hub.snapshot_download = raising(OSError("\nconnection refused\n  at line 2"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", huggingface_hub)
    with pytest.raises(CheckpointError, match=r"ModelScope download failed \(ConnectionError\); or put") as ms:
        resolve_model(MS_ID, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"Hugging Face download failed \(connection refused\)$") as hf:
        resolve_model("hf:" + HF_ID, cache_dir=tmp_path)
    assert "\n" not in str(ms.value) and "\n" not in str(hf.value)


def test_local_paths_win_and_bad_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(CheckpointError, match="no such model directory"):
        resolve_model(tmp_path / "nothing" / "here" / "at-all")
    with pytest.raises(CheckpointError, match="no such model directory"):
        resolve_model("not an id")


def test_grounder_and_cli_take_hub_ids(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ofa_grounding.cli import main

    _copy(tiny_model_dir, tmp_path / "models" / MS_ID)
    example = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"
    local = Grounder.from_pretrained(tiny_model_dir).predict(example, "a")
    assert Grounder.from_pretrained(MS_ID, cache_dir=tmp_path).predict(example, "a").box == local.box
    assert main(["predict", "--model", MS_ID, "--cache-dir", str(tmp_path), str(example), "a", "--json"]) == 0
    assert str(local.box[0])[:6] in capsys.readouterr().out
