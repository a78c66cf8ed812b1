"""Benchmark the training stream: decode + augment + tokenise samples/s in one worker process.

Usage:
    python benchmarks/stream_throughput.py                      # 512-px JPEGs, paper augmentation, 224 px
    python benchmarks/stream_throughput.py --augment none --image-size 96 --source-size 96

Writes temporary shards of generated JPEGs (smooth colour fields with shapes, about the size of
real 512-px photos after img2dataset's keep_ratio resize), then reads them through
:class:`tcl.data.stream.TrainingStream` with ``num_workers=0`` so the figure is per worker.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from tcl.data.stream import ShardSource, StreamConfig, TrainingStream, build_loader


def _photo_like(rng: np.random.Generator, size: int) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(xx * rng.uniform(1, 6) + c) * 0.5 + 0.5 for c in range(3)], -1) * 200
    image = Image.fromarray((base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, size - size // 4, 2)
        draw.ellipse([x, y, x + size // 4, y + size // 5], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--source-size", type=int, default=512, help="side of the stored JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="training crop size")
    parser.add_argument("--augment", default="paper", choices=["paper", "crop", "none"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        per_shard = 128
        for shard in range((args.samples + per_shard - 1) // per_shard):
            with wds.TarWriter(str(Path(tmp) / f"bench-{shard:06d}.tar")) as sink:
                for i in range(per_shard):
                    sink.write({"__key__": f"{shard:04d}{i:05d}", "jpg": _photo_like(rng, args.source_size),
                                "txt": f"a photo number {i} with a few coloured shapes"})
        config = StreamConfig(sources=(ShardSource((tmp,)),), batch_size=args.batch_size, num_workers=0,
                              image_size=args.image_size, augment=args.augment)
        loader = iter(build_loader(TrainingStream(config)))
        next(loader)  # warm-up: fills the shuffle buffer's initial part
        batches = args.samples // args.batch_size
        start = time.perf_counter()
        for _ in range(batches):
            next(loader)
        elapsed = time.perf_counter() - start
    rate = batches * args.batch_size / elapsed
    print(f"stream {args.source_size}px JPEG -> {args.image_size}px, augment={args.augment}: "
          f"{rate:.0f} samples/s per worker ({batches * args.batch_size} samples in {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
