"""Contrastive pre-training of a tiny CLIP from scratch (the built-in synthetic world's CLIP).

The paper freezes OpenAI's ViT-B/16; offline, the pipeline trains a small open_clip model on the
synthetic shards instead and then freezes that. Standard CLIP objective (open_clip's ``ClipLoss``),
AdamW with the stateless warmup + cosine schedule of :mod:`tcl.train.optim`, gradient clipping, and
the logit scale clamped at 100 as in CLIP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..errors import TCLError
from .config import ClipPretrainConfig  # re-exported: the prepare_clip section lives there
from .optim import learning_rate_at, parameter_groups

__all__ = ["ClipPretrainConfig", "PretrainingError", "pretrain_clip"]


class PretrainingError(TCLError, FloatingPointError):
    """The CLIP loss diverged (a non-finite value): the learning rate is too high for this setting."""


def pretrain_clip(clip: nn.Module, batches: Iterator[dict], config: ClipPretrainConfig,
                  on_log: Callable[[dict], None] | None = None) -> dict:
    """Train ``clip`` in place on ``batches`` (dicts with ``image`` and ``text``); returns final metrics.

    ``on_log`` receives ``{step, loss, accuracy, lr, samples_per_s, eta_s}`` every ``log_every``
    steps and at the end; ``accuracy`` is in-batch image→text top-1.
    """
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    groups = parameter_groups(clip, config.weight_decay, decay_scalars=False)
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    clip.train()
    start, seen, record = time.perf_counter(), 0, {}
    for step in range(config.steps):
        batch = next(batches)
        lr = learning_rate_at(step, config.lr, config.min_lr, config.warmup_steps, config.steps, 1e-2)
        for group in optimizer.param_groups:
            group["lr"] = lr
        image_emb, text_emb, scale = clip(batch["image"], batch["text"])
        loss = loss_fn(image_emb, text_emb, scale)
        if not torch.isfinite(loss):
            raise PretrainingError(f"non-finite CLIP loss at step {step}: lower prepare_clip.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(clip.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        seen += len(batch["image"])
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            with torch.no_grad():
                accuracy = (image_emb @ text_emb.t()).argmax(1).eq(torch.arange(len(image_emb))).float().mean()
            elapsed = time.perf_counter() - start
            record = {"step": step + 1, "loss": round(loss.item(), 5), "accuracy": round(accuracy.item(), 4),
                      "lr": lr, "samples_per_s": round(seen / elapsed, 1),
                      "eta_s": round(elapsed / (step + 1) * (config.steps - step - 1), 1)}
            if on_log:
                on_log(record)
    clip.eval()
    return {**record, "seconds": round(time.perf_counter() - start, 1)}
