"""Side-by-side timing of this project against the official TCL code (kakaobrain/tcl bc2b551), run unchanged.

Usage:
    python benchmarks/official_compare.py --official /tmp/official-tcl
    python benchmarks/official_compare.py --official PATH --cases window,train --repeats 7 --precision fp32
    PYTHONPATH=/path/to/other/worktree python benchmarks/official_compare.py --official PATH   # time that tcl

``--official`` is a checkout (or ``git archive``) of https://github.com/kakaobrain/tcl; its model is imported
as it is, with three import shims put into ``sys.modules`` by this script and nothing else changed:
``mmcv.utils`` (only ``Registry``, here a 15-line registry: mmcv 1.x is not installable next to this
project), ``utils`` (only ``get_logger``: the official ``utils`` package pulls mmcv.runner and termcolor for
training helpers the model never calls) and, only where setuptools no longer ships it, ``pkg_resources``
(only ``packaging``, for sclip's version check). Its real dependencies (einops, omegaconf, ftfy, regex) must
be importable.

Both models get the same deterministic weights at the chosen shapes (random: the cost does not depend on
them): our CLIP and TCL are built with ``torch.manual_seed(0)``, the CLIP is written in OpenAI's layout
to a temporary file for the official ``sclip.load`` to build its towers from, and then every official
parameter is loaded from our model (:func:`tcl.compat.export_official_state_dict`, strict). Before
anything is timed each case checks that the two compute the same thing (masks within
:data:`MASK_ATOL`, arg-max labels identical; losses and gradients within :data:`LOSS_RTOL` /
:data:`GRAD_RTOL`); a case that disagrees in fp32 is reported and not timed. bf16 (our autocast) is
compared with the official fp32 and its agreement recorded, not enforced.

Cases (``--cases``): ``window`` one 448² window, 21 classes, PAMR + KP (official ``TCL.generate_masks``,
``apply_pamr=True, kp_w=0.3``); ``window-nopamr`` the same without PAMR; ``window-171`` 171 classes with
PAMR; ``image`` a whole 375×500 image at the protocol size (short side 448), 448 px windows every 224 px,
20 classes and the 0.4 background, labels at 375×500 (the official evaluation wrapper: mmseg 0.x's
``slide_inference`` around ``TCLSegInference.encode_decode``, one window per forward, restated below since
mmseg 0.x is not installable here; ours: :func:`tcl.inference.sliding.sliding_window_scores`);
``train`` one training step, batch 4, 224 px: forward, losses, backward (official ``TCL.forward`` in a
one-process gloo group; ours ``TCL.forward`` + ``TCL.total_loss`` as the trainer calls them).

One process, ``--threads`` torch threads (2), ``OMP_WAIT_POLICY=PASSIVE``; a warm-up run of every side,
then ``--repeats`` rounds of ours (each precision), official, ours, official...; medians, min–max, and the
ratio ours/official of each round (median and min–max). Prints one line per case and precision and writes
``--out`` (JSON, temp-then-rename).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import importlib.util
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["UsageError", "Registry", "Shapes", "FULL", "TINY", "CASES", "CASE_DESCRIPTIONS", "MedianNoise",
           "check_official", "missing_dependencies", "official_shims", "import_official", "openai_clip_state",
           "official_model_config", "our_config", "build_models", "mmseg_boxes", "measure", "main"]

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_URL = "https://github.com/kakaobrain/tcl"
OFFICIAL_COMMIT = "bc2b551"
MIRROR = Path("/work/.mirror/kakaobrain+tcl/repo")
#: Files whose presence makes a folder a kakaobrain/tcl checkout, and which this script imports or reads.
OFFICIAL_FILES = ("models/tcl/tcl.py", "models/builder.py", "sclip/model.py", "us/dist_utils.py", "configs/tcl.yml")
#: sha256 of models/tcl/{tcl,masker,modules,pamr}.py + sclip/model.py at bc2b551: timings of other code are
#: still written, with a warning.
OFFICIAL_FINGERPRINT = "c9dc82c55b3f1d17966607dcef5fe0f03f5e9341a714ed9147d48bc4ef91b482"
_FINGERPRINTED = ("models/tcl/tcl.py", "models/tcl/masker.py", "models/tcl/modules.py", "models/tcl/pamr.py",
                  "sclip/model.py")
#: The official code's own dependencies (not shimmed): import name → pip name.
OFFICIAL_DEPENDENCIES = {"einops": "einops", "omegaconf": "omegaconf", "ftfy": "ftfy", "regex": "regex"}
#: Top-level names the official code is imported under; they must not already be taken in this process.
OFFICIAL_PACKAGES = ("models", "sclip", "us", "utils")
MASK_ATOL = 1e-4  # fp32 masks in [0, 1]: two implementations' rounding, not a different computation
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3  # relative L2 difference of each trainable parameter's gradient
PRECISIONS = ("fp32", "bf16")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "official_compare.json"


#: name → what it times (the builders are in CASES, below the imports this front part does without).
CASE_DESCRIPTIONS = {
    "window": "one 448² window, 21 classes, PAMR + KP",
    "window-nopamr": "same without PAMR",
    "window-171": "171 classes with PAMR",
    "image": "whole 375×500 image, sliding windows",
    "train": "one training step, batch 4, 224 px (forward + losses + backward)",
}


class UsageError(Exception):
    """Bad input: one line naming the problem and the fix, exit status 2."""


def missing_dependencies(dependencies: dict[str, str] = OFFICIAL_DEPENDENCIES) -> list[str]:
    """The pip names of the official code's dependencies that cannot be imported here."""
    return [pip for module, pip in dependencies.items() if importlib.util.find_spec(module) is None]


