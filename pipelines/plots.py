"""The DVC plots page with no network: ``dvc plots show`` / ``dvc plots diff`` with Vega inside the page.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline (or behind a proxy) the
charts of ``dvc.yaml``'s ``plots:`` (training loss, mask area, validation mIoU, mIoU per benchmark)
are simply missing, with no error; only the image panels show. Here DVC fills the template
``pipelines/plots.html`` instead (``--html-template``), into which the three libraries are inlined
from vl-convert-python's bundle (:func:`vl_convert.javascript_bundle`, a PyPI wheel: no npm, no
network at any point), so the page is one self-contained file that can also be copied or mailed.

``python -m pipelines.plots`` (= ``make plots``) runs ``dvc plots show``; ``python -m pipelines.plots
diff REV...`` runs ``dvc plots diff REV...`` (experiments, branches, commits). The page is written to
a temporary folder beside ``--out`` and then moved into place, so an interrupted or failed run leaves
the previous page (or none), never a half-written one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pipelines.dvc_cli import DvcError, run_dvc
from tcl.atomic import output_errors
from tcl.errors import TCLError

__all__ = ["TEMPLATE", "BUNDLE_PLACEHOLDER", "PlotsError", "vega_bundle", "fill_template", "write_page", "main"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: DVC's HTML template with our ``{vega_bundle}`` placeholder and DVC's ``{plot_divs}`` (no ``{scripts}``).
TEMPLATE = Path(__file__).with_name("plots.html")
BUNDLE_PLACEHOLDER = "{vega_bundle}"
_DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


class PlotsError(TCLError, RuntimeError):
    """The plots page cannot be made (a missing package, a bad template); the message says how to fix it."""


def vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one classic script that sets ``window.vegaEmbed`` (what DVC's divs call).

    The Vega-Lite version is the newest 5.x the installed vl-convert-python carries: DVC's plot templates
    are written for Vega-Lite 5 (their ``$schema``).
    """
    try:
        import vl_convert
    except ImportError:
        raise PlotsError("vl-convert-python is not installed (it bundles vega for the offline plots page): "
                         "run `make venv` or `pip install 'vl-convert-python>=1.3,<2'`") from None
    v5 = [v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")]
    newest = max(v5, key=lambda v: tuple(int(part) for part in v.split("."))) if v5 else None
    return vl_convert.javascript_bundle(vl_version=newest)


def fill_template(template: str, bundle: str) -> str:
    """``template`` with the bundle in place of ``{vega_bundle}``, ready for DVC's ``--html-template``.

    Refuses a bundle that would break the page: DVC replaces its placeholders anywhere in the text, and
    ``</script`` would end the inline script early.
    """
    if BUNDLE_PLACEHOLDER not in template or "{plot_divs}" not in template:
        raise PlotsError(f"the plots template must contain {BUNDLE_PLACEHOLDER} and {{plot_divs}}: see {TEMPLATE}")
    clash = [p for p in (*_DVC_PLACEHOLDERS, "</script") if p in bundle.lower()]
    if clash:
        raise PlotsError(f"the vega bundle contains {clash[0]!r}, which would break DVC's page: "
                         "install another vl-convert-python release")
    return template.replace(BUNDLE_PLACEHOLDER, bundle)


def write_page(dvc_args: Sequence[str], out: str | os.PathLike, *, root: str | os.PathLike = PROJECT_ROOT,
               template: str | os.PathLike = TEMPLATE) -> Path:
    """Run ``dvc plots <dvc_args> --html-template ... -o <temporary>`` in ``root`` and move the result to
    ``out`` (a folder: ``index.html`` plus DVC's ``static/`` images); returns ``out/index.html``.

    The previous ``out`` is replaced only once DVC has written the whole new page.
    """
    root = Path(root)
    out = Path(out) if Path(out).is_absolute() else root / out
    if out.exists() and not (out / "index.html").is_file():
        # the previous page is replaced as a whole: never a file or a folder that holds something else
        raise PlotsError(f"{out} exists and is not a plots page folder (no index.html in it): "
                         "choose another --out or remove it")
    page = fill_template(Path(template).read_text(encoding="utf8"), vega_bundle())
    with output_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            (work / "template.html").write_text(page, encoding="utf8")
            new = work / "page"
            try:
                run_dvc(["plots", *dvc_args, "--html-template", str(work / "template.html"), "-o", str(new)],
                        root=root, on_line=_relay(work))
            except DvcError as err:
                detail = next((line.removeprefix("ERROR:").strip() for line in reversed(err.tail)
                               if line.startswith("ERROR")), f"exit {err.returncode}")
                raise PlotsError(f"dvc plots {' '.join(dvc_args)} failed: {detail}") from None
            written = (new / "index.html").read_text(encoding="utf8") if (new / "index.html").is_file() else ""
            # When none of the plot files exist (a fresh clone) DVC exits 0 with a page of empty specs
            # (`var spec = {};`). The body holds DVC's plot divs alone: the bundle in the head has its own <img>.
            body = written.rpartition("<body>")[2]
            if "<img" not in body and not re.search(r"var spec = (?!\{\};)", body):
                raise PlotsError(f"dvc plots {' '.join(dvc_args)} found nothing to plot (none of dvc.yaml's plot "
                                 "files exist yet): run the pipeline first (make run)")
            old = work / "previous"
            if out.exists():
                os.replace(out, old)
            os.replace(new, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out / "index.html"


# Options before or after the subcommand; SUPPRESS keeps a subcommand's missing option from hiding the main one's.
_OPTIONS = argparse.ArgumentParser(add_help=False)
_OPTIONS.add_argument("-o", "--out", type=Path, default=argparse.SUPPRESS,
                      help="output folder, relative to the project (default: dvc_plots, the page dvc_plots/index.html)")
_OPTIONS.add_argument("--root", type=Path, default=argparse.SUPPRESS, help="project checkout (default: this one)")


def _relay(work: Path):
    """DVC's warnings as they come, less the temporary page's address (the caller names the final one) and
    its ERROR line (the caller's one-line error repeats it)."""
    def on_line(line: str) -> None:
        if str(work) not in line and not line.startswith("ERROR"):
            print(line, flush=True)
    return on_line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.plots", parents=[_OPTIONS],
        description="Write DVC's plots page (dvc.yaml's plots: training loss, mask area, validation mIoU, mIoU "
                    "per benchmark, the overlay panels) with vega bundled into the page, so the charts draw "
                    "with no network. `show` (the default): the workspace, like `dvc plots show`; "
                    "`diff REV...`: several revisions or experiments in one page, like `dvc plots diff`.",
        epilog="examples: make plots; make plots ARGS=\"diff $(dvc exp ls --names-only)\"; "
               "python -m pipelines.plots diff HEAD~1 HEAD")
    sub = parser.add_subparsers(dest="command")
    show = sub.add_parser("show", parents=[_OPTIONS], help="the workspace's plots (dvc plots show)")
    show.add_argument("targets", nargs="*", help="plot names or files (default: all of dvc.yaml's plots)")
    diff = sub.add_parser("diff", parents=[_OPTIONS], help="revisions or experiments side by side (dvc plots diff)")
    diff.add_argument("revisions", nargs="+", metavar="REV", help="git revisions or DVC experiment names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    dvc_args = ["diff", *args.revisions] if args.command == "diff" else ["show", *getattr(args, "targets", [])]
    try:
        index = write_page(dvc_args, getattr(args, "out", Path("dvc_plots")),
                           root=getattr(args, "root", PROJECT_ROOT).resolve())
    except TCLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {index} (vega inlined: opens with no network)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
