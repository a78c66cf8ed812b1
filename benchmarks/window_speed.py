"""Time one evaluation window and one whole image: the reference path, the fast fp32 path and bf16.

Usage:
    python benchmarks/window_speed.py                      # ViT-B/16 shapes, random weights, CPU, 2 threads
    python benchmarks/window_speed.py --reps 5 --cases window_21_pamr_kp image_375x500 --out window_speed.json

Three variants of the same model run interleaved in one process (reference, fast, bf16, reference,
fast, bf16, ...), so that the machine's load affects them alike; medians over ``--reps``:

* ``reference``: the official computation order, as on main before the fast path: the decoder's direct
  ``nn.Conv2d`` convolutions (``GatedDecoder.reference``) and open_clip's own block forward
  (``tcl.model.fast_blocks.use_fast_blocks(False)``), fp32;
* ``fp32``: the default path (exact reformulations; tcl/model/decoder.py, tcl/model/fast_blocks.py);
* ``bf16``: the default path under bf16 autocast (``precision: bf16``; similarity, PAMR and KP in fp32).

Cases: one 448² window with 21 classes, PAMR + KP (``window_21_pamr_kp``), without PAMR
(``window_21_kp``), with 171 classes and PAMR (``window_171_pamr_kp``), and a 375×500 image through the
benchmark protocol (short side 448, 448-px windows every 224 px, 21 classes, PAMR + KP;
``image_375x500``). Each printed line: case, variant, its median, the reference's, the ratio
variant/reference (lower is faster) with the spread of the per-repetition ratios, the largest
|Δ| of the masks from the reference and the share of label pixels (arg-max) that differ.
The weights are random (cost does not depend on them); the decoder gates are set non-zero so
that the decoder contributes to the masks being compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {  # name -> (kind, classes, pamr)
    "window_21_pamr_kp": ("window", 21, True),
    "window_21_kp": ("window", 21, False),
    "window_171_pamr_kp": ("window", 171, True),
    "image_375x500": ("image", 21, True),
}
VARIANTS = ("reference", "fp32", "bf16")


def build_model(name: str, seed: int = 0):
    import torch

    from tcl import TCLConfig, create_tcl

    torch.manual_seed(seed)
    model = create_tcl(name, config=TCLConfig()).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for stage in model.masker.decoder.stages:
            for block in (stage.block1, stage.block2):
                block.gate.copy_(torch.randn((), generator=generator) * 0.5)
    return model


def make_case(kind: str, classes: int, pamr: bool, dim: int):
    """A function variant → soft masks (window) or scores (image), and its inputs."""
    import torch

    from tcl.inference.segment import protocol_size
    from tcl.inference.sliding import sliding_window_scores

    generator = torch.Generator().manual_seed(classes)
    text = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    if kind == "window":
        image = torch.randn(1, 3, 448, 448, generator=generator)
        return image, text, lambda model, precision: _window(model, image, text, pamr, precision)
    size = protocol_size(375, 500, 448, 2048)
    image = torch.randn(1, 3, *size, generator=generator)
    return image, text, lambda model, precision: sliding_window_scores(
        model, image, text, crop=448, stride=224, apply_pamr=pamr, kp_w=0.3, bg_thresh=0.4, window_batch=16,
        precision=precision)


def _window(model, image, text, pamr: bool, precision: str):
    import torch

    from tcl.runtime import autocast

    with torch.no_grad(), autocast(precision, image.device):
        return model.generate_masks(image, text, apply_pamr=pamr, kp_w=0.3)


def run_variant(model, fn, variant: str):
    from tcl.model.fast_blocks import use_fast_blocks

    model.masker.decoder.reference = variant == "reference"
    try:
        with use_fast_blocks(variant != "reference"):
            start = time.perf_counter()
            out = fn(model, "bf16" if variant == "bf16" else "fp32")
            return time.perf_counter() - start, out.float()
    finally:
        model.masker.decoder.reference = False


def measure(model, case: str, reps: int) -> dict:
    kind, classes, pamr = CASES[case]
    _, _, fn = make_case(kind, classes, pamr, model.clip.text_projection.shape[-1])
    outputs, times = {}, {v: [] for v in VARIANTS}
    for variant in VARIANTS:  # warm-up, and the outputs compared
        outputs[variant] = run_variant(model, fn, variant)[1]
    for _ in range(reps):
        for variant in VARIANTS:
            times[variant].append(run_variant(model, fn, variant)[0])
    reference = outputs["reference"]
    labels = reference.argmax(dim=-3)
    record = {"case": case, "classes": classes, "pamr": pamr, "kind": kind, "variants": {}}
    for variant in VARIANTS:
        ratios = [t / r for t, r in zip(times[variant], times["reference"], strict=True)]
        record["variants"][variant] = {
            "median_s": statistics.median(times[variant]), "times_s": times[variant],
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "max_abs_diff": float((outputs[variant] - reference).abs().max()),
            "label_pixels_differing": float((outputs[variant].argmax(dim=-3) != labels).float().mean()),
        }
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip config name (random weights)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per case (3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--out", type=Path, default=Path("window_speed.json"), help="JSON output")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.threads < 1:
        parser.error("--reps and --threads must be >= 1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from tcl.atomic import write_json_atomic
    from tcl.runtime import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    model = build_model(args.model)
    records = []
    for case in args.cases:
        record = measure(model, case, args.reps)
        records.append(record)
        ref = record["variants"]["reference"]["median_s"]
        for variant in ("fp32", "bf16"):
            v = record["variants"][variant]
            print(f"{case:20s} {variant:5s} {v['median_s']:7.2f} s  reference {ref:7.2f} s  ratio "
                  f"{v['ratio_median']:.3f} [{v['ratio_min']:.3f}, {v['ratio_max']:.3f}]  max|Δ| "
                  f"{v['max_abs_diff']:.2e}  labels differing {100 * v['label_pixels_differing']:.4f}%", flush=True)
    write_json_atomic(args.out, {"model": args.model, "threads": args.threads, "reps": args.reps,
                                 "cpu_native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
                                 "cases": records})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
