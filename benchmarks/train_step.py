"""One TCL training step (forward, losses, backward) of the current code against its previous form, interleaved.

    python benchmarks/train_step.py                        # ViT-B/16 shapes, random weights, batch 4, 224 px
    python benchmarks/train_step.py --repeats 7 --out /tmp/train_step.json
    python benchmarks/train_step.py --profile              # also the top operators of one step of each form

The step is the trainer's (:meth:`tcl.train.trainer.Trainer.train_step` without data, clipping and AdamW):
``TCL.forward`` on normalised images and tokenised captions, ``TCL.total_loss``, ``backward``, gradients
reset to ``None``. The *reference* is the same model run through the forms this project used before the
training-step work (issue 15), restated below and swapped in for its rounds only:

* ``run_block`` called open_clip's block, whose ``nn.MultiheadAttention(batch_first=True)`` under autograd
  runs its in-projection on transposed tokens as a batched matmul of 197 small products (``aten::bmm``);
* ``TCL.encode_image`` ran the whole last CLIP block although class-token pooling reads one row of it;
* the captions went through open_clip's ``encode_text``: all 77 positions (a causal tower pooled at the
  end-of-text token reads none after it), through the same transposed ``bmm`` in-projection;
* the recorded products (masker block and head, the rest of the re-encoding) were ``F.linear`` (BLAS), not
  :class:`tcl.model.fast_blocks.OneDNNLinear`;
* the decoder's stages under autograd were the reference's (nearest upsampling, then two direct 3×3
  convolutions), not :meth:`tcl.model.decoder.UpsampleStage.forward_recorded`'s polyphase first block.

Before timing, both forms are run with the same Gumbel noise and must agree (each loss term within
``--loss-rtol``, each trainable gradient within ``--grad-rtol`` relative L2). Then one warm-up step of each,
``--repeats`` rounds of ours, reference, ours, ...; medians, min–max, and the per-round ratio ours/reference.
Prints one line (case, ours, reference, ratio) and writes ``--out`` (JSON, temp-then-rename). The weights
are random: the cost does not depend on them.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads; 2 shared cores

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tcl.atomic import write_json_atomic  # noqa: E402
from tcl.model import TCL, TCLConfig, clip_towers, create_clip  # noqa: E402
from tcl.model import decoder as decoder_module  # noqa: E402
from tcl.model import tcl as tcl_module  # noqa: E402

__all__ = ["previous_forms", "build", "training_step", "compare_forms", "main"]

CASE = "one training step, batch {batch}, {size} px (forward + losses + backward)"


# ----------------------------------------------------------------------------- the previous forms
def _previous_run_block(block: nn.Module, x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    if batch_first:
        return block(x)
    return block(x.transpose(0, 1)).transpose(0, 1)


def _previous_encode_image(self: TCL, image: torch.Tensor) -> torch.Tensor:
    visual = self.clip.visual
    x, _ = clip_towers.embed_patches(visual, image, self._pos_cache)
    x = clip_towers.run_blocks(visual.transformer.resblocks, x, self_only_last=False, batch_first=self._batch_first)

    def pool(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:].mean(dim=1) if getattr(visual, "pool_type", "tok") == "avg" else tokens[:, 0]

    if getattr(visual, "final_ln_after_pool", False):
        return visual.ln_post(pool(x)) @ visual.proj
    return pool(visual.ln_post(x)) @ visual.proj


def _previous_encode_captions(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return clip.encode_text(tokens, normalize=False)


def _previous_recorded_stage(self: decoder_module.UpsampleStage, x: torch.Tensor) -> torch.Tensor:
    return self(x, reference=True)


@contextlib.contextmanager
def previous_forms() -> Iterator[None]:
    """Run the model through the forms used before the training-step work (see the module docstring)."""
    stage = decoder_module.UpsampleStage
    saved = (clip_towers.run_block, TCL.encode_image, tcl_module.encode_captions, clip_towers._linear,
             stage.forward_recorded)
    clip_towers.run_block, TCL.encode_image = _previous_run_block, _previous_encode_image
    tcl_module.encode_captions, clip_towers._linear = _previous_encode_captions, F.linear
    stage.forward_recorded = _previous_recorded_stage
    try:
        yield
    finally:
        (clip_towers.run_block, TCL.encode_image, tcl_module.encode_captions, clip_towers._linear,
         stage.forward_recorded) = saved


# ----------------------------------------------------------------------------- the step
def build(clip_model: str, ie_freeze: int, decoder_stages: int, batch: int, size: int, seed: int = 0):
    """The model (train mode) and one batch of normalised images and tokenised captions."""
    torch.manual_seed(seed)
    model = TCL(create_clip(clip_model), TCLConfig(ie_freeze=ie_freeze, decoder_stages=decoder_stages)).train()
    generator = torch.Generator().manual_seed(seed + 1)
    image = model.normalize(torch.rand(batch, 3, size, size, generator=generator))
    text = model.tokenize([f"a photo of thing number {i} on a table" for i in range(batch)])
    return model, image, text


def training_step(model: TCL, image: torch.Tensor, text: torch.Tensor, seed: int = 0):
    """Forward, total loss, backward, as the trainer runs them; returns (loss terms, gradients)."""
    torch.manual_seed(seed)  # the Gumbel noise, as the trainer seeds each step
    outputs = model(image, text)
    TCL.total_loss(outputs).backward()
    losses = {k: v.detach() for k, v in outputs.items() if "loss" in k}
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grads[name] = param.grad
            param.grad = None
    return losses, grads


def compare_forms(model: TCL, image: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Largest relative difference of a loss term and of a gradient between the two forms."""
    ours = training_step(model, image, text)
    with previous_forms():
        reference = training_step(model, image, text)
    loss = max(float((ours[0][k] - v).abs() / v.abs().clamp_min(1e-12)) for k, v in reference[0].items())
    if set(ours[1]) != set(reference[1]):
        raise SystemExit("train_step: the two forms give gradients to different parameters")
    grad = {k: float((ours[1][k] - v).norm() / v.norm().clamp_min(1e-12)) for k, v in reference[1].items()}
    worst = max(grad, key=grad.get)
    return {"loss_max_rel": loss, "grad_max_rel_l2": grad[worst], "grad_worst": worst}


