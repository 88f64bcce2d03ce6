"""Run per-slide work in a child process so that a crash in native code costs one slide, not the batch.

OpenSlide, libtiff and the image codecs are C libraries: on some corrupt files they abort the process
(SIGABRT after a failed allocation under a memory limit) or crash outright, and no Python `except`
can catch that. `run_isolated` runs a function in a child forked from a clean fork server (cheap: the
server has histo imported already, and it holds no threads, open slides or GPU context) and returns
its result, re-raises its exception, or raises `SlideCrashError` whose message starts with
"crashed (signal N)" when the child died, or "hung" when it ran past its time limit.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histo.errors import HistoError

_PRELOAD = ["histo.slide", "histo.tissue", "histo.tiling"]
_CTX: Any = None


class SlideCrashError(HistoError):
    """The child process working on a slide died from a signal, or hung past its time limit."""


def _context() -> Any:
    global _CTX
    if _CTX is None:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        _CTX = mp.get_context(method)
        if method == "forkserver":
            _CTX.set_forkserver_preload(_PRELOAD)
    return _CTX


def use_start_method(method: str, preload: list[str] | None = None) -> None:
    """Choose how children start ('forkserver', 'spawn', or 'fork' from a single-threaded process) and, for
    the fork server, which modules it imports once (e.g. histo.cli for a fuzzing harness)."""
    global _CTX
    _CTX = mp.get_context(method)
    if method == "forkserver":
        _CTX.set_forkserver_preload(_PRELOAD + list(preload or []))


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    import faulthandler

    faulthandler.disable()  # the parent reports the crash in the slide's row; no C traceback dump here
    try:
        out: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent, which decides
        out = ("error", exc, traceback.format_exc())  # type: ignore[assignment]
    try:
        conn.send(out)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception is sent as text
        conn.send(("error", RuntimeError(f"{type(exc).__name__} sending the result back: {exc}; "
                                         f"original: {out[1]!r}"), ""))
    conn.close()


def signal_name(number: int) -> str:
    """SIGABRT for 6 and so on; the number as text when it has no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def run_isolated(fn: Callable[..., Any], *args: Any, label: str = "slide", timeout_s: float | None = None,
                 **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a child process: its return value, its exception re-raised, or SlideCrashError."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    # Not a daemon: the work may itself start processes (reader pools, nested isolation); it is always
    # joined or killed below.
    proc = ctx.Process(target=_child, args=(child, fn, args, kwargs), daemon=False)
    proc.start()
    child.close()
    msg = None
    timed_out = False
    try:
        if parent.poll(timeout_s):
            try:
                msg = parent.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                msg = None  # the child died while (or before) sending
        else:
            timed_out = True
    finally:
        if msg is None and proc.is_alive():
            proc.kill()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
    if msg is None:
        code = proc.exitcode
        if timed_out:
            raise SlideCrashError(f"{label}: hung: no result after {timeout_s:g} s; the child process was killed")
        if code is not None and code < 0:
            n = -code
            raise SlideCrashError(
                f"{label}: crashed (signal {n}, {signal_name(n)}) in native code while working on it; "
                "the file is probably corrupt (re-copy or re-export it); the other slides go on"
            )
        raise SlideCrashError(f"{label}: crashed (exit code {code}) without a result while working on it")
    if msg[0] == "ok":
        return msg[1]
    exc = msg[1]
    if isinstance(exc, MemoryError):
        raise HistoError(f"{label}: {OUT_OF_MEMORY_ADVICE}")
    raise exc


OUT_OF_MEMORY_ADVICE = ("out of memory: lower --workers or --batch-size (or process fewer slides at once) and rerun; "
                        "finished slides are kept")


def unexpected_reason(exc: BaseException) -> str:
    """The status-row reason for an exception that no library code turned into a HistoError."""
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY_ADVICE
    return f"unexpected {type(exc).__name__}: {exc}"


def probe(path: str, mpp: float | None = None, force_mpp: bool = False) -> dict[str, Any]:
    """Open a slide and read its thumbnail and one region of every level (run it isolated to find crashers)."""
    from histo.slide import open_slide

    with open_slide(path, mpp=mpp, force_mpp=force_mpp) as slide:
        slide.thumbnail(256)
        for level, (w, h) in enumerate(slide.level_dimensions):
            ds = slide.level_downsamples[level]
            slide.read_level(level, (w // 2) * ds, (h // 2) * ds, min(256, w), min(256, h))
        return {"path": str(path), "backend": slide.backend, "levels": slide.level_count}


def probe_isolated(path: str | os.PathLike[str], mpp: float | None = None, force_mpp: bool = False,
                   timeout_s: float | None = 300.0) -> dict[str, Any]:
    """`probe` in a child process: raises the slide's HistoError, or SlideCrashError if native code dies."""
    return run_isolated(probe, str(path), mpp, force_mpp, label=str(Path(path)), timeout_s=timeout_s)
