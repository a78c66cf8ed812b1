from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tcl.model.losses import (
    ImageTextContrastiveLoss,
    RegionTextContrastiveLoss,
    area_prior_loss,
    masked_average_pool,
    total_variation,
)


def _with_scale(loss, scale):
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(scale))
    return loss


def test_initial_temperature_is_0_07():
    assert ImageTextContrastiveLoss().scale().item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_image_text_loss_on_hand_computable_embeddings():
    loss = _with_scale(ImageTextContrastiveLoss(), 2.0)
    scale = 2.0
    eye = torch.eye(2, 4)
    # Perfectly aligned orthogonal pairs: each row's logits are [s, 0].
    expected = math.log(1 + math.exp(-scale))
    assert loss(eye * 3.0, eye).item() == pytest.approx(expected, rel=1e-5)
    # Swapped pairs: the label logit is 0 and the other is s.
    swapped = eye.flip(0)
    assert loss(eye, swapped).item() == pytest.approx(math.log(1 + math.exp(scale)), rel=1e-5)


def test_temperature_is_clamped_at_100():
    loss = ImageTextContrastiveLoss()
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    assert loss.scale().item() == 100.0


def test_region_loss_uses_each_texts_own_mask():
    loss = _with_scale(RegionTextContrastiveLoss(), 2.0)
    text = torch.eye(2, 3)
    pooled = torch.zeros(2, 2, 3)
    pooled[0, 0] = text[0]  # image 0 pooled with text 0's mask looks like text 0
    pooled[1, 1] = text[1]
    pooled[0, 1] = text[0]  # image 0 pooled with text 1's mask looks like text 0 (a wrong match)
    pooled[1, 0] = text[1]
    s = 2.0
    # image→text rows: [<p00,t0>, <p01,t1>] = [1, 0]; [<p10,t0>, <p11,t1>] = [0, 1]
    image_side = math.log(1 + math.exp(-s))
    # text→image rows for text t: [<p0t,tt>, <p1t,tt>]: t0 → [1, 0], t1 → [0, 1]
    text_side = math.log(1 + math.exp(-s))
    assert loss(pooled, text).item() == pytest.approx(0.5 * (image_side + text_side), rel=1e-5)
    pooled[0, 1] = text[1]  # now p01 matches t1 too: text 1 cannot tell image 0 from image 1
    assert loss(pooled, text).item() > 0.5 * (image_side + text_side) + 0.1


def test_masked_average_pool_area_and_tv():
    dense = torch.arange(8.0).view(1, 2, 2, 2)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    pooled = masked_average_pool(dense, masks)
    assert torch.allclose(pooled[0, 0], torch.tensor([0.0, 4.0]), atol=1e-5)
    assert torch.allclose(pooled[0, 1], torch.tensor([1.5, 5.5]), atol=1e-5)
    assert area_prior_loss(torch.full((2, 1, 3, 3), 0.1), 0.4).item() == pytest.approx(0.3)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    # horizontal |1-0|,|5-2| → mean 2; vertical |2-0|,|5-1| → mean 3
    assert total_variation(x).item() == pytest.approx(5.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, images, texts, pooled, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = images.shape[0] // world
        local = slice(rank * batch, (rank + 1) * batch)
        image_loss, region_loss = ImageTextContrastiveLoss(), RegionTextContrastiveLoss()
        x = images[local].clone().requires_grad_(True)
        loss_i = image_loss(x, texts[local])
        loss_i.backward()
        scale_grad = image_loss.logit_scale.grad.clone()
        dist.all_reduce(scale_grad)  # DDP averages parameter gradients
        loss_f = region_loss(pooled[local], texts[local]).detach()
        losses = torch.stack([loss_i.detach(), loss_f])
        dist.all_reduce(losses)
        results[rank] = (losses / world, x.grad, scale_grad / world)
    finally:
        dist.destroy_process_group()


def _official_region_loss(pooled, texts, world, scale=1 / 0.07):
    """ExtendedInfoNCE across `world` processes, written out per rank from the official code."""
    pooled, texts = F.normalize(pooled, dim=-1, eps=1e-6), F.normalize(texts, dim=-1, eps=1e-6)
    batch = pooled.shape[0] // world
    losses = []
    for rank in range(world):
        rows = range(rank * batch, (rank + 1) * batch)
        labels = torch.tensor(list(rows))
        logits_image = torch.stack([torch.stack([pooled[b, n] @ texts[n] for n in range(len(texts))])
                                    for b in rows])
        # text t of this rank meets image n pooled with text (B·rank(n) + t): the slice that
        # image n's own process took for its own texts.
        logits_text = torch.stack([
            torch.stack([pooled[n, (n // batch) * batch + t] @ texts[rank * batch + t]
                         for n in range(len(pooled))])
            for t in range(batch)])
        losses.append(0.5 * (F.cross_entropy(scale * logits_image, labels)
                             + F.cross_entropy(scale * logits_text, labels)))
    return torch.stack(losses).mean()


def test_two_processes_gather_negatives_like_the_official_code():
    """Image-level: the mean of per-rank losses is the single-process loss of the global batch and
    each rank's input gradient is world × its gradient. Region-level: the official cross-rank
    semantics, restated independently."""
    torch.manual_seed(0)
    world, batch = 2, 3
    images, texts = torch.randn(world * batch, 8), torch.randn(world * batch, 8)
    pooled = torch.randn(world * batch, world * batch, 8)
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), images, texts, pooled, results), nprocs=world)

    image_loss = ImageTextContrastiveLoss()
    x = images.clone().requires_grad_(True)
    total = image_loss(x, texts)
    total.backward()
    expected_region = _official_region_loss(pooled, texts, world)
    # On one process the official semantics are plain region-level InfoNCE.
    assert RegionTextContrastiveLoss()(pooled, texts).item() == pytest.approx(
        _official_region_loss(pooled, texts, 1).item(), rel=1e-5)
    for rank in range(world):
        losses, x_grad, scale_grad = results[rank]
        local = slice(rank * batch, (rank + 1) * batch)
        assert losses[0].item() == pytest.approx(total.item(), rel=1e-5)
        assert losses[1].item() == pytest.approx(expected_region.item(), rel=1e-5)
        assert torch.allclose(x_grad, world * x.grad[local], atol=1e-5)
        assert scale_grad.item() == pytest.approx(image_loss.logit_scale.grad.item(), rel=1e-4)
