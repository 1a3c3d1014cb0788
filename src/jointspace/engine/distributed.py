"""Data-parallel setup for torchrun (DDP); the all-gathers are jointspace.collectives.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; nothing here is global
state: `init_distributed` returns a small record that the loop passes where it is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from jointspace.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the torchrun job if WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda" and local_rank >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()} "
                         f"(start at most that many processes per node, or set train.device: cpu for gloo)")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, rank=rank, world_size=world, store=_attempt_store(rank, world))
    return DistInfo(rank, world, local_rank)


def _attempt_store(rank: int, world: int) -> dist.Store | None:
    """After torchrun restarts a job (`--max-restarts`, a lost rank), the workers find the store of the
    first attempt still holding the dead ranks' addresses; each attempt's keys get a prefix of their own
    (TORCHELASTIC_RESTART_COUNT) so that gloo and NCCL meet only this attempt's ranks. None (the default
    env:// store) outside a restarted torchrun job."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0 or "MASTER_ADDR" not in os.environ:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_store and rank == 0, timeout=timedelta(minutes=10))
    return dist.PrefixStore(f"jointspace/attempt_{attempt}", store)


def rank_rng_states(info: DistInfo, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state (and its GPU's) on every rank, for rank 0's checkpoint (a collective;
    `rng.torch.rank<r>`, `rng.device.rank<r>`); {} outside torchrun."""
    if not info.enabled:
        return {}
    mine = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        mine["device"] = torch.cuda.get_rng_state(device)
    out = {}
    for kind, state in mine.items():
        state = state.to(device)
        parts = [torch.empty_like(state) for _ in range(info.world_size)]
        dist.all_gather(parts, state)
        out.update({f"rng.{kind}.rank{r}": part.cpu() for r, part in enumerate(parts)})
    return out


def shard_batch(idx: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices (rank r takes block r)."""
    if not info.enabled:
        return idx
    return idx.chunk(info.world_size)[info.rank]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when data-parallel, else the model itself."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.barrier()  # no rank tears down while another still talks to it
        dist.destroy_process_group()
