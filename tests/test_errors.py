"""One-line messages from exceptions (errors.first_line), which every one-line error of the package uses."""

from __future__ import annotations

from ofa_grounding.errors import first_line


def test_first_line() -> None:
    assert first_line(ValueError("bad box\nTraceback: more")) == "bad box"
    assert first_line(OSError("\n  refused  \nsecond")) == "refused"
    assert first_line(ConnectionError()) == "ConnectionError"
    assert first_line(KeyError("")) == "''"  # KeyError quotes its key: not empty
    assert first_line(RuntimeError("   \n ")) == "RuntimeError"
    assert first_line(ValueError("bad box\nmore"), typed=True) == "ValueError: bad box"
    assert first_line(RuntimeError("   \n "), typed=True) == "RuntimeError: "
