"""``tcl`` command line: segment your own images with free-form phrases.

``tcl predict`` segments image files, folders or URLs with a trained checkpoint (ours, or the
official ``tcl.pth`` with OpenAI CLIP weights); ``tcl serve-demo`` serves the same as a web page;
``tcl demo`` runs the code path offline on the model that ``params.yaml`` describes and a generated
image. ``tcl segment`` is an alias of ``tcl predict``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

__all__ = ["main", "build_parser"]

#: The pipeline's final checkpoint, relative to the project root (dvc.yaml's train stage).
DEFAULT_CHECKPOINT = Path("models/tcl/best.pt")


def _phrase_list(text: str) -> list[str]:
    from .inference import InputError, parse_phrases

    try:
        return parse_phrases(text, allow_file=True)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`tcl.inference.PredictOptions`. Each defaults to ``None`` ("not given"):
    the settings the model was evaluated with where they are recorded (:mod:`tcl.inference.recorded`),
    else the shared :data:`~tcl.inference.settings.DEFAULT_SETTINGS`, apply to every flag not given
    (torch-free: ``--help`` stays quick)."""
    from .inference.inputs import DEFAULT_MAX_PIXELS
    from .inference.settings import DEFAULT_SETTINGS as default
    from .inference.settings import PRESETS

    recorded = "the model's recorded settings, else"
    parser.add_argument("--short-side", type=int, help=f"resize so the short side is this ({recorded} "
                                                        f"{default.short_side})")
    parser.add_argument("--long-side", type=int, help=f"unless the long side would exceed this ({recorded} "
                                                      f"{default.long_side})")
    parser.add_argument("--sliding", action=argparse.BooleanOptionalAction, default=None,
                        help=f"score --crop windows every --stride px as the benchmarks do ({recorded} "
                             "one whole-image pass)")
    parser.add_argument("--crop", type=int, help=f"sliding-window size ({recorded} {default.crop})")
    parser.add_argument("--stride", type=int, help=f"sliding-window stride ({recorded} {default.stride})")
    parser.add_argument("--pamr", action=argparse.BooleanOptionalAction, default=None,
                        help=f"refine the masks with PAMR ({recorded} {'on' if default.pamr else 'off'})")
    parser.add_argument("--kp-w", type=float, help=f"weight of the MaskCLIP KP branch ({recorded} {default.kp_w})")
    parser.add_argument("--bg-thresh", type=float,
                        help=f"background wins where every phrase scores below this ({recorded} "
                             f"{default.bg_thresh}; the paper uses {PRESETS['no_pamr'].bg_thresh} without PAMR)")
    parser.add_argument("--no-background", dest="background", action="store_false", default=None,
                        help="predict only the given phrases")
    parser.add_argument("--template", help=f"prompt-template set ({recorded} {default.template}; simple, ...)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images (width x height; {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--device", default="cpu", help="torch device (cpu)")
    parser.add_argument("--precision", help="fp32 (exact; the default), bf16 (faster where the device has native "
                                            "bf16; labels may differ on a few pixels) or auto (bf16 where native)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=Path,
                       help=f"our training checkpoint or the official tcl.pth (default: the project's "
                            f"{DEFAULT_CHECKPOINT}, with the settings the register stage recorded for it)")
    which.add_argument("--model", metavar="URI",
                       help="a registered MLflow model, e.g. models:/tcl@champion (store: MLFLOW_TRACKING_URI, "
                            "else ./mlflow.db), run with the settings it was logged with")
    parser.add_argument("--clip-weights", default=None,
                        help="CLIP weights: required for tcl.pth (ViT-B-16.pt, or 'openai' to download); "
                             "overrides the file a training checkpoint names")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict", aliases=["segment"], help="segment images with free-form phrases",
        description="Segment images (files, folders, http(s) URLs) into the given phrases. Writes per "
                    "image <stem>_overlay.png (colour overlay + legend), <stem>_labels.png (label map: "
                    "pixel value = index into the class list, background first) and <stem>_fractions.json.")
    predict.add_argument("images", nargs="+", help="image files, folders of images, or http(s) URLs")
    predict.add_argument("--phrases", "--classes", dest="phrases", required=True, type=_phrase_list,
                         help="comma-separated class names or phrases, or a file with one per line")
    _add_model_options(predict)
    _add_inference_options(predict)
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a URL (30)")
    predict.add_argument("--out", type=Path, default=Path("outputs/predict"), help="output folder")

    serve = commands.add_parser(
        "serve-demo", help="web page: upload an image, type phrases, see the overlay",
        description="Serve a one-page web demo of the model over HTTP (stop with Ctrl-C).")
    _add_model_options(serve)
    _add_inference_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=7860, help="port (7860; 0 picks a free one)")
    serve.add_argument("--max-phrases", type=int, default=64, help="refuse requests with more phrases (64)")
    serve.add_argument("--workers", type=int, default=1, help="inference threads (1; the model runs one at a time)")
    serve.add_argument("--queue", type=int, default=32,
                       help="requests admitted beyond those running; more get 503 + Retry-After (32)")
    serve.add_argument("--read-timeout", type=float, default=10.0,
                       help="seconds for a request's headers, and for its body (10)")

    demo = commands.add_parser("demo", help="offline smoke run on the params.yaml model",
                               description="Runs `tcl predict`'s code path on the model that "
                                           "params.yaml describes (by default a tiny, randomly "
                                           "initialised CLIP) and a generated image, offline. With "
                                           "random weights the masks are meaningless: this checks "
                                           "the installation.")
    demo.add_argument("--params", type=Path, default=Path("params.yaml"),
                      help="parameter file whose clip/model sections define the model (params.yaml)")
    _add_inference_options(demo)
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    return parser


