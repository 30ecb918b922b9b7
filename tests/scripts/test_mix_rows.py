"""scripts/mix_rows.py: train_demo.sh's training mixes (prefixes, re-weighting, repetition, one seeded shuffle)."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mix_rows.py"


def _mix(*specs: str) -> list[str]:
    out = subprocess.run([sys.executable, str(SCRIPT), *specs], capture_output=True, text=True, check=True).stdout
    return out.splitlines(keepends=True)


def test_prefixes_weights_and_repeats(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    kinds = ["ordinal", "relation", "simple", "attribute"] * 50
    a.write_text("".join(json.dumps({"image": f"images/{i}.png", "kind": k}) + "\n" for i, k in enumerate(kinds)))
    b.write_text("".join(json.dumps({"image": f"images/b{i}.png", "kind": "ordinal"}) + "\n" for i in range(10)))
    rows = _mix(f"{a},prefix=v2-,ordinal=2,simple=0.5", f"{b},times=3")
    assert rows == _mix(f"{a},prefix=v2-,ordinal=2,simple=0.5", f"{b},times=3")  # the same file every time
    parsed = [json.loads(r) for r in rows]
    from_a = collections.Counter(r["kind"] for r in parsed if r["image"].startswith("v2-images/"))
    assert from_a["ordinal"] == 100 and from_a["relation"] == from_a["attribute"] == 50
    assert 10 <= from_a["simple"] <= 40  # each of the 50 kept once with probability 0.5
    from_b = collections.Counter(r["image"] for r in parsed if r["image"].startswith("images/b"))
    assert len(from_b) == 10 and set(from_b.values()) == {3}
    # a source without prefix or weights is copied line for line (byte for byte), and the whole mix is shuffled
    assert sorted(_mix(str(b))) == sorted(b.read_text().splitlines(keepends=True))
    assert [json.loads(r)["image"] for r in _mix(str(a))] != [f"images/{i}.png" for i in range(200)]
