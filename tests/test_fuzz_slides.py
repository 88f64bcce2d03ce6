"""A small run of scripts/fuzz_slides.py (issue 17): damaged slides give clean errors, never stray exceptions or hangs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fuzz_small_run_has_no_unexpected_errors_or_hangs():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz_slides.py"), "--variants", "6", "--seed", "3",
         "--commands", "info,tile", "--timeout-s", "60"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["runs"] >= 12
    assert out["ok"] + out["clean_errors"] == out["runs"]
    assert out["unexpected"] == 0 and out["hangs"] == 0, out["examples"]
