"""Benchmark the text-embedding disk cache: computing a benchmark's class embeddings vs reading them back.

Usage:
    python benchmarks/text_cache.py                       # ViT-B/16 (random weights), 171 COCO-Stuff classes, CPU
    python benchmarks/text_cache.py --classes 21 --repeats 3 --out text_cache.json

Each repeat, interleaved in one process: ``miss`` (an empty cache folder: the 171 × 9 ``custom``
prompts through the text tower, then the entry written) and ``hit`` (the same call on the filled
folder, the text-tower digest recomputed as in a fresh process: hashing the tower's tensors and
reading the file); also ``hit, memoised digest`` (a later evaluation in the same process, as
validation during training). The embeddings must be bit-identical. Prints one comparable line
(case, ours = hit, reference = miss, ratio) and the medians of each; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip config name")
    parser.add_argument("--classes", type=int, default=171, help="first N COCO-Stuff class names (171: all)")
    parser.add_argument("--template", default="custom")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    import torch

    from tcl import TCLConfig, create_tcl
    from tcl.eval import mmseg_datasets
    from tcl.eval import text_cache as tc
    from tcl.model.templates import get_templates

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_tcl(args.model, config=TCLConfig()).eval()
    names = list(mmseg_datasets.DATASETS.get("COCOStuffDataset").METAINFO["classes"])[: args.classes]
    times: dict[str, list[float]] = {"miss": [], "hit": [], "hit_memoised": [], "digest": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            folder = Path(tmp) / f"r{repeat}"
            (computed, record), seconds = _timed(lambda f=folder: tc.text_embedding(model, names, args.template, f))
            assert record["cache"] == "miss", record
            times["miss"].append(seconds)
            tc._DIGESTS.clear()  # as a fresh process: the tower is hashed again
            _, seconds = _timed(lambda: tc.text_tower_digest(model.clip))
            times["digest"].append(seconds)
            tc._DIGESTS.clear()
            (cached, record), seconds = _timed(lambda f=folder: tc.text_embedding(model, names, args.template, f))
            assert record["cache"] == "hit", record
            assert torch.equal(cached, computed), "the cached embedding differs from the computed one"
            times["hit"].append(seconds)
            (_, record), seconds = _timed(lambda f=folder: tc.text_embedding(model, names, args.template, f))
            times["hit_memoised"].append(seconds)
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    medians = {key: statistics.median(values) for key, values in times.items()}
    prompts = len(names) * len(get_templates(args.template))
    case = (f"text embeddings {len(names)} classes x {args.template} ({prompts} prompts) {args.model} "
            f"cpu x{args.threads}")
    ratio = medians["hit"] / medians["miss"]
    spread = (min(times["hit"]) / max(times["miss"]), max(times["hit"]) / min(times["miss"]))
    print(f"{case}: ours (cache hit) {medians['hit']:.3f} s, reference (computed) {medians['miss']:.1f} s, "
          f"ratio {ratio:.4f} (range {spread[0]:.4f}-{spread[1]:.4f}); digest {medians['digest']:.3f} s, "
          f"hit with memoised digest {medians['hit_memoised']:.3f} s")
    if args.out:
        from tcl.atomic import write_json_atomic

        write_json_atomic(args.out, {"case": case, "ours_s": medians["hit"], "reference_s": medians["miss"],
                                     "ratio": ratio, "ratio_range": spread, "medians_s": medians, "runs_s": times})


if __name__ == "__main__":
    main()