def _timed(model: TCL, image: torch.Tensor, text: torch.Tensor) -> float:
    start = time.perf_counter()
    training_step(model, image, text)
    return time.perf_counter() - start


def profile_table(model: TCL, image: torch.Tensor, text: torch.Tensor, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        training_step(model, image, text)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--clip-model", default="ViT-B-16-quickgelu", help="open_clip model name (random weights)")
    parser.add_argument("--ie-freeze", type=int, default=11)
    parser.add_argument("--decoder-stages", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of each form (5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loss-rtol", type=float, default=1e-5)
    parser.add_argument("--grad-rtol", type=float, default=1e-3)
    parser.add_argument("--profile", action="store_true", help="print the top operators of one step of each form")
    parser.add_argument("--rows", type=int, default=20, help="operators shown by --profile (20)")
    parser.add_argument("--out", type=Path, default=Path("train_step.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 2:
        parser.error("--repeats must be ≥ 1 and --batch ≥ 2 (the losses contrast the captions of a batch)")
    torch.set_num_threads(args.threads)

    model, image, text = build(args.clip_model, args.ie_freeze, args.decoder_stages, args.batch, args.image_size)
    agreement = compare_forms(model, image, text)
    if agreement["loss_max_rel"] > args.loss_rtol or agreement["grad_max_rel_l2"] > args.grad_rtol:
        raise SystemExit(f"train_step: the forms disagree ({agreement}); not timed")
    if args.profile:
        print("ours:\n" + profile_table(model, image, text, args.rows))
        with previous_forms():
            print("reference:\n" + profile_table(model, image, text, args.rows))

    ours, reference = [], []
    _timed(model, image, text)
    with previous_forms():
        _timed(model, image, text)
    for _ in range(args.repeats):
        ours.append(_timed(model, image, text))
        with previous_forms():
            reference.append(_timed(model, image, text))
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    case = CASE.format(batch=args.batch, size=args.image_size)
    report = {"case": case, "ours_s": _spread(ours), "reference_s": _spread(reference), "ratio": _spread(ratios),
              "rounds": {"ours_s": ours, "reference_s": reference}, "agreement": agreement,
              "clip": args.clip_model, "ie_freeze": args.ie_freeze, "decoder_stages": args.decoder_stages,
              "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    print(f"{case}: ours {report['ours_s']['median']:.3f} s, reference {report['reference_s']['median']:.3f} s, "
          f"ratio {report['ratio']['median']:.3f} (min {report['ratio']['min']:.3f}, max {report['ratio']['max']:.3f}; "
          f"{args.repeats} rounds)")
    write_json_atomic(args.out, report)
    return report


if __name__ == "__main__":
    main()
