"""One name per thing on the command line: --quiet everywhere, --workers saying threads or processes, --mpp."""

from __future__ import annotations

import argparse

import pytest

from histo.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name, p in a.choices.items()}


def _option(p: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in p._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_command_takes_quiet(command: str) -> None:
    assert _option(_subparsers()[command], "--quiet") is not None, f"histo {command} has no --quiet"


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_workers_says_threads_or_processes_and_what_zero_means(command: str) -> None:
    action = _option(_subparsers()[command], "--workers")
    if action is None:
        pytest.skip(f"histo {command} has no --workers")
    text = action.help or ""
    assert "thread" in text or "process" in text, f"histo {command} --workers: {text!r}"
    assert "0 " in text or "0=" in text or "0 =" in text, f"histo {command} --workers does not say what 0 means"


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_the_level0_mpp_override_is_called_mpp(command: str) -> None:
    p = _subparsers()[command]
    for flag in ("--mpp-override", "--slide-mpp"):
        assert _option(p, flag) is None, f"histo {command} {flag}: the level-0 override is --mpp everywhere"


def test_synth_progress_is_a_hidden_alias(capsys: pytest.CaptureFixture[str]) -> None:
    p = _subparsers()["synth"]
    assert _option(p, "--progress") is not None  # old scripts keep working
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert "--quiet" in out and "--progress" not in out
