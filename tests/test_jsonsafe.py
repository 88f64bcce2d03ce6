"""histo.jsonsafe.json_safe is the one JSON cleaner; each caller's NaN/inf policy is kept."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from histo.jsonsafe import json_safe
from histo.rerun import plain


def test_plain_json_values() -> None:
    value = {1: (np.int64(3), np.float32(0.5), np.bool_(True)), "p": Path("a/b.svs"), "n": None, "s": np.str_("x"),
             "nested": [{"inf": float("inf"), "nan": np.float64("nan")}]}
    out = json_safe(value)
    assert out == {"1": [3, 0.5, True], "p": str(Path("a/b.svs")), "n": None, "s": "x",
                   "nested": [{"inf": None, "nan": None}]}
    assert type(out["1"][0]) is int and type(out["1"][1]) is float and type(out["1"][2]) is bool
    json.dumps(out, allow_nan=False)


def test_non_finite_policies() -> None:
    kept = json_safe([float("inf"), np.float64("nan")], non_finite="keep")
    assert kept[0] == math.inf and math.isnan(kept[1])
    assert json_safe([float("-inf"), float("inf")], non_finite="text") == ["-inf", "inf"]


def test_unknown_objects() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    t = Thing()
    assert json_safe({"t": t})["t"] is t
    assert json_safe({"t": t}, unknown="str") == {"t": "thing"}


def test_run_keys_compare_as_stored() -> None:
    fresh = {"mpp": np.float64(0.25), "tile": (512, 512), "slide": Path("s.svs"), 2: "x"}
    stored = json.loads(json.dumps(plain(fresh)))
    assert plain(fresh) == stored == {"mpp": 0.25, "tile": [512, 512], "slide": "s.svs", "2": "x"}


def test_leaf_without_numpy() -> None:
    code = "import sys, histo.jsonsafe, histo.rerun; print('numpy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_no_second_cleaner() -> None:
    root = Path(__file__).resolve().parents[1] / "histo"
    names = ("def _plain(", "def _json_value(", "def json_safe(")
    found = [str(f.relative_to(root)) for f in root.rglob("*.py") for n in names if n in f.read_text(encoding="utf-8")]
    assert found == ["jsonsafe.py"]