def check_official(path: str | os.PathLike) -> Path:
    """``path`` as a kakaobrain/tcl checkout whose dependencies are importable, or :class:`UsageError`."""
    root = Path(path).expanduser()
    fetch = (f"extract it: git --git-dir={MIRROR} archive {OFFICIAL_COMMIT} | tar -x -C {root}" if MIRROR.is_dir()
             else f"git clone {OFFICIAL_URL} {root} && git -C {root} checkout {OFFICIAL_COMMIT}")
    if not root.is_dir():
        raise UsageError(f"--official {path}: no such folder; {fetch}")
    absent = missing_dependencies(OFFICIAL_DEPENDENCIES)
    if absent:
        raise UsageError(f"the official code needs {', '.join(absent)}, not importable here: "
                         f"pip install {' '.join(absent)} (or pip install --target DIR and add DIR to PYTHONPATH)")
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        raise UsageError(f"--official {path} is not a kakaobrain/tcl checkout (no {missing[0]}); point it at a "
                         f"checkout of {OFFICIAL_URL} ({OFFICIAL_COMMIT})")
    taken = [name for name in OFFICIAL_PACKAGES if name in sys.modules]
    if taken:
        raise UsageError(f"modules named {', '.join(taken)} are already imported in this process; run the script "
                         "in a fresh interpreter")
    return root


# ----------------------------------------------------------------------------- command line (standard library only)
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Cases: " + "; ".join(f"{k}: {v}" for k, v in CASE_DESCRIPTIONS.items()))
    parser.add_argument("--official", required=True, metavar="PATH", help="a checkout of kakaobrain/tcl")
    parser.add_argument("--cases", default=",".join(CASE_DESCRIPTIONS), help="comma-separated (default: all)")
    parser.add_argument("--precision", default=",".join(PRECISIONS),
                        help="ours: fp32, bf16 or both comma-separated (the official code runs fp32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a check of the harness, not a benchmark)")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASE_DESCRIPTIONS]
    if unknown or not args.cases:
        raise UsageError(f"--cases: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(CASE_DESCRIPTIONS)}")
    args.precision = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    if not args.precision or any(p not in PRECISIONS for p in args.precision):
        raise UsageError(f"--precision {','.join(args.precision)}: choose fp32, bf16 or fp32,bf16")
    if args.repeats < 1 or args.threads < 1:
        raise UsageError("--repeats and --threads must be >= 1")
    return args


