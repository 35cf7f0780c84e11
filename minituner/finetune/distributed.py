"""Data-parallel fine-tuning with PyTorch's own DistributedDataParallel.

``torchrun --nproc_per_node N -m minituner finetune ...`` starts N processes; each one
reads its place from the environment (WORLD_SIZE, RANK, LOCAL_RANK), joins a process
group (gloo on the CPU, nccl on GPUs) and trains on its share of every global batch.
Only the trainable parameters take part: DDP skips parameters with requires_grad=False,
so with LoRA just A and B are all-reduced.

Equal results to one process at the same global batch: every rank draws the same global
batch indices (same seed) and takes every N-th example; its loss is the *sum* over its
answer characters divided by the global character count, times N (DDP averages the
gradients over the N ranks, which undoes the factor), so the gradient equals the one of
the global mean loss. Evaluation, events for the UI and saving happen on rank 0 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """The process's place as torchrun describes it (1 process when unset)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
    return DistInfo(world, rank, local)


def setup(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """The module to run forward/backward through: DDP around ``model`` when distributed."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # Buffers (NF4 codes and scales, rotary tables) never change while training and are
    # equal on every rank (seeded): broadcasting them before each forward, DDP's default,
    # would send a 7B model's whole NF4 weight every step.
    return DDP(model, device_ids=ids, broadcast_buffers=False)
