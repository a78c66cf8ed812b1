"""Benchmark TCL inference: ``generate_masks`` time and peak memory for a model config and input size.

Usage:
    python benchmarks/generate_masks.py                       # ViT-B/16 (random weights), 448×448
    python benchmarks/generate_masks.py --size 448 896 --classes 171 --no-pamr
    python benchmarks/generate_masks.py --device cuda --batch 8
    python benchmarks/generate_masks.py --compare-reference  # also time tests/reference_official.py

Weights are random (the cost does not depend on them). Peak memory is the process's max RSS on CPU
and ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from tcl import TCLConfig, create_tcl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip config name")
    parser.add_argument("--size", type=int, nargs=2, default=(448, 448), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--no-pamr", dest="pamr", action="store_false")
    parser.add_argument("--kp-w", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-reference", action="store_true",
                        help="also time the functional restatement of the official code (CPU, ViT only)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_tcl(args.model, config=TCLConfig()).eval().to(args.device)
    embed_dim = model.clip.visual.proj.shape[1]
    text = torch.nn.functional.normalize(torch.randn(args.classes, embed_dim, device=args.device), dim=-1)
    images = torch.randn(args.batch, 3, *args.size, device=args.device)

    def run():
        model.generate_masks(images, text, apply_pamr=args.pamr, kp_w=args.kp_w)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    mean, best = _time(run, args.repeats)
    if args.device.startswith("cuda"):
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (GPU)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (max RSS)"
    print(f"{args.model} {args.batch}x{args.size[0]}x{args.size[1]} K={args.classes} pamr={args.pamr} "
          f"kp_w={args.kp_w} threads={torch.get_num_threads()}: mean {mean * 1000:.0f} ms, best {best * 1000:.0f} ms "
          f"per call, {args.batch / mean:.2f} images/s; peak {peak}")
    if args.compare_reference:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tcl.compat import export_official_state_dict
        from tests import reference_official as ref

        clip_state, tcl_state = model.clip.state_dict(), export_official_state_dict(model)
        heads = model.clip.visual.transformer.resblocks[0].attn.num_heads

        def run_reference():
            with torch.no_grad():
                ref.generate_masks(images, text, clip_state, tcl_state, heads, args.pamr, args.kp_w)

        ref_mean, ref_best = _time(run_reference, args.repeats)
        print(f"official-style reference (full 12-block pass, MHA with mask, conv PAMR, pos-emb per call): "
              f"mean {ref_mean * 1000:.0f} ms, best {ref_best * 1000:.0f} ms per call")


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (also fills the positional-embedding cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sum(times) / len(times), min(times)


if __name__ == "__main__":
    main()
