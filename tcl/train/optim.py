"""TCL's optimisation recipe: AdamW groups, linear LR scaling, warmup + cosine
(kakaobrain/tcl bc2b551: utils/optimizer.py, utils/lr_scheduler.py, the LR scaling in main.py ``main``).

The schedule is a pure function of the step, so a resumed run needs no scheduler state to continue
exactly where it stopped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["parameter_groups", "build_optimizer", "scaled_learning_rates", "learning_rate_at", "REFERENCE_BATCH"]

REFERENCE_BATCH = 4096  # the paper's learning rates are quoted for this global batch


def parameter_groups(model: nn.Module, weight_decay: float, names: list[str] | None = None,
                     decay_scalars: bool = True) -> list[dict]:
    """AdamW groups as in the official code: no decay for 1-D parameters and ``*.bias``; decay for the rest.

    The rest includes the 0-dim scalars (both logit scales, Sim2Mask ``w``/``b`` and the decoder gates),
    which the official code decays too (docs/deviations.md, *Weight decay on scalars*); kept for
    fidelity. With ``decay_scalars=False`` they are not decayed (the usual CLIP recipe, for the logit
    scale). ``names`` selects the parameters to optimise (default: every parameter that requires grad).
    Pass the *eventually* trainable ones (the masker's block copies included, even during the
    decoder-only phase) so that one optimizer, built once, serves the whole run.
    """
    named = dict(model.named_parameters())
    selected = names if names is not None else [n for n, p in named.items() if p.requires_grad]
    decay, no_decay = [], []
    for name in selected:
        param = named[name]
        undecayed = param.ndim == 1 or name.endswith(".bias") or (param.ndim == 0 and not decay_scalars)
        (no_decay if undecayed else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.999), eps: float = 1e-6,
                    names: list[str] | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (released config: wd 0.05, eps 1e-6).

    ``foreach``: the multi-tensor implementation, which CUDA picks by default, also on CPU, where the
    default per-parameter loop took ~25% longer on the masker's 29M parameters; it gives the same values
    bit for bit (``fused`` would not: its kernel rounds differently).
    """
    return torch.optim.AdamW(parameter_groups(model, weight_decay, names), lr=lr, betas=tuple(betas), eps=eps,
                             foreach=True)


def scaled_learning_rates(base_lr: float, min_lr: float, global_batch: int) -> tuple[float, float]:
    """Linear scaling by the global batch: ``lr · N / 4096`` (16 GPUs × 64: 3e-4 → 7.5e-5, 4e-5 → 1e-5)."""
    factor = global_batch / REFERENCE_BATCH
    return base_lr * factor, min_lr * factor


def learning_rate_at(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                     warmup_start_factor: float = 1e-4) -> float:
    """The LR used for the optimizer step ``step`` (0-based).

    Linear warmup from ``lr · warmup_start_factor`` to ``lr`` over ``warmup_steps`` (torch's
    ``LinearLR``), then cosine annealing to ``min_lr`` over ``total_steps − warmup_steps``
    (``CosineAnnealingLR`` inside ``SequentialLR``), the official schedule. Past the end it stays
    at ``min_lr`` (the official loop runs one step more than the schedule: docs/deviations.md,
    *50001 steps*).
    """
    if step < warmup_steps:
        return lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    span = max(1, total_steps - warmup_steps)
    progress = min(step - warmup_steps, span) / span
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
