"""Data-parallel training with PyTorch's own distributed package, launched by torchrun.

    torchrun --nproc_per_node=N -m dmmd train --config ...           # one machine
    torchrun --nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT ...   # several (torchrun's rendezvous)

Every rank draws the same global batch, noise levels and corruption noise from the shared,
identically seeded generator, and computes features only for its slice of the batch. Features are
all-gathered (autograd-aware) so the unbiased MMD^2 of the whole batch, not an average of per-shard
estimates, is what each rank differentiates; the gradient penalty and L2 terms are local sums
normalised by the global count. After backward the gradients are all-reduced (summed), so every
rank holds the single-process gradient of the same global batch and the weights stay identical.
Rank 0 logs and checkpoints. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dmmd.runtime.device import resolve_device


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str) -> Context:
    """Join the process group torchrun describes in the environment (or run alone)."""

    resolved = resolve_device(device)  # a one-line error when CUDA is asked for and absent
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=resolved)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = resolved.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Context(rank, world, torch.device("cuda", local_rank) if cuda else torch.device("cpu"))


def shutdown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_rows(x: torch.Tensor, dim: int, ctx: Context) -> torch.Tensor:
    """Concatenate every rank's x along dim, keeping the autograd graph (backward sums over ranks)."""
    if not ctx.active:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=dim)


def sum_over_ranks(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """A detached tensor summed over ranks (for logging and for consistent checks)."""
    if not ctx.active:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def all_reduce_gradients(parameters, ctx: Context) -> None:
    """Sum every parameter's gradient over ranks, in one flat bucket."""
    if not ctx.active:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()
