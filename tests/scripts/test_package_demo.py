"""scripts/package_demo.py: the second look's settings (--zoom) and how the card states them."""

from __future__ import annotations

import argparse

import pytest

from ofa_grounding.zoom import Zoom


@pytest.fixture(scope="module")
def package_demo(load_script):
    return load_script("package_demo")


def test_zoom_settings_override_the_defaults_given_only(package_demo) -> None:
    zoom_settings = package_demo.zoom_settings
    assert zoom_settings("") == Zoom()
    assert zoom_settings("max_share=0.35,min_iou=0.1") == Zoom(max_share=0.35, min_iou=0.1)
    assert zoom_settings("min_side=96").min_side == 96


@pytest.mark.parametrize("text", ["max_share", "max_share=big", "size=3", "min_iou=2"])
def test_zoom_settings_refuse_what_is_no_setting(package_demo, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        package_demo.zoom_settings(text)


def test_the_card_states_the_settings_it_ships(package_demo) -> None:
    text = " ".join(package_demo.zoom_sentence(Zoom(max_share=0.2, factor=4.0, min_side=64, min_iou=0.1)))
    assert "at most 20 % of the image's width and height" in text
    assert "4 times its size (at least 64 px)" in text
    assert "(IoU >= 0.1)" in text
