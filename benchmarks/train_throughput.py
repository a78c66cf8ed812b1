"""Training throughput: samples/s and peak memory of TCL optimisation steps for a model config and batch.

    python benchmarks/train_throughput.py                               # params.yaml's tiny CLIP, its batch
    python benchmarks/train_throughput.py --clip-model ViT-B-16-quickgelu --image-size 224 \\
        --ie-freeze 11 --decoder-stages 2 --batch 2 --steps 5           # the paper's model, batch 2

Runs :meth:`tcl.train.trainer.Trainer.train_step` (the real step: forward, all six losses, backward,
clipping, AdamW) on random images and captions, so the number is the model's cost without data
loading (see benchmarks/stream_throughput.py for the data side). The CLIP has random weights of the
requested architecture: the cost does not depend on the values. Reports the median step time after
``--warmup`` steps, samples/s, and peak memory (RSS on CPU, allocated memory on GPU). Both phases
are measured: decoder-only (UST) and full masker training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tcl.checkpoint import save_clip  # noqa: E402
from tcl.config import load_params  # noqa: E402
from tcl.model import create_clip  # noqa: E402
from tcl.train.trainer import Trainer  # noqa: E402


def random_batches(tokenizer, batch: int, size: int):
    captions = [f"a photo of a red square number {i}" for i in range(batch)]
    text = tokenizer(captions)
    while True:
        yield {"image": torch.randn(batch, 3, size, size), "text": text, "caption": captions, "worker": 0,
               "consumed": 0, "skipped": {}}


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(trainer: Trainer, batches, steps: int, warmup: int) -> list[float]:
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        trainer.train_step(batches)
        if trainer.runtime.device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--clip-model", help="open_clip model name (default: params.yaml's clip.model)")
    parser.add_argument("--ie-freeze", type=int, help="override model.ie_freeze (11 for ViT-B/16)")
    parser.add_argument("--decoder-stages", type=int, help="override model.decoder_stages (2 for ViT-B/16)")
    parser.add_argument("--image-size", type=int, help="override data.image_size (224 for the paper)")
    parser.add_argument("--batch", type=int, help="per-process batch (default: data.batch_size)")
    parser.add_argument("--precision", default=None, help="override train.precision (auto, fp32, bf16, fp16)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase (10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params)
    clip_model = args.clip_model or params.clip.model
    params = replace(params, clip=replace(params.clip, model=clip_model),
                     model=replace(params.model, ie_freeze=args.ie_freeze or params.model.ie_freeze,
                                   decoder_stages=args.decoder_stages or params.model.decoder_stages),
                     data=replace(params.data, batch_size=args.batch or params.data.batch_size,
                                  image_size=args.image_size or params.data.image_size),
                     train=replace(params.train, precision=args.precision or params.train.precision,
                                   scale_lr=False, lr=1e-5, val_benchmarks=()))
    with tempfile.TemporaryDirectory() as tmp:
        save_clip(Path(tmp) / "clip", create_clip(clip_model), clip_model)
        trainer = Trainer(params, Path(tmp) / "clip", Path(tmp) / "out", metrics_dir=Path(tmp) / "metrics",
                          resume="none", track=False)
        batches = random_batches(trainer.model.tokenizer, params.data.batch_size, params.data.image_size)
        report = {"clip": clip_model if isinstance(clip_model, str) else "params.yaml tiny CLIP",
                  "batch": params.data.batch_size, "image_size": params.data.image_size,
                  "precision": trainer.precision, "device": str(trainer.runtime.device), "threads": args.threads,
                  "trainable_parameters": trainer.derived()["trainable_parameters"]}
        for phase, ust in (("decoder_only", True), ("full", False)):
            trainer.step = 0
            trainer.cfg = replace(trainer.cfg, ust_steps=10**9 if ust else 0, steps=10**9)
            median = statistics.median(measure(trainer, batches, args.steps, args.warmup))
            report[phase] = {"step_s": round(median, 4),
                             "samples_per_s": round(params.data.batch_size / median, 2)}
        report["peak_memory_mib"] = round(peak_memory_mib(trainer.runtime.device), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
