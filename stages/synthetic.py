"""DVC stage: generate the built-in synthetic world, the default data set (no downloads).

    python stages/synthetic.py --out data/synthetic
    python stages/synthetic.py --params params.yaml --out data/synthetic   # settings from its synthetic: section
    python stages/synthetic.py --measure 2000          # generation throughput only, then exit

Writes <out>/corpus/ (images/<shard>/<id>.jpg and pairs.tsv: caption<TAB>url, urls relative to
corpus/), <out>/VOCdevkit/VOC2012/ and <out>/coco_stuff164k/ (held-out evaluation sets laid out like
the real benchmarks) and <out>/manifest.json. Deterministic from --seed; built in a hidden folder
beside <out> and renamed into place at the end; a rerun with the same parameters is a no-op.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import StageParser, run_stage  # noqa: E402
from tcl.data.synthetic import SyntheticParams, generate_synthetic, measure_throughput  # noqa: E402

PROG = "synthetic"


def main(argv: list[str] | None = None) -> int:
    defaults = SyntheticParams()
    parser = StageParser(PROG, __doc__)
    parser.add_argument("--out", type=Path, help="output folder (required unless --measure)")
    parser.add_argument("--params", type=Path, default=None,
                        help="take the defaults of the options below from this file's synthetic: section "
                             "(the whole file is validated first, as every pipeline stage does)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (%(default)s)")
    parser.add_argument("--pairs", type=int, default=defaults.pairs, help="image-caption pairs (%(default)s)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="corpus image side in px (%(default)s)")
    parser.add_argument("--eval-image-size", type=int, default=defaults.eval_image_size,
                        help="evaluation image side in px (%(default)s)")
    parser.add_argument("--val-images", type=int, default=defaults.val_images,
                        help="val images per benchmark (%(default)s)")
    parser.add_argument("--train-images", type=int, default=defaults.train_images,
                        help="train images per benchmark (%(default)s)")
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects,
                        help="objects per image, 1..3 (%(default)s)")
    parser.add_argument("--min-object-frac", type=float, default=defaults.min_object_frac,
                        help="smallest visible object area as a fraction of the image (%(default).4f)")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality, help="JPEG quality (%(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (all cores)")
    parser.add_argument("--measure", type=int, metavar="N", default=None,
                        help="only measure corpus generation throughput on N pairs in a temporary folder")
    args = parser.parse_args(argv)

    def work() -> int:
        nonlocal args
        if args.params is not None:
            from dataclasses import asdict

            from tcl.config import load_params

            parser.set_defaults(**asdict(load_params(args.params).synthetic))
            args = parser.parse_args(argv)
        if args.measure is not None:
            result = measure_throughput(args.measure, args.image_size, args.workers, args.seed)
            print(f"{result['pairs']} pairs of {args.image_size} px in {result['seconds']:.1f} s: "
                  f"{result['pairs_per_s']:.0f} pairs/s with {args.workers} worker(s)")
            return 0
        if args.out is None:
            parser.error("--out is required")
        params = SyntheticParams(seed=args.seed, pairs=args.pairs, image_size=args.image_size,
                                 eval_image_size=args.eval_image_size, val_images=args.val_images,
                                 train_images=args.train_images, max_objects=args.max_objects,
                                 min_object_frac=args.min_object_frac, jpeg_quality=args.jpeg_quality)
        generate(args.out, params, args.workers)
        return 0

    def left_as_it_was() -> str:
        return f"{args.out} left as it was" if args.out is not None else ""

    return run_stage(PROG, work, after_interrupt=left_as_it_was)


def generate(out: Path, params: SyntheticParams, workers: int) -> None:
    """Generate (or find up to date) the world in ``out``, with a progress bar, and say what was done."""
    from tcl.atomic import output_errors

    bars: list[tqdm] = []  # created on the first report: checks that fail early print no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="img", desc="synthetic world", dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    try:
        # the generator writes its files itself: a full disk or a folder it may not write is one line too
        with output_errors(out):
            result = generate_synthetic(out, params, workers, progress)
    finally:
        for bar in bars:
            bar.close()
    if result["skipped"]:
        print(f"{out} is up to date (same parameters): nothing to do")
    else:
        counts = result["manifest"]["counts"]
        print(f"wrote {counts['corpus_pairs']} pairs, {params.val_images} val + {params.train_images} train images "
              f"per benchmark to {out} in {result['seconds']:.1f} s ({result['pairs_per_s']:.0f} pairs/s overall)")


if __name__ == "__main__":
    sys.exit(main())
