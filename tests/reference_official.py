"""An independent, functional re-statement of the official TCL inference (kakaobrain/tcl bc2b551).

It restates what the official ``models/tcl/tcl.py`` (``TCL.generate_masks``,
``TCL.build_text_embedding``), ``sclip/model.py`` and ``models/tcl/pamr.py`` compute, as formulas on
plain tensors in the *official* state-dict layout, with none of ``tcl``'s modules: sequence-first
attention with an explicit −inf/0 self-only mask (instead of the package's shortcut), PAMR through
one-hot convolutions as in the original formulation, and so on. Tests compare :mod:`tcl` against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)


def normalize(x, dim):
    return F.normalize(x, dim=dim, eps=1e-6)


def layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], 1e-5)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def attention(x, sd, prefix, heads, mask):
    """nn.MultiheadAttention semantics, sequence-first x [L, N, C]."""
    length, batch, width = x.shape
    qkv = x @ sd[prefix + ".in_proj_weight"].t() + sd[prefix + ".in_proj_bias"]
    q, k, v = qkv.chunk(3, dim=-1)

    def split(t):
        return t.reshape(length, batch * heads, width // heads).transpose(0, 1)

    q, k, v = split(q), split(k), split(v)
    scores = (q / math.sqrt(width // heads)) @ k.transpose(1, 2)
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(-1) @ v
    out = out.transpose(0, 1).reshape(length, batch, width)
    return out @ sd[prefix + ".out_proj.weight"].t() + sd[prefix + ".out_proj.bias"]


def resblock(x, sd, prefix, heads, mask=None):
    x = x + attention(layer_norm(x, sd, prefix + ".ln_1"), sd, prefix + ".attn", heads, mask)
    h = layer_norm(x, sd, prefix + ".ln_2")
    h = quick_gelu(h @ sd[prefix + ".mlp.c_fc.weight"].t() + sd[prefix + ".mlp.c_fc.bias"])
    return x + h @ sd[prefix + ".mlp.c_proj.weight"].t() + sd[prefix + ".mlp.c_proj.bias"]


def self_only_mask(length):
    mask = torch.full((length, length), float("-inf"))
    mask.fill_diagonal_(0.0)
    return mask


def visual_tokens(image, clip, heads, ie_freeze):
    """Sequence-first tokens after block ie_freeze and after the self-only last block (MaskCLIP)."""
    patch = clip["visual.conv1.weight"].shape[-1]
    x = F.conv2d(image, clip["visual.conv1.weight"], stride=patch)
    batch, width, h, w = x.shape
    x = x.reshape(batch, width, h * w).permute(0, 2, 1)
    cls = clip["visual.class_embedding"].expand(batch, 1, width)
    x = torch.cat([cls, x], dim=1)
    pos = clip["visual.positional_embedding"]
    native = round(math.sqrt(pos.shape[0] - 1))
    if (h, w) != (native, native):
        grid = pos[1:].reshape(1, native, native, width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, width)])
    x = layer_norm(x + pos, clip, "visual.ln_pre").permute(1, 0, 2)  # LND
    depth = len({k.split(".")[3] for k in clip if k.startswith("visual.transformer.resblocks.")})
    feats = None
    for i in range(depth):
        mask = self_only_mask(x.shape[0]) if i == depth - 1 else None
        x = resblock(x, clip, f"visual.transformer.resblocks.{i}", heads, mask)
        if i == ie_freeze - 1:
            feats = x
    return feats, x, (h, w)


def decoder(x, tcl):
    stages = sorted({int(k.split(".")[5]) for k in tcl if ".decoder.decoder.net." in k})
    for s in stages:
        x = F.interpolate(x, scale_factor=2)
        for name in ("conv", "conv2"):
            p = f"masker.image_encoder.decoder.decoder.net.{s}.{name}"
            h = x.permute(0, 2, 3, 1)
            h = F.layer_norm(h, h.shape[-1:], tcl[p + ".norm.weight"], tcl[p + ".norm.bias"], 1e-5)
            h = F.gelu(h.permute(0, 3, 1, 2))
            h = F.conv2d(h, tcl[p + ".conv.weight"],
                         tcl[p + ".conv.bias"], padding=1)
            x = x + torch.tanh(tcl[p + ".gate.gate"]) * h
    return x


def _one_hot_kernels(with_centre):
    positions = [(i, j) for i in range(3) for j in range(3) if with_centre or (i, j) != (1, 1)]
    weight = torch.zeros(len(positions), 1, 3, 3)
    for n, (i, j) in enumerate(positions):
        weight[n, 0, i, j] = 1.0
    return weight


def _stencil_conv(x, dilations, with_centre, centre_minus=False):
    batch, channels, height, width = x.shape
    kernel = _one_hot_kernels(with_centre)
    if centre_minus:
        kernel = -kernel
        kernel[:, 0, 1, 1] += 1.0
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        y = F.conv2d(padded, kernel.repeat(channels, 1, 1, 1), groups=channels, dilation=d)
        out.append(y.view(batch, channels, -1, height, width))
    return torch.cat(out, dim=2)


def pamr(image, mask, iterations=10, dilations=PAMR_DILATIONS):
    std = _stencil_conv(image, dilations, with_centre=True).std(dim=2, keepdim=True)
    aff = -_stencil_conv(image, dilations, with_centre=False, centre_minus=True).abs() / (1e-8 + 0.1 * std)
    aff = aff.mean(dim=1, keepdim=True).softmax(dim=2)
    for _ in range(iterations):
        mask = (_stencil_conv(mask, dilations, with_centre=False) * aff).sum(dim=2)
    return mask


def generate_masks(image, text_emb, clip, tcl, heads, apply_pamr, kp_w):
    """Official ``TCL.generate_masks`` (models/tcl/tcl.py) on official-layout weights."""
    backbone = sorted({int(k.split(".")[5]) for k in tcl if ".backbone.transformer.resblocks." in k})
    ie_freeze = backbone[0]
    patch = clip["visual.conv1.weight"].shape[-1]
    H, W = image.shape[-2:]
    pw, ph = (-W) % patch, (-H) % patch
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    image = F.pad(image, pad)
    feats, maskclip, (h, w) = visual_tokens(image, clip, heads, ie_freeze)

    x = feats
    for n, i in enumerate(backbone):
        mask = self_only_mask(x.shape[0]) if n == len(backbone) - 1 else None
        x = resblock(x, tcl, f"masker.image_encoder.backbone.transformer.resblocks.{i}", heads, mask)
    x = x.permute(1, 0, 2)[:, 1:].permute(0, 2, 1).reshape(x.shape[1], -1, h, w)
    x = decoder(x, tcl)
    x = layer_norm(x.permute(0, 2, 3, 1), tcl, "masker.image_encoder.decoder.image_proj.ln")
    v = (x @ tcl["masker.image_encoder.decoder.image_proj.proj"]).permute(0, 3, 1, 2)
    sim = torch.einsum("bchw,nc->bnhw", normalize(v, 1), normalize(text_emb, -1))
    masks = torch.sigmoid(sim * tcl["masker.sim2mask.w"] + tcl["masker.sim2mask.b"])

    if apply_pamr:
        guide = F.interpolate(image, masks.shape[-2:], mode="bilinear", align_corners=True)
        masks = pamr(guide, masks)
    if kp_w:
        dense = layer_norm(maskclip.permute(1, 0, 2), clip, "visual.ln_post") @ clip["visual.proj"]
        dense = dense[:, 1:].permute(0, 2, 1).reshape(dense.shape[0], -1, h, w)
        s = torch.einsum("bchw,nc->bnhw", normalize(dense, 1), normalize(text_emb, -1))
        kp = F.interpolate(torch.sigmoid((s - 0.25) * 10.0), masks.shape[2:], mode="bilinear")
        masks = kp_w * kp + (1.0 - kp_w) * masks
    masks = F.interpolate(masks, image.shape[-2:], mode="bilinear")
    return masks[:, :, pad[2]:pad[2] + H, pad[0]:pad[0] + W]


def encode_text(tokens, clip, heads):
    x = clip["token_embedding.weight"][tokens] + clip["positional_embedding"]
    x = x.permute(1, 0, 2)
    length = x.shape[0]
    causal = torch.full((length, length), float("-inf")).triu_(1)
    depth = len({k.split(".")[2] for k in clip if k.startswith("transformer.resblocks.")})
    for i in range(depth):
        x = resblock(x, clip, f"transformer.resblocks.{i}", heads, causal)
    x = layer_norm(x.permute(1, 0, 2), clip, "ln_final")
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ clip["text_projection"]


def text_embedding(tokens, num_classes, clip, heads):
    """Mean of un-normalised template embeddings, then L2 normalisation (official ``TCL.build_text_embedding``)."""
    emb = encode_text(tokens, clip, heads)
    return normalize(emb.view(num_classes, -1, emb.shape[-1]).mean(dim=1), -1)