if __name__ == "__main__":
    # Bad arguments are answered before torch loads (seconds, not the minute a loaded machine takes), and
    # OpenMP reads OMP_WAIT_POLICY when torch loads: with 2 shared cores, spinning threads steal the other side's time.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        check_official(parse_args().official)
    except UsageError as _err:
        print(f"official_compare: {_err}", file=sys.stderr)
        sys.exit(2)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

if importlib.util.find_spec("tcl") is None:  # PYTHONPATH or an installed tcl wins; else this checkout's
    sys.path.append(str(REPO))

from tcl.atomic import write_json_atomic  # noqa: E402
from tcl.compat.official import export_official_state_dict, official_to_tcl_key  # noqa: E402
from tcl.inference.scores import labels_at  # noqa: E402
from tcl.inference.segment import protocol_size  # noqa: E402
from tcl.inference.sliding import sliding_window_scores  # noqa: E402
from tcl.model.factory import OPENAI_VIT_B16, create_clip  # noqa: E402
from tcl.model.tcl import TCL, TCLConfig  # noqa: E402
from tcl.runtime import autocast  # noqa: E402


# ----------------------------------------------------------------------------- importing the official code
class Registry:
    """The part of mmcv's ``Registry`` the official model uses: ``register_module()`` and ``build(cfg)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.modules: dict[str, type] = {}

    def register_module(self, name: str | None = None) -> Callable[[type], type]:
        def register(cls: type) -> type:
            key = name or cls.__name__
            if key in self.modules:
                raise KeyError(f"{key} is already registered in {self.name}")
            self.modules[key] = cls
            return cls
        return register

    def build(self, cfg: dict[str, Any]) -> Any:
        cfg = dict(cfg)
        kind = cfg.pop("type")
        if kind not in self.modules:
            raise KeyError(f"{kind} is not registered in {self.name} (known: {', '.join(sorted(self.modules))})")
        return self.modules[kind](**cfg)


def _get_logger(*_args: Any, **_kwargs: Any) -> logging.Logger:
    return logging.getLogger("official-tcl")


def official_shims() -> dict[str, types.ModuleType]:
    """The modules put into ``sys.modules`` before the official model is imported (see the module docstring)."""
    mmcv_utils = types.ModuleType("mmcv.utils", "shim: mmcv's Registry for kakaobrain/tcl models/builder.py")
    mmcv_utils.Registry = Registry
    utils = types.ModuleType("utils", "shim: kakaobrain/tcl utils.get_logger without its training helpers")
    utils.get_logger = _get_logger
    shims = {"mmcv.utils": mmcv_utils, "utils": utils}
    try:
        with warnings.catch_warnings():  # setuptools 80 warns that pkg_resources is going away
            warnings.simplefilter("ignore")
            from pkg_resources import packaging  # noqa: F401 (sclip/clip.py's import, setuptools < 81)
    except ImportError:
        import packaging.version

        pkg_resources = types.ModuleType("pkg_resources", "shim: packaging for sclip/clip.py's version check")
        pkg_resources.packaging = packaging
        shims["pkg_resources"] = pkg_resources
    return shims


def fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for name in _FINGERPRINTED:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def import_official(root: Path) -> types.SimpleNamespace:
    """Import the official ``models`` (registers TCL), ``sclip`` and ``us`` from ``root`` behind the shims."""
    sys.modules.update(official_shims())
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    models = importlib.import_module("models")
    for name in ("models", "sclip", "us"):
        origin = Path(sys.modules[name].__file__).resolve()
        if root.resolve() not in origin.parents:
            raise UsageError(f"'{name}' was imported from {origin}, not from --official {root}; "
                             "run from a folder without such a package")
    return types.SimpleNamespace(models=models, sclip=importlib.import_module("sclip"),
                                 us=importlib.import_module("us"))


# ----------------------------------------------------------------------------- same weights on both sides
@dataclass(frozen=True)
class Shapes:
    """The sizes of every case: ``FULL`` is the paper's (ViT-B/16, 448 px windows); ``TINY`` tests the harness."""

    clip: str | dict = OPENAI_VIT_B16
    ie_freeze: int = 11
    window: int = 448
    classes: int = 21
    many_classes: int = 171
    image: tuple[int, int] = (375, 500)
    image_classes: int = 20
    bg_thresh: float = 0.4
    short_side: int = 448
    long_side: int = 2048
    crop: int = 448
    stride: int = 224
    kp_w: float = 0.3
    train_batch: int = 4
    train_size: int = 224


