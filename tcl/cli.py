"""``tcl`` command line: segment images with a TCL model.

``tcl segment`` uses the released official checkpoint with OpenAI CLIP weights; ``tcl demo`` runs
the same code path offline on a tiny randomly initialised model and a generated image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _class_list(text: str) -> list[str]:
    path = Path(text)
    items = path.read_text().splitlines() if path.is_file() else text.split(",")
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no class names given (comma-separated, or a file with one per line)")
    return names


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--short-side", type=int, default=448, help="resize so the short side is this (448)")
    parser.add_argument("--no-pamr", dest="pamr", action="store_false", help="skip PAMR refinement")
    parser.add_argument("--kp-w", type=float, default=0.3, help="weight of the MaskCLIP KP branch (0.3)")
    parser.add_argument("--bg-thresh", type=float, default=0.4,
                        help="background wins where every class score is below this (0.4; 0.5 without PAMR)")
    parser.add_argument("--no-background", dest="bg_thresh", action="store_const", const=None,
                        help="predict only the given classes")
    parser.add_argument("--template", default="custom", help="prompt-template set (custom, simple, ...)")
    parser.add_argument("--out", type=Path, default=Path("outputs/segment"), help="output folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcl", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images with the official TCL checkpoint",
                                  description="Segment images with the released tcl.pth and OpenAI "
                                              "ViT-B/16 CLIP weights; writes an overlay PNG with a "
                                              "legend, the label-map PNG and class fractions (JSON).")
    segment.add_argument("images", nargs="+", type=Path, help="image files")
    segment.add_argument("--classes", required=True, type=_class_list,
                         help="comma-separated class names or phrases, or a file with one per line")
    segment.add_argument("--checkpoint", required=True, type=Path, help="official tcl.pth")
    segment.add_argument("--clip-weights", default=None,
                         help="OpenAI ViT-B-16.pt (state dict or TorchScript), or 'openai' to download")
    _add_inference_options(segment)

    demo = commands.add_parser("demo", help="offline smoke run on a tiny random model",
                               description="Runs `tcl segment`'s code path on the model that "
                                           "params.yaml describes (by default a tiny, randomly "
                                           "initialised CLIP) and a generated image, offline. With "
                                           "random weights the masks are meaningless: this checks "
                                           "the installation.")
    demo.add_argument("--params", type=Path, default=Path("params.yaml"),
                      help="parameter file whose clip/model sections define the model (params.yaml)")
    _add_inference_options(demo)
    demo.set_defaults(out=Path("outputs/demo"))
    return parser


def _write_outputs(image, result, stem: str, out: Path) -> None:
    import numpy as np
    from PIL import Image

    from .atomic import write_json_atomic
    from .visualize import overlay_with_legend, palette, save_atomic

    colours = palette(len(result.names), background=result.names[0] == "background")
    save_atomic(overlay_with_legend(image, result.labels, result.names, colours), out / f"{stem}_overlay.png")
    save_atomic(Image.fromarray(result.labels.astype(np.uint8 if len(result.names) < 256 else np.uint16)),
                out / f"{stem}_labels.png")
    write_json_atomic(out / f"{stem}_fractions.json", {"classes": result.names, "fractions": result.fractions()})


def _load_images(paths: list[Path]) -> list[tuple[str, object]]:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if not path.is_file():
            raise ValueError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                images.append((path.stem, image.convert("RGB")))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from None
    return images


def _segment_all(model, images: list[tuple[str, object]], names: list[str], args) -> None:
    from .segment import segment_image

    text_emb = model.build_text_embedding(names, template=args.template)  # once for every image
    for index, (stem, image) in enumerate(images, 1):
        start = time.perf_counter()
        result = segment_image(model, image, names, text_emb, short_side=args.short_side, apply_pamr=args.pamr,
                               kp_w=args.kp_w, bg_thresh=args.bg_thresh)
        _write_outputs(image, result, stem, args.out)
        print(f"[{index}/{len(images)}] {stem}: {time.perf_counter() - start:.2f} s -> "
              f"{args.out / (stem + '_overlay.png')}", flush=True)


def _run_segment(args) -> None:
    from .compat import load_official_checkpoint

    images = _load_images(args.images)
    print(f"loading {args.checkpoint} ...", flush=True)
    model = load_official_checkpoint(args.checkpoint, clip_weights=args.clip_weights)
    _segment_all(model, images, args.classes, args)


def _run_demo(args) -> None:
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from .config import load_params
    from .model import create_clip, create_tcl

    params = load_params(args.params)
    torch.manual_seed(0)
    print(f"building TCL from {args.params} (clip weights: {params.clip.weights or 'random init'}) ...",
          flush=True)
    model = create_tcl(create_clip(params.clip.model, params.clip.weights), config=params.model).eval()
    canvas = Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 60 + 100).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse([30, 40, 140, 150], fill=(220, 40, 40))
    draw.rectangle([180, 60, 290, 200], fill=(40, 90, 220))
    _segment_all(model, [("demo", canvas)], ["red circle", "blue square"], args)
    if params.clip.weights is None:
        print("demo done (random CLIP weights: the masks are not meaningful; see README for real models)")
    else:
        print("demo done")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .model import WeightsError

    try:
        if args.command == "segment":
            _run_segment(args)
        else:
            _run_demo(args)
    except (WeightsError, ValueError, OSError) as err:
        print(f"tcl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
