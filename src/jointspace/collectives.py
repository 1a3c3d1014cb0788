"""All-gathers across the ranks of a torchrun job (a no-op in a single process), below the losses and the
engine: the binding loss gathers embeddings with their gradient, the contrastive task's batches gather
labels and token ids without. Joining the job and DDP are the engine's (engine/distributed.py)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [n, ...] from every rank in rank order; gradients flow back to each rank's part."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank (labels, token ids): no gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)