FULL = Shapes()
#: A CLIP both builders accept (sclip infers heads as width // 64) and the smallest windows with two stages.
TINY = Shapes(clip=dict(embed_dim=32, vision_cfg=dict(image_size=64, patch_size=16, width=64, head_width=64, layers=2),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                        quick_gelu=True),
              ie_freeze=1, window=64, classes=3, many_classes=5, image=(50, 70), image_classes=3, short_side=64,
              long_side=256, crop=64, stride=32, train_batch=2, train_size=32)


def openai_clip_state(clip: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An open_clip CLIP's weights in OpenAI's layout (what ``sclip.model.build_model`` and ``sclip.load`` read).

    open_clip keeps OpenAI's key names for these models; its extra entries (``logit_bias``, buffers such
    as the causal ``attn_mask``) are not OpenAI's and are left out."""
    state = clip.state_dict()
    keys = [k for k in state if not k.endswith("attn_mask") and k != "logit_bias"]
    if "visual.proj" not in keys or "text_projection" not in keys or "visual.class_embedding" not in keys:
        raise ValueError("not an OpenAI-layout ViT CLIP (no visual.proj / text_projection / visual.class_embedding)")
    return {k: state[k].detach().clone().contiguous() for k in keys}


def official_model_config(root: Path, clip_file: Path, ie_freeze: int | None = None) -> dict[str, Any]:
    """The ``model:`` section of the official configs/tcl.yml, building its CLIP from ``clip_file``."""
    cfg = yaml.safe_load((root / "configs" / "tcl.yml").read_text())["model"]
    cfg["clip_model"] = str(clip_file)
    if ie_freeze is not None:
        cfg["ie_freeze"] = ie_freeze
    return cfg


def our_config(official_cfg: dict[str, Any]) -> TCLConfig:
    """Our model section for the official one (every hyper-parameter that shapes the computation)."""
    masker = official_cfg["masker"]
    if not official_cfg["ie_ignore_last_attn"] or masker["decoder"]["type"] != "GDecoder":
        raise UsageError("the official config is not the released TCL one (ie_ignore_last_attn, GDecoder)")
    return TCLConfig(ie_freeze=official_cfg["ie_freeze"], decoder_stages=masker["decoder"]["n_layers"],
                     sim2mask_init_w=masker["sim2mask"]["init_w"], sim2mask_init_b=masker["sim2mask"]["init_b"],
                     gumbel_tau=masker["sim2mask"]["gumbel_tau"], tcl_w=official_cfg["tcl_w"],
                     area_w=official_cfg["area_w"], tv_w=official_cfg["tv_w"])


