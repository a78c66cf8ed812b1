"""TCL training: one loop for one CPU process, one GPU, or many processes under ``torchrun``.

The recipe is the paper's, as the official code runs it (kakaobrain/tcl bc2b551, main.py
``do_training``): AdamW with decay / no-decay groups, LR scaled linearly by the global batch, linear
warmup then cosine, gradient clipping, mixed precision, and the decoder-only (UST) phase. What the
official loop got wrong is fixed (docs/deviations.md): every eventually trainable parameter is
registered with DDP from the start (*UST gradients*), the data stream and the Gumbel noise resume
exactly (*Non-determinism*), checkpoints are written atomically and hold only what training changes
(*Checkpoint contents*), and nothing needs ``torch.distributed`` when one process runs (*Distributed
mandatory*).

Read :meth:`Trainer.train_step` top to bottom for one optimisation step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..atomic import write_json_atomic
from ..checkpoint import (
    CLIP_WEIGHTS,
    CheckpointError,
    load_saved_clip,
    load_trainable_state,
    read_checkpoint,
    save_checkpoint,
)
from ..data.stream import StreamError, StreamState, TrainingStream, build_loader
from ..errors import TCLError
from ..model import TCL
from ..model.config import TCL_TERMS, TCLConfig
from ..runtime import Runtime, autocast, make_grad_scaler, resolve_precision, start_runtime
from .config import TrainConfig  # re-exported: the train section lives there, torch-free
from .optim import build_optimizer, learning_rate_at, scaled_learning_rates
from .progress import CurveFile, Meters, format_log_line, mask_preview

if TYPE_CHECKING:
    from ..config import Params

__all__ = ["TrainConfig", "TrainingError", "Trainer", "train"]

LATEST, BEST = "latest.pt", "best.pt"


class TrainingError(TCLError, RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


def _has_unused_parameters(model: TCLConfig) -> bool:
    """Whether a training step leaves some trainable parameter without a gradient, which DDP must be told:
    the temperature of a TCL term that is off (``model.tcl_w: 0``, or a term left out of ``model.tcl_terms``)."""
    return set(model.active_tcl_terms) != set(TCL_TERMS)


def _step_seed(seed: int, rank: int, step: int) -> int:
    # The Gumbel noise of a step depends on (seed, rank, step) only, so a resumed run draws the
    # same noise as an uninterrupted one.
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)


class Trainer:
    """Builds everything from ``params`` and runs :meth:`run`. Only rank 0 writes files and tracks."""

    def __init__(self, params: Params, clip_dir: str | Path, out_dir: str | Path, *, resume: str = "auto",
                 metrics_dir: str | Path = "metrics", root: str | Path = ".", track: bool = True,
                 log: Callable[[str], None] = print, runtime: Runtime | None = None) -> None:
        self.params, self.cfg = params, params.train
        self.out_dir, self.metrics_dir, self.root = Path(out_dir), Path(metrics_dir), Path(root)
        self.runtime = runtime or start_runtime()
        self.log = log if self.runtime.is_main else (lambda _message: None)
        rt, cfg = self.runtime, self.cfg

        if rt.is_main:
            for folder in (self.out_dir, self.metrics_dir):
                folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)  # the decoder's initial weights; DDP then broadcasts rank 0's
        clip_dir = Path(clip_dir)
        clip = load_saved_clip(clip_dir)
        self.clip_record = {"model": params.clip.model, "weights": str(clip_dir / CLIP_WEIGHTS)}
        self.model = TCL(clip, params.model).to(rt.device)
        self.frozen_in_ust = self.model.decoder_only_frozen_parameters()
        # All eventually-trainable parameters require grad from the start (see set_decoder_only).
        self.model.set_decoder_only(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

        self.global_batch = params.data.batch_size * rt.world_size * cfg.grad_accum
        self.lr, self.min_lr = (scaled_learning_rates(cfg.lr, cfg.min_lr, self.global_batch) if cfg.scale_lr
                                else (cfg.lr, cfg.min_lr))
        self.optimizer = build_optimizer(self.model, self.lr, cfg.weight_decay, eps=cfg.adam_eps)
        self.precision = resolve_precision(cfg.precision, rt.device)
        self.scaler = make_grad_scaler(self.precision, rt.device)

        self.step, self.best, self.run_id = 0, -math.inf, None
        self.unstored_metrics: list = []  # MLflow metric rows the checkpoint carries, replayed on resume
        self.nonfinite_total = self.nonfinite_in_row = 0
        self.val_metrics: dict[str, float] = {}
        stream_state = self._resume(resume)

        self.ddp = None
        if rt.distributed:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=_has_unused_parameters(params.model))
            if rt.multi_node and rt.device.type == "cuda":
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                self.ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        self.stream = TrainingStream(params.data, rt.rank, rt.world_size, resume=stream_state,
                                     shuffle_captions=params.train.shuffle_captions)
        self.stream_state = self.stream.initial_state()
        self.tracker = self._start_tracking(track)
        self.train_curve = CurveFile(self.metrics_dir / "train_curve.csv", resume_step=self.step)
        self.val_curve = CurveFile(self.metrics_dir / "val_curve.csv", resume_step=self.step)
        self.meters = Meters()
        self._stop_requested = False  # set by a signal on this rank
        self._stopping = False  # agreed by all ranks at the end of a step

    # ----------------------------------------------------------------------------- setup
    def _resume(self, resume: str) -> StreamState | None:
        """Restore weights, optimizer, scaler, step and this rank's stream position (``auto``: from
        ``latest.pt`` when it exists; ``none``: start fresh; otherwise a checkpoint path)."""
        if resume == "none":
            return None
        path = self.out_dir / LATEST if resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            return None
        payload = read_checkpoint(path)
        here = dataclasses.asdict(self.params)
        for section in ("clip", "model"):
            saved = payload["params"].get(section, {})
            changed = sorted(key for key in here[section] if saved.get(key) != here[section][key])
            if changed:
                raise CheckpointError(f"{path} comes from another model config ({section}.{changed[0]} differs): "
                                      "resume with the same clip/model params or use --resume none")
        load_trainable_state(self.model, payload["model"], str(path))
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.step = payload["step"]
        extra = payload.get("extra", {})
        self.best = extra.get("best", -math.inf)
        self.run_id = extra.get("mlflow_run_id")
        self.unstored_metrics = extra.get("mlflow_unstored_metrics", [])
        self.nonfinite_total = extra.get("nonfinite_total", 0)
        self.val_metrics = payload.get("metrics", {}).get("val", {})
        streams = payload.get("stream") or []
        if len(streams) != self.runtime.world_size:
            raise StreamError(f"{path} was written by {len(streams)} process(es); this run has "
                              f"{self.runtime.world_size}: resume with the same world size")
        self.log(f"resumed from {path} at step {self.step}")
        return StreamState.from_dict(streams[self.runtime.rank])

    def _start_tracking(self, track: bool):
        from ..tracking import RunTracker

        enabled = track and self.runtime.is_main
        # Metrics wait for the checkpoint covering their step: the steps a killed run computed after its
        # last checkpoint are computed again after resuming, and must reach MLflow once (RunTracker).
        tracker = RunTracker.start("train", stage="train", resume_run_id=self.run_id, enabled=enabled,
                                   hold_metrics=True)
        if enabled and self.run_id is None:
            tracker.log_params({**dataclasses.asdict(self.params), "derived": self.derived()})
        if tracker.run_id is not None and tracker.run_id == self.run_id:
            tracker.replay_metrics(self.unstored_metrics)  # covered by the checkpoint, maybe never stored
        self.run_id = tracker.run_id
        return tracker

    def derived(self) -> dict:
        """Values computed from the parameters, recorded with the run (the official config.json, main.py ``main``)."""
        return {"world_size": self.runtime.world_size, "global_batch": self.global_batch, "lr": self.lr,
                "min_lr": self.min_lr, "precision": self.precision,
                "trainable_parameters": sum(p.numel() for p in self.trainable)}

    # ----------------------------------------------------------------------------- one step
    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the values to log."""
        cfg, rt = self.cfg, self.runtime
        decoder_only = self.step < cfg.ust_steps
        if decoder_only != self.model.decoder_only:
            self.model.set_decoder_only(decoder_only, freeze=False)
        lr = learning_rate_at(self.step, self.lr, self.min_lr, cfg.warmup_steps, cfg.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_step_seed(cfg.seed, rt.rank, self.step))
        self.optimizer.zero_grad(set_to_none=True)

        network = self.ddp or self.model
        logged: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            self.stream_state.update(batch)
            image = batch["image"].to(rt.device, non_blocking=True)
            text = batch["text"].to(rt.device, non_blocking=True)
            # DDP all-reduces on the last micro-batch only.
            sync = self.ddp.no_sync() if self.ddp is not None and micro < cfg.grad_accum - 1 else nullcontext()
            with sync:
                with autocast(self.precision, rt.device):
                    outputs = network(image, text)
                    loss = TCL.total_loss(outputs) / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for key, value in outputs.items():
                name = key if "loss" in key else f"{key}_area"
                logged[name] = logged.get(name, 0.0) + value.detach().float().mean().item() / cfg.grad_accum
        self._last_batch, self._last_masks = (image, batch["caption"]), outputs["mask"]

        if decoder_only:  # UST: the block copies got (synchronised) gradients; they must not move
            for param in self.frozen_in_ust:
                param.grad = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)  # pre-clip norm, as logged officially
        loss_value = sum(v for k, v in logged.items() if "loss" in k)
        if self._all_finite(loss_value, grad_norm):
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_total += 1
            self.nonfinite_in_row += 1
            if self.nonfinite_in_row >= cfg.max_nonfinite:
                raise TrainingError(f"non-finite loss or gradients in {self.nonfinite_in_row} consecutive steps "
                                    f"(step {self.step}): lower train.lr or train.grad_clip, or use fp32/bf16")
        if self.scaler is not None:
            self.scaler.update()
        self.step += 1
        return {**logged, "loss": loss_value, "grad_norm": grad_norm.item(), "lr": lr}

    def _all_finite(self, loss: float, grad_norm: torch.Tensor) -> bool:
        """Every rank must take the same decision; also carries a stop request across ranks."""
        flags = torch.tensor([float(not math.isfinite(loss) or not torch.isfinite(grad_norm).item()),
                              float(self._stop_requested)], device=self.runtime.device)
        if self.runtime.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._stopping = bool(flags[1].item())
        return not bool(flags[0].item())

    # ----------------------------------------------------------------------------- the run
    def run(self) -> dict:
        """Train until ``train.steps``; validate and checkpoint on schedule; return the summary."""
        cfg = self.cfg
        if self.runtime.is_main:
            write_json_atomic(self.out_dir / "config.json", {**dataclasses.asdict(self.params),
                                                             "derived": self.derived()})
        self.log(f"training {self.derived()['trainable_parameters']:,} parameters for {cfg.steps} steps "
                 f"(from step {self.step}), global batch {self.global_batch} "
                 f"({self.params.data.batch_size} × {self.runtime.world_size} process(es) × {cfg.grad_accum}), "
                 f"lr {self.lr:.3g} → {self.min_lr:.3g}, {self.precision}, {self.runtime.device}")
        if self.stream.missing:
            self.log(f"warning: {len(self.stream.missing)} shard(s) missing (e.g. {self.stream.missing[0]}); "
                     "training on the ones that exist")
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        with self.tracker.paused():  # the loader forks its workers here: no tracking call in flight
            batches = iter(build_loader(self.stream))
        try:
            interval_start, interval_steps = time.perf_counter(), 0
            while self.step < cfg.steps and not self._stopping:
                self.meters.update(self.train_step(batches))
                interval_steps += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log_progress(time.perf_counter() - interval_start, interval_steps)
                    interval_start, interval_steps = time.perf_counter(), 0
                if self.runtime.is_main and cfg.image_every and self.step % cfg.image_every == 0:
                    image, captions = self._last_batch
                    self.tracker.log_image(mask_preview(image, self._last_masks, captions),
                                           f"previews/step_{self.step:06d}.png")
                validate = (cfg.val_every and self.step % cfg.val_every == 0) or self.step == cfg.steps
                if validate and cfg.val_benchmarks:
                    self._validate()
                if validate or self.step % cfg.checkpoint_every == 0 or self._stopping:
                    self._save()
            if self._stopping:
                self.log(f"stopped at step {self.step} on request; resume with --resume auto")
            summary = {**self._summary(), "stopped_early": self._stopping}
            if self.runtime.is_main:
                write_json_atomic(self.metrics_dir / "train.json", summary)
                self.tracker.log_artifact(self.out_dir / (BEST if (self.out_dir / BEST).is_file() else LATEST),
                                          "checkpoints")
            self.tracker.finish("KILLED" if self._stopping else "FINISHED")
            return summary
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, signum, _frame) -> None:
        # Finish the current step, write latest.pt, then exit: a resumed run continues exactly.
        self._stop_requested = True

    def _log_progress(self, seconds: float, steps: int) -> None:
        means = self.meters.means()
        self.meters.reset()
        samples_per_s = steps * self.global_batch / max(seconds, 1e-9)
        skipped_by_reason = self.stream.skip_counts(self.stream_state)
        skipped = sum(skipped_by_reason.values())
        record = {"step": self.step, **means, "samples_per_s": samples_per_s, "data_skipped": skipped,
                  "nonfinite_steps": self.nonfinite_total,
                  "eta_s": (self.cfg.steps - self.step) * seconds / max(steps, 1)}
        self.log(format_log_line(record, self.cfg.steps))
        if self.runtime.is_main:
            self.train_curve.append({k: v for k, v in record.items() if k != "eta_s"})
            self.tracker.log_metrics({f"train/{k}": v for k, v in record.items() if k not in ("step", "eta_s")},
                                     step=self.step)
            self.tracker.log_metrics({f"train/data_skipped.{k}": v for k, v in skipped_by_reason.items()},
                                     step=self.step)

    def _validate(self) -> None:
        """mIoU on the training-split benchmarks. Where a background threshold applies and
        ``evaluate.bg_thresh`` is not fixed, it is chosen on that split from
        ``evaluate.bg_thresh_candidates`` (one scoring pass), as the pipeline does before evaluating."""
        from ..eval import evaluate_benchmark, get_benchmark, sweep_bg_thresh

        config = self.params.evaluate
        results, thresholds = {}, {}
        # Each benchmark's loader forks its workers: no tracking call may be in flight then (RunTracker.paused).
        with self.tracker.paused():
            for name in self.cfg.val_benchmarks:
                if get_benchmark(name).with_background and config.bg_thresh is None:
                    sweep = sweep_bg_thresh(self.model, name, config, root=self.root)
                    results[f"val/{name}_miou"], thresholds[name] = sweep["best_miou"], sweep["best"]
                else:
                    result = evaluate_benchmark(self.model, name, config, root=self.root, print_table=False)
                    results[f"val/{name}_miou"] = result["miou"]
        results["val/avg_miou"] = sum(results.values()) / len(results)
        self.val_metrics = results
        chosen = "".join(f", {name} bg_thresh {value}" for name, value in thresholds.items())
        self.log("validation at step {}: {}{}".format(
            self.step, ", ".join(f"{k.removeprefix('val/')} {v:.2f}" for k, v in results.items()), chosen))
        if self.runtime.is_main:
            self.val_curve.append({"step": self.step, **{k.removeprefix("val/"): v for k, v in results.items()}})
            self.tracker.log_metrics(results, step=self.step)

    def _save(self) -> None:
        streams, digests = [self.stream_state.to_dict()], [self._digest()]
        if self.runtime.distributed:
            local_stream, local_digest = streams[0], digests[0]
            streams, digests = [None] * self.runtime.world_size, [None] * self.runtime.world_size
            dist.all_gather_object(streams, local_stream)
            dist.all_gather_object(digests, local_digest)
            if len(set(digests)) > 1:  # what the official UST bug caused silently (docs/deviations.md)
                raise TrainingError(f"model replicas diverged across processes at step {self.step}")
        metric = self.val_metrics.get(f"val/{self.cfg.val_metric}")
        improved = metric is not None and metric > self.best
        if improved:
            self.best = metric
        if self.runtime.is_main:
            fields = dict(model=self.model, step=self.step, params=dataclasses.asdict(self.params),
                          clip=self.clip_record, optimizer=self.optimizer,
                          scaler=self.scaler.state_dict() if self.scaler else None, stream=streams,
                          metrics={"val": self.val_metrics},
                          extra={"best": self.best, "mlflow_run_id": self.run_id, "replica_digests": digests,
                                 "nonfinite_total": self.nonfinite_total, "derived": self.derived(),
                                 "mlflow_unstored_metrics": self.tracker.unconfirmed_metrics(self.step)})
            save_checkpoint(self.out_dir / LATEST, **fields)
            self.tracker.release(self.step)  # only now: a run killed before this line recomputes these steps
            # Without validation the final model is the best one, as in the release (official configs/tcl.yml:
            # save_topk 0).
            if improved or (not self.cfg.val_benchmarks and self.step == self.cfg.steps):
                save_checkpoint(self.out_dir / BEST, **fields)
                self.log(f"saved {self.out_dir / BEST} (step {self.step}"
                         + (f", {self.cfg.val_metric} {metric:.2f})" if improved else ")"))
            write_json_atomic(self.metrics_dir / "train.json", self._summary())
        self.runtime.barrier()

    def _digest(self) -> str:
        """A hash of every trainable weight: equal on all ranks while the replicas are in sync."""
        digest = hashlib.sha256()
        for param in self.trainable:
            digest.update(param.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _summary(self) -> dict:
        last = self.train_curve.rows[-1] if self.train_curve.rows else {}
        summary = {"step": self.step, **{k: float(v) for k, v in last.items() if k.endswith("loss")},
                   "nonfinite_steps": self.nonfinite_total, "data_skipped": self.stream.skip_counts(self.stream_state)}
        summary.update({k.removeprefix("val/"): v for k, v in self.val_metrics.items()})
        if self.best > -math.inf:
            summary[f"best_{self.cfg.val_metric}"] = self.best
        return summary


def train(params: Params, clip_dir: str | Path, out_dir: str | Path, **kwargs) -> dict:
    """Train TCL with ``params`` on the CLIP in ``clip_dir``; write checkpoints to ``out_dir``."""
    trainer = Trainer(params, clip_dir, out_dir, **kwargs)
    try:
        return trainer.run()
    finally:
        trainer.runtime.close()