def _changes(args) -> dict:
    """The inference options the user gave (flat :class:`~tcl.inference.PredictOptions` names)."""
    changes = {name: getattr(args, name) for name in ("short_side", "long_side", "sliding", "crop", "stride",
                                                      "pamr", "kp_w", "bg_thresh", "template", "precision")
               if getattr(args, name) is not None}
    if args.background is False:
        changes["bg_thresh"] = None
    return {**changes, "max_pixels": args.max_pixels}


def _options(args, base=None):
    """``base`` (default: the shared defaults) with the user's flags applied; invalid values raise ConfigError."""
    from .inference import PredictOptions
    from .inference.recorded import default_settings

    return (base or PredictOptions(default_settings().settings)).replace(**_changes(args))


def _settings_line(what: str, options, source: str, args) -> str:
    from .inference.recorded import describe_settings

    given = sorted(set(_changes(args)) - {"max_pixels"})
    overridden = f"; overridden: {', '.join(given)}" if given else ""
    precision = f"; precision {options.precision}" if options.precision != "fp32" else ""
    return (f"{what}; settings: {describe_settings(options.settings, options.sliding)}{precision} "
            f"(from {source}{overridden})")


def _registered_predictor(args):
    """The predictor of the registered model ``args.model`` with the user's flags applied."""
    import mlflow
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from .errors import TCLError
    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri()
    if args.clip_weights is not None:
        raise TCLError("--clip-weights does not apply to --model (the registered model stores its CLIP)")
    print(f"loading {args.model} from {uri} ...", flush=True)
    start = time.perf_counter()
    try:
        # fetched with the store named explicitly, then loaded from the copy: mlflow.set_tracking_uri would
        # change the URI of every later MLflow call in this process (the model is in memory once loaded)
        with tempfile.TemporaryDirectory(prefix="tcl-model-") as local:
            fetched = mlflow.artifacts.download_artifacts(args.model, dst_path=local, tracking_uri=uri)
            loaded = mlflow.pyfunc.load_model(fetched, model_config={"device": args.device})
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TCLError(f"cannot load --model {args.model} from {uri}: {first} (list the registered models in the "
                       "MLflow UI, `make mlflow-ui`)") from None
    predictor = getattr(loaded.unwrap_python_model(), "predictor", None)
    if predictor is None:
        raise TCLError(f"--model {args.model} is not a TCL segmentation model (tcl.serving.log_segmentation_model)")
    recorded = predictor.options
    predictor.options = _options(args, recorded)
    print(_settings_line(f"model {args.model}", predictor.options, "the registered model's config", args),
          flush=True)
    print(f"model ready in {time.perf_counter() - start:.1f} s", flush=True)
    return predictor


