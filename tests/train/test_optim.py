from __future__ import annotations

import pytest
import torch

from tcl.train import build_optimizer, learning_rate_at, parameter_groups, scaled_learning_rates


def test_linear_scaling_matches_the_paper_runs():
    assert scaled_learning_rates(3e-4, 4e-5, 16 * 64) == pytest.approx((7.5e-5, 1e-5))
    assert scaled_learning_rates(3e-4, 4e-5, 8 * 64) == pytest.approx((3.75e-5, 5e-6))


def test_schedule_matches_torch_sequential_linear_then_cosine():
    lr, min_lr, warmup, total = 7.5e-5, 1e-5, 15, 50
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-4, end_factor=1.0, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=min_lr),
    ], milestones=[warmup])
    for step in range(total + 1):
        assert learning_rate_at(step, lr, min_lr, warmup, total) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-6, abs=1e-12), step
        optimizer.step()
        scheduler.step()
    assert learning_rate_at(0, lr, min_lr, warmup, total) == pytest.approx(7.5e-9)
    assert learning_rate_at(total, lr, min_lr, warmup, total) == pytest.approx(min_lr)
    assert learning_rate_at(total + 7, lr, min_lr, warmup, total) == pytest.approx(min_lr)


def test_groups_follow_the_official_rule(tiny_tcl):
    decay, no_decay = parameter_groups(tiny_tcl, weight_decay=0.05)
    named = {id(p): n for n, p in tiny_tcl.named_parameters()}
    decay_names = {named[id(p)] for p in decay["params"]}
    no_decay_names = {named[id(p)] for p in no_decay["params"]}
    # 0-dim scalars are decayed, as in the official code (docs/deviations.md, *Weight decay on scalars*)
    assert {"image_loss.logit_scale", "region_loss.logit_scale", "masker.sim2mask.w",
            "masker.sim2mask.b", "masker.decoder.stages.0.block1.gate"} <= decay_names
    assert "masker.head.proj" in decay_names and "masker.decoder.stages.0.block1.conv.weight" in decay_names
    assert "masker.head.ln.weight" in no_decay_names and "masker.decoder.stages.0.block1.conv.bias" in no_decay_names
    assert not any(n.startswith("clip.") for n in decay_names | no_decay_names)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_optimizer_keeps_block_copies_when_built_in_the_decoder_only_phase(tiny_tcl):
    eventually_trainable = list(tiny_tcl.trainable_parameters())
    tiny_tcl.set_decoder_only(True)
    optimizer = build_optimizer(tiny_tcl, lr=1e-3, names=eventually_trainable)
    count = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    tiny_tcl.set_decoder_only(False)
    assert count == sum(p.numel() for p in tiny_tcl.trainable_parameters().values())
    assert optimizer.defaults["eps"] == 1e-6


def test_scalars_can_be_left_undecayed(tiny_tcl):
    decay, no_decay = parameter_groups(tiny_tcl, weight_decay=0.1, decay_scalars=False)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(p.ndim == 0 for p in no_decay["params"])  # logit scales, Sim2Mask w/b, gates


def test_optimizer_steps_equal_the_per_parameter_adamw_bit_for_bit(tiny_tcl):
    # build_optimizer picks a faster AdamW implementation; the trained weights must not change.
    import copy

    import torch

    models = [tiny_tcl, copy.deepcopy(tiny_tcl)]
    ours = build_optimizer(models[0], lr=1e-3)
    groups = parameter_groups(models[1], 0.05)
    reference = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, foreach=False, fused=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(models[0].trainable_parameters().values(), models[1].trainable_parameters().values(),
                        strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ours.step()
        reference.step()
    for a, b in zip(models[0].trainable_parameters().values(), models[1].trainable_parameters().values(), strict=True):
        assert torch.equal(a, b)
