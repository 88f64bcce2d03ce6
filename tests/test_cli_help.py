"""`histo --help`, `histo -h` and every subcommand's `--help` print usage and exit 0 (no help-string crash)."""

from __future__ import annotations

import argparse

import pytest

from histo.cli import build_parser, main


def _subcommands() -> list[str]:
    """The subcommand names the parser actually has (so a new command is covered without editing this)."""
    parser = build_parser()
    names = [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]
    assert names, "the histo parser has no subcommands"
    return names


def _help_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code
    return (0 if code is None else int(code)), capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_every_command(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _help_exit([flag], capsys)
    assert code == 0
    assert out.startswith("usage: histo")
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("command", _subcommands())
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_subcommand_help(command: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _help_exit([command, flag], capsys)
    assert code == 0
    assert out.startswith(f"usage: histo {command}")
    assert "options:" in out or "optional arguments:" in out
