"""Worker pools: the one place histo starts threads or processes to read, score or render in parallel.

Every ``workers`` argument and ``--workers`` option means the same: that many worker threads or
processes (``kind``), and 0 = do the work in the calling thread (no pool).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal

PoolKind = Literal["thread", "process"]


def make_pool(workers: int, kind: str = "thread", *, name: str = "histo", start_method: str = "spawn",
              initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> Executor | None:
    """A pool of ``workers`` threads or processes (``kind``), None for workers <= 0; reuse it across slides.

    Processes start with ``spawn`` by default: a forked child would inherit the parent's open slide
    handles and threads. ``fork`` is for callers that hand workers large read-only state (phantom renderers)."""
    if workers <= 0:
        return None
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer,
                                  initargs=initargs)
    if kind == "process":
        methods = mp.get_all_start_methods()
        ctx = mp.get_context(start_method if start_method in methods else "spawn")
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs)
    raise ValueError(f"pool kind must be 'thread' or 'process', got {kind!r}")
