"""`histo` starts fast: the parser and light commands never import the training stack (torch, Lightning)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from histo.cli import main

HEAVY = ("torch", "lightning", "pytorch_lightning", "torchvision", "torchmetrics", "matplotlib")


def _imported_after(code: str) -> list[str]:
    """The heavy top-level modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    mods = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return sorted(m for m in HEAVY if m in mods)


def test_import_and_parser_do_not_load_the_training_stack() -> None:
    assert _imported_after("import histo.cli\nhisto.cli.build_parser()") == []


@pytest.mark.parametrize("argv", [["--version"], ["info", "--help"], ["report", "--help"], ["case", "--help"],
                                  ["ihc", "--help"], ["train", "--help"], ["predict", "--help"]])
def test_light_command_lines_do_not_load_the_training_stack(argv: list[str]) -> None:
    code = f"import histo.cli\ntry:\n    histo.cli.main({argv!r})\nexcept SystemExit:\n    pass"
    assert _imported_after(code) == []


def test_version_prints_without_building_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    import histo

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"histo {histo.__version__}"
