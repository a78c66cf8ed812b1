"""``tcl`` command line: segment your own images with free-form phrases.

``tcl predict`` segments image files, folders or URLs with a trained checkpoint (ours, or the
official ``tcl.pth`` with OpenAI CLIP weights); ``tcl serve-demo`` serves the same as a web page;
``tcl demo`` runs the code path offline on the model that ``params.yaml`` describes and a generated
image. ``tcl segment`` is an alias of ``tcl predict``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

__all__ = ["main", "build_parser"]


def _phrase_list(text: str) -> list[str]:
    from .inference import InputError, parse_phrases

    try:
        return parse_phrases(text, allow_file=True)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`tcl.inference.PredictOptions`, their defaults those of the shared
    :data:`~tcl.inference.settings.DEFAULT_SETTINGS` (torch-free: ``--help`` stays quick)."""
    from .inference.inputs import DEFAULT_MAX_PIXELS
    from .inference.settings import DEFAULT_SETTINGS as default
    from .inference.settings import PRESETS

    parser.add_argument("--short-side", type=int, default=default.short_side,
                        help=f"resize so the short side is this ({default.short_side})")
    parser.add_argument("--sliding", action="store_true",
                        help=f"score {default.crop}-px windows with stride {default.stride} as the benchmarks do "
                             "(default: whole image)")
    parser.add_argument("--crop", type=int, default=default.crop, help=f"sliding-window size ({default.crop})")
    parser.add_argument("--stride", type=int, default=default.stride, help=f"sliding-window stride ({default.stride})")
    parser.add_argument("--no-pamr", dest="pamr", action="store_false", default=default.pamr,
                        help="skip PAMR refinement")
    parser.add_argument("--kp-w", type=float, default=default.kp_w,
                        help=f"weight of the MaskCLIP KP branch ({default.kp_w})")
    parser.add_argument("--bg-thresh", type=float, default=default.bg_thresh,
                        help=f"background wins where every phrase scores below this ({default.bg_thresh}; "
                             f"{PRESETS['no_pamr'].bg_thresh} without PAMR)")
    parser.add_argument("--no-background", dest="bg_thresh", action="store_const", const=None,
                        help="predict only the given phrases")
    parser.add_argument("--template", default=default.template,
                        help=f"prompt-template set ({default.template}, simple, ...)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse larger images (width x height; {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--device", default="cpu", help="torch device (cpu)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="our training checkpoint (models/tcl/best.pt) or the official tcl.pth")
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


def _options(args):
    from .inference import PredictOptions

    return PredictOptions(short_side=args.short_side, pamr=args.pamr, kp_w=args.kp_w, bg_thresh=args.bg_thresh,
                             template=args.template, sliding=args.sliding, crop=args.crop, stride=args.stride,
                             max_pixels=args.max_pixels)


def _load_predictor(args):
    from .inference import Predictor, load_inference_model

    options = _options(args)  # invalid options fail before the model loads
    print(f"loading {args.checkpoint} ...", flush=True)
    start = time.perf_counter()
    model = load_inference_model(args.checkpoint, clip_weights=args.clip_weights, device=args.device)
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
