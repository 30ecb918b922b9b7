"""`ofa-ground serve`: settings checked before anything starts, malloc arenas."""

from __future__ import annotations

import sys

import pytest

from ofa_grounding.cli import main


def test_serve_refuses_bad_settings(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--max-request-mb", "0"]) == 2


def test_serve_caps_malloc_arenas_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:

    from ofa_grounding.cli.serve import cap_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert cap_malloc_arenas() is (sys.platform == "linux")