def build_models(official: types.SimpleNamespace, root: Path, shapes: Shapes, seed: int = 0):
    """(ours, theirs): our TCL with seeded random weights and the official TCL holding exactly those weights."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="official-compare-") as tmp:
        clip = create_clip(shapes.clip)
        clip_file = Path(tmp) / "clip.pt"
        torch.save(openai_clip_state(clip), clip_file)
        cfg = official_model_config(root, clip_file, shapes.ie_freeze if shapes is not FULL else None)
        ours = TCL(clip, our_config(cfg))
        from omegaconf import OmegaConf

        theirs = official.models.build_model(OmegaConf.create(cfg))
    # The official sclip.load passed the CLIP through fp16; every parameter now gets our fp32 value.
    result = theirs.load_state_dict(export_official_state_dict(ours, include_clip=True), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"our weights do not cover the official model: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    theirs.eval()  # the official TCL.train override returns None, so no chaining
    return ours.eval(), theirs


# ----------------------------------------------------------------------------- the cases
@dataclass
class Sides:
    """What one case runs: ``ours(precision)`` and ``official()`` return comparable outputs; ``agreement``
    measures them and ``problem`` says why an fp32 pair is not the same computation (None when it is)."""

    ours: Callable[[str], Any]
    official: Callable[[], Any]
    agreement: Callable[[Any, Any], dict[str, float]]
    problem: Callable[[dict[str, float]], str | None]
    check_mode: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # around the checked runs


def _image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A smooth random image batch (ImageNet-normalised scale) so PAMR and the masks see structure."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(shape[0], 3, max(2, shape[2] // 32), max(2, shape[3] // 32), generator=generator)
    return F.interpolate(coarse, size=shape[2:], mode="bilinear", align_corners=False) \
        + 0.3 * torch.randn(shape, generator=generator)


def _text(classes: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)


def _label_agreement(ours_labels: torch.Tensor, theirs_labels: torch.Tensor, theirs_scores: torch.Tensor,
                     max_abs_diff: float) -> dict[str, float]:
    """Identical arg-max labels, and the flips that are not ties: a pixel whose official top-two scores are
    more than 2·max|Δ| apart cannot change its label by rounding alone."""
    flips = ours_labels != theirs_labels
    top = theirs_scores.float().topk(2, dim=-3).values if theirs_scores.shape[-3] > 1 else None
    margin = (top.select(-3, 0) - top.select(-3, 1)) if top is not None else torch.full_like(flips, 1.0, dtype=float)
    return {"labels_identical": 1.0 - flips.float().mean().item(), "label_flips": int(flips.sum()),
            "label_flips_beyond_ties": int((flips & (margin > 2 * max_abs_diff)).sum()),
            "distinct_labels": int(theirs_labels.unique().numel())}


def _mask_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    ours, theirs = ours.float(), theirs.float()
    diff = (ours - theirs).abs().max().item()
    return {"max_abs_diff": diff, **_label_agreement(ours.argmax(-3), theirs.argmax(-3), theirs, diff),
            "binary_identical": ((ours > 0.5) == (theirs > 0.5)).float().mean().item()}


def _mask_problem(agreement: dict[str, float]) -> str | None:
    """fp32 must be the same computation: masks within MASK_ATOL and every label identical except at exact ties
    (random weights make a few pixels' top two classes equal to 1e-6; an exact rewrite may flip those)."""
    if agreement["max_abs_diff"] > MASK_ATOL:
        return f"masks differ by {agreement['max_abs_diff']:.2e} > {MASK_ATOL:g}"
    if agreement["label_flips_beyond_ties"]:
        return (f"{agreement['label_flips_beyond_ties']} labels differ where the top two classes are more than "
                f"2·{agreement['max_abs_diff']:.1e} apart")
    return None


def window_case(ours: TCL, theirs, shapes: Shapes, classes: int, pamr: bool) -> Sides:
    image = _image((1, 3, shapes.window, shapes.window), seed=1)
    text = _text(classes, ours.clip.visual.proj.shape[1], seed=2)

    def run_ours(precision: str) -> torch.Tensor:
        # One window through the evaluation's own window code, which owns the precision switch.
        return sliding_window_scores(ours, image, text, crop=shapes.window, stride=shapes.window, apply_pamr=pamr,
                                     kp_w=shapes.kp_w, bg_thresh=None, window_batch=1, precision=precision)

    def run_official() -> torch.Tensor:
        return theirs.generate_masks(image, text, apply_pamr=pamr, kp_w=shapes.kp_w)[0][0]

    return Sides(run_ours, run_official, _mask_agreement, _mask_problem)


def mmseg_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, x1, y2, x2) of mmseg 0.x ``slide_inference``'s windows, in its loop order."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride + crop, height), min(col * stride + crop, width)
            boxes.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
    return boxes