def _checkpoint_options(args):
    """The checkpoint to use, its options (recorded ones, else the defaults, with the user's flags)
    and the line saying which; ``TCLError`` when there is no checkpoint to use."""
    from .errors import TCLError
    from .inference import PredictOptions
    from .inference.recorded import default_settings, recorded_for_checkpoint

    checkpoint, what = args.checkpoint, f"checkpoint {args.checkpoint}"
    if checkpoint is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise TCLError(f"no model given and no {DEFAULT_CHECKPOINT} here: pass --checkpoint FILE (ours or "
                           "tcl.pth) or --model models:/tcl@champion (a registered model)")
        checkpoint, what = DEFAULT_CHECKPOINT, f"checkpoint {DEFAULT_CHECKPOINT} (the project's, the default)"
    recorded, why = recorded_for_checkpoint(checkpoint) if checkpoint.is_file() else (None, "")
    base = default_settings() if recorded is None else recorded
    options = _options(args, PredictOptions(base.settings, sliding=base.sliding))  # invalid: fail before loading
    source = base.source + (f"; {why}" if why else "")
    return checkpoint, options, _settings_line(what, options, source, args)


def _load_predictor(args):
    from .inference import Predictor, load_inference_model

    if args.model is not None:
        return _registered_predictor(args)
    checkpoint, options, line = _checkpoint_options(args)
    print(line, flush=True)
    print(f"loading {checkpoint} ...", flush=True)
    start = time.perf_counter()
    model = load_inference_model(checkpoint, clip_weights=args.clip_weights, device=args.device)
    print(f"model ready in {time.perf_counter() - start:.1f} s", flush=True)
    return Predictor(model, options)


def _predict_all(predictor, items: list[tuple[str, Callable]], phrases: list[str], out: Path) -> None:
    """Segment each (stem, image loader) and write its outputs, printing the time per image. Images
    are loaded one at a time, so a folder of photos never sits in memory at once."""
    from .inference import write_outputs

    start = time.perf_counter()
    predictor.text_embedding(phrases, predictor.options.settings.template)  # once, before the images (cached)
    print(f"encoded {len(phrases)} phrase(s) in {time.perf_counter() - start:.2f} s", flush=True)
    total = 0.0
    for index, (stem, load) in enumerate(items, 1):
        image = load()
        start = time.perf_counter()
        result = predictor.segment(image, phrases)
        paths = write_outputs(image, result, stem, out)
        seconds = time.perf_counter() - start
        total += seconds
        top = max(result.fractions().items(), key=lambda kv: kv[1])
        print(f"[{index}/{len(items)}] {stem} ({image.width}x{image.height}): {seconds:.2f} s, "
              f"largest: {top[0]} {top[1]:.0%} -> {paths['overlay']}", flush=True)
    print(f"{len(items)} image(s), {total / len(items):.2f} s per image on average", flush=True)


def _run_predict(args) -> None:
    from .inference import resolve_sources
    from .preflight import check_output_folders

    sources = resolve_sources(args.images)
    for source in sources:  # unreadable or too-large local files fail before the model loads
        source.probe(args.max_pixels)
    check_output_folders(args.out)  # so does an output folder that cannot be written
    predictor = _load_predictor(args)
    items = [(source.stem, partial(source.read, args.max_pixels, args.timeout)) for source in sources]
    _predict_all(predictor, items, args.phrases, args.out)


def _run_serve_demo(args) -> None:
    from .serving.demo import DemoLimits, serve_demo

    limits = DemoLimits(max_phrases=args.max_phrases, workers=args.workers, queue=args.queue,
                        read_timeout=args.read_timeout)  # invalid limits fail before the model loads
    predictor = _load_predictor(args)
    serve_demo(predictor, host=args.host, port=args.port, limits=limits)


def _run_demo(args) -> None:
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from .config import load_params
    from .inference import Predictor
    from .model import create_clip, create_tcl
    from .preflight import check_output_folders

    params = load_params(args.params)
    options = _options(args)
    check_output_folders(args.out)
    torch.manual_seed(0)
    print(f"building TCL from {args.params} (clip weights: {params.clip.weights or 'random init'}) ...",
          flush=True)
    model = create_tcl(create_clip(params.clip.model, params.clip.weights), config=params.model).eval()
    canvas = Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 60 + 100).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse([30, 40, 140, 150], fill=(220, 40, 40))
    draw.rectangle([180, 60, 290, 200], fill=(40, 90, 220))
    _predict_all(Predictor(model.to(args.device), options), [("demo", lambda: canvas)], ["red circle", "blue square"],
                 args.out)
    if params.clip.weights is None:
        print("demo done (random CLIP weights: the masks are not meaningful; see README for real models)")
    else:
        print("demo done")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import TCLError

    runners = {"predict": _run_predict, "segment": _run_predict, "serve-demo": _run_serve_demo, "demo": _run_demo}
    try:
        runners[args.command](args)
    except TCLError as err:  # what the user can fix: bad options, inputs, checkpoints, parameters, a full disk
        print(f"tcl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tcl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
