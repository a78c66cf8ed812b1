"""Where and how a training process runs: process group, device, mixed precision.

One code path for every launch: plain ``python`` (one process, CPU or one GPU) and ``torchrun``
(any number of processes and nodes, gloo on CPU, NCCL on GPU). Ranks come from the process group,
never from environment guesses (docs/deviations.md, *Distributed mandatory*).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Runtime", "start_runtime", "PRECISIONS", "resolve_precision", "autocast", "make_grad_scaler"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool  # initialised here, so :meth:`close` destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi_node(self) -> bool:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        return self.distributed and local < self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def start_runtime() -> Runtime:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), or run alone.

    The backend is NCCL when CUDA is available and gloo otherwise; each process uses the GPU of its
    local rank.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
        owns = True
    if dist.is_initialized():
        return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return Runtime(0, 1, 0, device, False)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 (with a gradient scaler) on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for the forward pass and losses (weights stay fp32, as in official main.py)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (bf16 and fp32 have fp32's range and need none)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
