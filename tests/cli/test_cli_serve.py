"""`ofa-ground serve`: settings checked before anything starts, malloc arenas."""

from __future__ import annotations

import functools
import socket
import sys
from pathlib import Path

import pytest

from ofa_grounding.cli import main


def test_serve_refuses_bad_settings(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--max-request-mb", "0"]) == 2
    capsys.readouterr()
    assert main(["serve", "--allow-private-urls"]) == 2
    assert "--allow-private-urls needs --allow-urls" in capsys.readouterr().err
    assert main(["serve", "--port", "99999"]) == 2
    assert "--port must be 0-65535, got 99999" in capsys.readouterr().err
    with socket.socket() as taken:  # a port another program listens on: told before the model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"ofa-ground: error: cannot listen on 127.0.0.1:{port} (")
    assert message.count("\n") == 1 and "another --port" in message


def test_serve_caps_malloc_arenas_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:

    from ofa_grounding.cli.serve import cap_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert cap_malloc_arenas() is (sys.platform == "linux")


def test_server_settings_reach_the_app_typed(small_model_dir: Path) -> None:
    """`serve --workers N` hands each process a `ServerSettings` (pickled by multiprocessing, as uvicorn's
    supervisor does with its app factory): the app built from a round-tripped copy has its limits and model."""
    import pickle

    from fastapi.testclient import TestClient

    from ofa_grounding.serve import ServeConfig, ServerSettings, app_from_settings

    settings = ServerSettings(model=str(small_model_dir), batch_size=3, min_confidence=0.25, threads=None,
                              service=ServeConfig(max_texts=7, max_batch=5))
    copy = pickle.loads(pickle.dumps(functools.partial(app_from_settings, settings))).args[0]
    assert copy == settings
    with TestClient(app_from_settings(copy)) as client:
        model = client.get("/v1/model").json()
    assert model["name"] == str(small_model_dir) and model["limits"]["max_texts"] == 7
    assert model["batching"]["max_batch"] == 5


@pytest.mark.slow
def test_serve_with_workers_end_to_end(small_model_dir: Path, tmp_path: Path) -> None:
    """`serve --workers 2`: both processes load the model from the settings they were handed and answer."""
    import json
    import urllib.request

    from conftest import served

    def model_info(port: int) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=5) as response:
            return json.loads(response.read())

    with (tmp_path / "server.log").open("w+") as log, \
            served(["--model", str(small_model_dir), "--workers", "2", "--threads", "1", "--max-texts", "7"], log,
                   model_info) as (_, port):
        model = model_info(port)
    assert model["limits"]["max_texts"] == 7 and model["name"] == str(small_model_dir)
