"""Is the synthetic world learnable? Train a tiny CLIP from scratch and measure its dense features.

Usage (after `stages/synthetic.py` and `stages/download.py` have produced data/synthetic/...):
    python benchmarks/synthetic_learnability.py --minutes 5
    python benchmarks/synthetic_learnability.py --minutes 5 --patch-size 8 --width 128 --layers 4
    python benchmarks/synthetic_learnability.py --clip models/clip   # only evaluate prepare_clip's output

Trains an open_clip CLIP (config from params.yaml's ``clip.model``, overridable) with the standard
contrastive loss on the training stream of params.yaml's ``data`` section, and every
``--eval-every`` seconds reports

* retrieval: image→caption top-1 accuracy inside a held-out batch of 64 stream samples;
* dense: the MaskCLIP-style segmentation of the synthetic VOC-layout *val* set — exactly what TCL's
  masker produces at step 0 (``TCL.generate_masks`` without PAMR/KP), with the background
  threshold chosen on the *train* split (never on val) — as mIoU over background + the 8 kinds,
  next to the all-background baseline.

This is a measurement script (numbers go into the issue notes), not a test.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tcl.config import load_params
from tcl.data import TrainingStream, build_loader
from tcl.data.synthetic import KIND_NAMES, benchmark_ids
from tcl.model import TCL, TCLConfig, create_clip

VOC = Path("data/synthetic/VOCdevkit/VOC2012")


def load_split(split: str, size: int):
    names = (VOC / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    images, labels = [], []
    for name in names:
        rgb = Image.open(VOC / "JPEGImages" / f"{name}.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1))
        labels.append(np.asarray(Image.open(VOC / "SegmentationClass" / f"{name}.png")))
    return torch.stack(images), labels


@torch.no_grad()
def dense_scores(model: TCL, images: torch.Tensor, text: torch.Tensor, out_size) -> torch.Tensor:
    masks = torch.cat([model.generate_masks(model.normalize(chunk), text, apply_pamr=False, kp_w=0.0)
                       for chunk in images.split(50)])
    return F.interpolate(masks, size=out_size, mode="bilinear", align_corners=False)


def miou(pred: np.ndarray, gt: np.ndarray, classes: list[int]) -> float:
    valid = gt != 255
    ious = []
    for c in classes:
        p, g = (pred == c) & valid, (gt == c) & valid
        union = (p | g).sum()
        if union:
            ious.append((p & g).sum() / union)
    return float(np.mean(ious)) * 100


def segment(scores: torch.Tensor, threshold: float, ids: list[int]) -> np.ndarray:
    with_bg = torch.cat([torch.full_like(scores[:, :1], threshold), scores], dim=1)
    lookup = np.array([0, *ids])
    return lookup[with_bg.argmax(1).numpy()]


def evaluate(clip, config: TCLConfig, splits, ids) -> dict:
    model = TCL(copy.deepcopy(clip).eval(), config).eval()
    text = model.build_text_embedding(list(KIND_NAMES), template="simple")
    results = {}
    classes = [0, *ids]
    thresholds = np.concatenate([np.linspace(0.05, 0.95, 19), [0.97, 0.98, 0.99, 0.995]])
    (train_images, train_labels), (val_images, val_labels) = splits
    train_gt = np.stack(train_labels)
    train_scores = dense_scores(model, train_images, text, train_gt.shape[1:])
    best = max(thresholds, key=lambda t: miou(segment(train_scores, t, ids), train_gt, classes))
    val_gt = np.stack(val_labels)
    val_scores = dense_scores(model, val_images, text, val_gt.shape[1:])
    results["bg_thresh"] = float(best)
    results["miou"] = miou(segment(val_scores, best, ids), val_gt, classes)
    results["all_background_miou"] = miou(np.zeros_like(val_gt), val_gt, classes)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds between evaluations")
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--pool", choices=["tok", "avg"], help="image embedding: class token or mean of patches")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--clip", type=Path, help="evaluate a saved CLIP (prepare_clip output) instead of training")
    args = parser.parse_args()

    torch.manual_seed(0)
    params = load_params()
    cfg = copy.deepcopy(params.clip.model)
    vision = cfg["vision_cfg"]
    for key, value in (("patch_size", args.patch_size), ("width", args.width), ("layers", args.layers),
                       ("pool_type", args.pool)):
        if value is not None:
            vision[key] = value
    vision["image_size"] = params.data.image_size
    if args.clip is not None:
        from tcl.checkpoint import load_saved_clip

        clip = load_saved_clip(args.clip)
        cfg = json.loads((args.clip / "clip.json").read_text())["model"]
        vision = cfg["vision_cfg"]
        args.minutes = 0.0
    else:
        clip = create_clip(cfg).train()
    depth = vision["layers"]
    tcl_config = TCLConfig(ie_freeze=depth - 1)
    print(f"tiny CLIP: {sum(p.numel() for p in clip.parameters()) / 1e6:.2f} M parameters, vision {vision}")

    from dataclasses import replace

    stream = TrainingStream(replace(params.data, batch_size=args.batch_size))
    batches = iter(build_loader(stream))
    held_out = next(batches)
    ids = [benchmark_ids().voc[name] for name in KIND_NAMES]
    size = params.data.image_size
    splits = (load_split("train", size), load_split("val", size))

    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.1)
    start = time.perf_counter()
    next_eval, step = 0.0, 0
    for step in itertools.count():
        elapsed = time.perf_counter() - start
        if elapsed >= next_eval or elapsed >= args.minutes * 60:
            clip.eval()
            with torch.no_grad():
                image_emb = F.normalize(clip.encode_image(held_out["image"]), dim=-1)
                text_emb = F.normalize(clip.encode_text(held_out["text"]), dim=-1)
                accuracy = (image_emb @ text_emb.t()).argmax(1).eq(torch.arange(len(image_emb))).float().mean()
            dense = evaluate(clip, tcl_config, splits, ids)
            print(f"{elapsed / 60:5.1f} min step {step:5d}: retrieval top-1 {accuracy * 100:5.1f}% | "
                  f"MaskCLIP dense mIoU {dense['miou']:5.1f} (bg {dense['bg_thresh']:.2f}, "
                  f"all-background {dense['all_background_miou']:.1f})", flush=True)
            clip.train()
            next_eval += args.eval_every
            if elapsed >= args.minutes * 60:
                break
        batch = next(batches)
        image_emb, text_emb, scale = clip(batch["image"], batch["text"])
        loss = loss_fn(image_emb, text_emb, scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, np.log(100))


if __name__ == "__main__":
    main()
