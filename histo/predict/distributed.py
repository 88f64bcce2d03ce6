"""Cohort splitting across processes, GPUs and nodes under torchrun (or Lightning's launcher).

The launcher sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; rank r takes every
world-th slide of the cohort sorted by path, on its own GPU (LOCAL_RANK) when there is one. A gloo
process group (CPU collectives, so it works with or without GPUs) gives the barrier at the end, after
which rank 0 merges the per-rank status files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from histo.errors import ConfigError

T = TypeVar("T", str, Path)

# Ranks wait at the final barrier for the slowest one: as long as a big cohort shard can take.
BARRIER_TIMEOUT = timedelta(hours=72)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run; world_size 1 outside a launcher."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True under a launcher with more than one process."""
        return self.world_size > 1


def rank_info() -> RankInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK from the launcher's environment (torchrun; Lightning's on one node)."""
    env = os.environ

    def get(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from exc

    world = get("WORLD_SIZE", 1)
    local = get("LOCAL_RANK", 0)
    if env.get("RANK"):
        rank = get("RANK", 0)
    elif world > 1 and get("NODE_RANK", 0) == 0:
        rank = local  # Lightning's script launcher sets LOCAL_RANK/NODE_RANK/WORLD_SIZE but no RANK
    elif world > 1:
        raise ConfigError("WORLD_SIZE > 1 on a node other than the first, but RANK is not set: launch with torchrun")
    else:
        rank = 0
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}")
    return RankInfo(rank, world, local)


def shard(slides: Sequence[T], info: RankInfo) -> list[T]:
    """This rank's slides: the cohort sorted by path, every world_size-th from position rank."""
    return sorted(slides, key=str)[info.rank :: info.world_size]


def rank_device(device: str, info: RankInfo) -> str:
    """Per-rank device: 'auto'/'cuda' → cuda:LOCAL_RANK under a launcher when GPUs are present."""
    if not info.distributed or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    n = torch.cuda.device_count()
    index = info.local_rank % n  # more ranks than GPUs on a node share them round-robin
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def init(info: RankInfo) -> bool:
    """Join the launcher's process group (env:// rendezvous, gloo); False when not distributed."""
    if not info.distributed:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", init_method="env://", rank=info.rank,
                                world_size=info.world_size, timeout=BARRIER_TIMEOUT)
    return True


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sum_all(value: int) -> int:
    """Sum of ``value`` over all ranks (the value itself outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def shutdown() -> None:
    """Leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
