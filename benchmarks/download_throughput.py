"""Benchmark the download stage: samples/s for N generated images served from a loopback HTTP server.

Usage:
    python benchmarks/download_throughput.py                          # 2000 images of 640×480
    python benchmarks/download_throughput.py --n 5000 --processes 4 --threads 32 --size 500 375

The images go through exactly the stage's path (``download_shards`` with ``serve_root``: HTTP
download, decode, resize to --image-size, JPEG re-encode, webdataset shards), so the number is an
upper bound for the CPU side; real downloads add network latency, which img2dataset hides with
threads. Printed: end to end (including process start-up) and steady state (img2dataset's own
per-shard times, first shard start to last shard end).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    # not at the top: spawned workers re-import this file
    from tcl.data.download import DownloadSource, download_shards, work_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images (2000)")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="download_bench_") as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        variants = []
        for seed in range(8):  # a few distinct JPEGs of about a web photo's size (~50-100 KiB), written N times
            channels = [Image.effect_noise(tuple(args.size), 50 + 5 * seed + c) for c in range(3)]
            buffer = io.BytesIO()
            Image.merge("RGB", channels).filter(ImageFilter.GaussianBlur(1.5)).save(buffer, "JPEG", quality=90)
            variants.append(buffer.getvalue())
        lines = []
        for i in range(args.n):
            (root / f"{i:07d}.jpg").write_bytes(variants[i % len(variants)])
            lines.append(f"{i:07d}.jpg\tsynthetic image number {i}")
        url_list = Path(tmp) / "list.tsv"
        url_list.write_text("\n".join(lines) + "\n")
        out = Path(tmp) / "shards"
        source = DownloadSource(root=str(root), list=str(url_list), serve=True, out=str(out), prefix="bench-",
                                image_size=args.image_size, samples_per_shard=args.samples_per_shard,
                                processes=args.processes, threads=args.threads)
        stats = download_shards(source)
        shards = [json.loads(p.read_text()) for p in work_dir(out, "bench-").glob("*_stats.json")]
        steady = sum(s["count"] for s in shards) / (max(s["end_time"] for s in shards) -
                                                    min(s["start_time"] for s in shards))
    mean_kb = sum(len(v) for v in variants) / len(variants) / 1024
    print(f"settings: {args.n} images {args.size[0]}x{args.size[1]} (~{mean_kb:.0f} KiB), image_size "
          f"{args.image_size} keep_ratio, {args.processes} processes x {args.threads} threads, "
          f"{args.samples_per_shard} samples/shard, {os.cpu_count()} CPUs")
    print(f"succeeded {stats['samples_succeeded']}/{stats['samples_attempted']}, "
          f"{stats['shard_bytes'] / 1e6:.1f} MB of shards")
    print(f"end to end: {stats['throughput_samples_per_s']:.1f} samples/s ({stats['wall_time_s']:.1f} s)")
    print(f"steady state: {steady:.1f} samples/s")


if __name__ == "__main__":
    main()
