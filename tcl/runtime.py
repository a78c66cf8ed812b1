"""Where and how a process runs: process group, device, precision and autocast.

One code path for every launch: plain ``python`` (one process, CPU or one GPU) and ``torchrun``
(any number of processes and nodes, gloo on CPU, NCCL on GPU). Ranks come from the process group,
never from environment guesses. The official code requires torchrun even on one GPU
(docs/deviations.md, *Distributed mandatory*); here every collective helper falls back to the
single-process answer, so the model, the losses, training and evaluation run anywhere.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "gather_cat", "Runtime", "start_runtime",
           "resolve_precision", "cpu_has_native_bf16", "autocast", "make_grad_scaler"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_cat(tensor: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, rank order.

    With ``with_grad`` the backward pass is a reduce-scatter of the incoming gradient
    (``torch.distributed.nn.functional.all_gather``), so combined with DDP's gradient averaging
    the result is the gradient of the mean of the per-rank losses, as with the official
    ``gather_cat(grad=True)`` (kakaobrain/tcl bc2b551, us/dist_utils.py).
    Every rank must pass the same shape (TCL batches with ``partial=False``).
    """
    if not is_distributed():
        return tensor
    if with_grad:
        return _GatherWithGrad.apply(tensor)
    return _all_gather(tensor)


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients of every rank and keeps this rank's slice
    (a reduce-scatter, written with all_reduce so gloo on CPU supports it too)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()  # einsum can hand over non-contiguous gradients
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products natively (AVX512-BF16 or AMX), so that bf16 is faster than
    fp32; oneDNN also *emulates* bf16 on plain AVX-512, which saves nothing."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


def resolve_precision(precision: str, device: torch.device, inference: bool = False) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 (with a gradient scaler) on older GPUs; on CPU fp32 for
    training and, with ``inference``, bf16 where the CPU has native bf16 (:func:`cpu_has_native_bf16`).

    Training keeps fp32 on CPU (``train.precision: auto`` must not change the CPU pipeline's numbers);
    inference's ``auto`` is the user asking for speed (``tcl predict --precision auto``,
    ``evaluate.precision: auto``; what bf16 costs in agreement: docs/evaluation.md).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if inference and device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
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