def _official_slide_labels(theirs, image: torch.Tensor, text: torch.Tensor, shapes: Shapes,
                           size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmseg 0.x ``EncoderDecoder.slide_inference`` + ``simple_test`` around the official
    ``TCLSegInference.encode_decode`` (segmentation/evaluation/tcl_seg.py): one window per forward, the
    constant background channel in front, averaged, resized to the original size, arg-max. Returns the
    scores at the protocol size, the labels and the scores at the original size."""
    _, _, height, width = image.shape
    preds = image.new_zeros((1, text.shape[0] + 1, height, width))
    count = image.new_zeros((1, 1, height, width))
    for y1, x1, y2, x2 in mmseg_boxes(height, width, shapes.crop, shapes.stride):
        masks, _ = theirs.generate_masks(image[:, :, y1:y2, x1:x2], text, apply_pamr=True, kp_w=shapes.kp_w)
        background = torch.full([1, 1, *masks.shape[2:]], shapes.bg_thresh, dtype=torch.float)
        logits = torch.cat([background, masks], dim=1)
        preds += F.pad(logits, (x1, width - x2, y1, height - y2))
        count[:, :, y1:y2, x1:x2] += 1
    scores = preds / count
    full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return scores[0], F.softmax(full, dim=1).argmax(dim=1)[0], full[0]


def image_case(ours: TCL, theirs, shapes: Shapes) -> Sides:
    size = shapes.image
    rgb = (_image((1, 3, *size), seed=3) * 0.25 + 0.5).clamp(0, 1)
    resized = F.interpolate(rgb, size=protocol_size(*size, shapes.short_side, shapes.long_side), mode="bilinear",
                            align_corners=False)
    image = ours.normalize(resized)
    text = _text(shapes.image_classes, ours.clip.visual.proj.shape[1], seed=4)

    def run_ours(precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        scores = sliding_window_scores(ours, image, text, crop=shapes.crop, stride=shapes.stride, apply_pamr=True,
                                       kp_w=shapes.kp_w, bg_thresh=shapes.bg_thresh, precision=precision)
        return scores, labels_at(scores, size)

    def run_official() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _official_slide_labels(theirs, image, text, shapes, size)

    def agreement(a, b) -> dict[str, Any]:
        diff = (a[0].float() - b[0]).abs().max().item()
        # With random weights the background threshold may win everywhere; the labels among the classes alone
        # (same scores, background channel left out) keep the label check meaningful.
        classes_only = _label_agreement(labels_at(a[0][1:].float(), size), b[2][1:].argmax(0), b[2][1:], diff)
        return {"max_abs_diff": diff, **_label_agreement(a[1], b[1], b[2], diff), "classes_only": classes_only,
                "windows": len(mmseg_boxes(*image.shape[-2:], shapes.crop, shapes.stride))}

    def problem(agreement: dict[str, Any]) -> str | None:
        found = _mask_problem(agreement)
        without = _mask_problem({**agreement, **agreement["classes_only"]})
        return found or (f"without the background: {without}" if without else None)

    return Sides(run_ours, run_official, agreement, problem)


def _trainable_grads(named: Iterator[tuple[str, torch.nn.Parameter]], rename: Callable[[str], str | None]):
    return {rename(name): p.grad.detach().float().clone() for name, p in named
            if p.requires_grad and p.grad is not None and rename(name) is not None}


def train_case(ours: TCL, theirs, shapes: Shapes) -> Sides:
    image = _image((shapes.train_batch, 3, shapes.train_size, shapes.train_size), seed=5)
    captions = [f"a photo of thing number {i} on a table" for i in range(shapes.train_batch)]
    tokens = ours.tokenize(captions)
    ie_freeze = ours.config.ie_freeze

    def step(model, forward: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        losses = forward()
        TCL.total_loss(losses).backward()  # the trainer's objective: the sum of the "loss" entries
        return {k: v.detach().float() for k, v in losses.items() if "loss" in k}

    def run_ours(precision: str):
        ours.train()
        ours.set_decoder_only(False)

        def forward():
            with autocast(precision, image.device):
                return ours(image, tokens)
        return step(ours, forward), _trainable_grads(ours.named_parameters(), lambda n: n)

    def run_official():
        theirs.set_train(decoder_only=False, config=None)
        losses = step(theirs, lambda: theirs(image, tokens))
        return losses, _trainable_grads(theirs.named_parameters(), lambda n: official_to_tcl_key(n, ie_freeze))

    def agreement(a, b) -> dict[str, float]:
        (loss_a, grad_a), (loss_b, grad_b) = a, b
        loss_diff = max(((loss_a[k] - loss_b[k]).abs() / loss_b[k].abs().clamp_min(1e-12)).item() for k in loss_b)
        shared = sorted(set(grad_a) & set(grad_b))
        grad_diff = max(((grad_a[k] - grad_b[k]).norm() / grad_b[k].norm().clamp_min(1e-12)).item() for k in shared)
        return {"loss_rel_diff": loss_diff, "grad_rel_diff": grad_diff, "grads_compared": len(shared),
                "grads_ours": len(grad_a), "grads_official": len(grad_b),
                "losses": {k: round(v.item(), 6) for k, v in loss_b.items()}}

    def problem(agreement: dict[str, float]) -> str | None:
        if agreement["grads_compared"] != agreement["grads_official"]:
            return (f"{agreement['grads_official'] - agreement['grads_compared']} official gradients have no "
                    "counterpart in ours")
        if agreement["loss_rel_diff"] > LOSS_RTOL:
            return f"losses differ by {agreement['loss_rel_diff']:.2e} (relative) > {LOSS_RTOL:g}"
        if agreement["grad_rel_diff"] > GRAD_RTOL:
            return f"gradients differ by {agreement['grad_rel_diff']:.2e} (relative) > {GRAD_RTOL:g}"
        return None

    return Sides(run_ours, run_official, agreement, problem, check_mode=MedianNoise)


class MedianNoise(TorchFunctionMode):
    """Uniform noise fixed at ½ (zero logistic noise: Gumbel-sigmoid's hard mask becomes ``σ(z) > ½``) while
    the two training steps are compared. Both sides draw their noise once from the same generator, but the
    official code fills a tensor laid out as its einsum left it (``rand_like``) and ours a contiguous one,
    so the same numbers land on different pixels. Timed runs draw real noise. ``draws`` counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.draws = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.rand, torch.rand_like):
            self.draws += 1
            out.fill_(0.5)
        return out


#: name → (description, builder(ours, theirs, shapes)).
CASES: dict[str, tuple[str, Callable[..., Sides]]] = {name: (CASE_DESCRIPTIONS[name], build) for name, build in {
    "window": lambda o, t, s: window_case(o, t, s, s.classes, pamr=True),
    "window-nopamr": lambda o, t, s: window_case(o, t, s, s.classes, pamr=False),
    "window-171": lambda o, t, s: window_case(o, t, s, s.many_classes, pamr=True),
    "image": image_case,
    "train": train_case,
}.items()}


# ----------------------------------------------------------------------------- timing
@dataclass
class Measured:
    description: str
    official_s: list[float] = field(default_factory=list)
    ours_s: dict[str, list[float]] = field(default_factory=dict)
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)
    problem: str | None = None


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """A one-process gloo group: the official training code calls torch.distributed unconditionally."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="official-compare-pg-") as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def measure(name: str, sides: Sides, precisions: tuple[str, ...], repeats: int,
            log: Callable[[str], None]) -> Measured:
    """Warm-up and check, then ``repeats`` interleaved rounds (each precision of ours, then the official)."""
    result = Measured(CASES[name][0])
    with sides.check_mode():
        _, reference = _timed(sides.official)
    for precision in precisions:
        with sides.check_mode():
            _, out = _timed(lambda p=precision: sides.ours(p))
        result.agreement[precision] = sides.agreement(out, reference)
    if "fp32" in precisions:
        result.problem = sides.problem(result.agreement["fp32"])
    if result.problem:
        log(f"{name}: ours fp32 and the official code disagree ({result.problem}); not timed")
        return result
    del reference, out
    for _ in range(repeats):
        for precision in precisions:
            result.ours_s.setdefault(precision, []).append(_timed(lambda p=precision: sides.ours(p))[0])
        result.official_s.append(_timed(sides.official)[0])
    return result


def summary(measured: Measured, precision: str) -> dict[str, Any]:
    ours, theirs = measured.ours_s[precision], measured.official_s
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"ours_median_s": statistics.median(ours), "ours_min_s": min(ours), "ours_max_s": max(ours),
            "official_median_s": statistics.median(theirs), "official_min_s": min(theirs),
            "official_max_s": max(theirs), "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def format_line(name: str, precision: str, s: dict[str, Any]) -> str:
    return (f"{name:<14} {precision:<5} ours {s['ours_median_s']:7.3f} s [{s['ours_min_s']:.3f}–{s['ours_max_s']:.3f}]"
            f"  official {s['official_median_s']:7.3f} s [{s['official_min_s']:.3f}–{s['official_max_s']:.3f}]"
            f"  ratio {s['ratio_median']:.2f} [{s['ratio_min']:.2f}–{s['ratio_max']:.2f}]")


def _git_commit(path: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode:
        return None
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run(args: argparse.Namespace) -> int:
    root = check_official(args.official)
    torch.set_num_threads(args.threads)
    shapes = TINY if args.tiny else FULL
    log = print
    official = import_official(root)
    found = fingerprint(root)
    if found != OFFICIAL_FINGERPRINT:
        log(f"warning: {root} differs from kakaobrain/tcl {OFFICIAL_COMMIT} (model files changed); timing it anyway")
    import tcl

    tcl_root = Path(tcl.__file__).resolve().parents[1]
    log(f"ours: {tcl_root} ({_git_commit(tcl_root) or 'no git'}); official: {root}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"{'tiny' if args.tiny else 'ViT-B/16'} shapes, {args.repeats} rounds")
    ours, theirs = build_models(official, root, shapes)
    report: dict[str, Any] = {
        "ours": {"tcl": str(tcl_root), "commit": _git_commit(tcl_root)},
        "official": {"path": str(root), "commit": OFFICIAL_COMMIT if found == OFFICIAL_FINGERPRINT else None,
                     "fingerprint": found},
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
                    or platform.machine(), "cores": os.cpu_count(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "shapes": asdict(shapes), "repeats": args.repeats, "cases": {},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
    }
    failed = False
    log(f"{'case':<14} {'prec':<5} ours median [min–max]          official median [min–max]       "
        "ratio ours/official per round: median [min–max]")
    for name in args.cases:
        context = process_group() if name == "train" else contextlib.nullcontext()
        with context, torch.no_grad() if name != "train" else contextlib.nullcontext():
            theirs.eval()
            ours.eval()
            measured = measure(name, CASES[name][1](ours, theirs, shapes), args.precision, args.repeats, log)
        entry: dict[str, Any] = {"description": measured.description, "agreement": measured.agreement,
                                 "problem": measured.problem, "official_s": measured.official_s,
                                 "ours_s": measured.ours_s}
        if measured.problem:
            failed = True
        else:
            for precision in args.precision:
                entry[precision] = summary(measured, precision)
                log(format_line(name, precision, entry[precision]))
        report["cases"][name] = entry
        write_json_atomic(args.out, report)  # after every case: a run killed later keeps what it measured
    log(f"wrote {args.out}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except UsageError as err:
        print(f"official_compare: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
