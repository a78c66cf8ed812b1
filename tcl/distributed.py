"""Process-group helpers that also work without ``torch.distributed`` being initialised.

The official code requires torchrun even on one GPU (docs/deviations.md, *Distributed mandatory*).
Here every helper falls back to the single-process answer, so the model and the losses run anywhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "gather_cat"]


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
