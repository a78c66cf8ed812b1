"""One table of all evaluated benchmarks (markdown + JSON) from the per-benchmark metrics files.

The mean is taken over the benchmarks evaluated on their reporting split; training-split
benchmarks (``t_*``, used for model selection and thresholds) are listed but kept out of it, so the
mean can be compared with the paper's average over its eight benchmarks (Table 2;
the eight tasks of kakaobrain/tcl bc2b551 configs/eval.yml).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import TCLError
from .benchmarks import BENCHMARKS

__all__ = ["ReportError", "collect_results", "collect_baselines", "build_report", "render_markdown", "read_mean_miou"]


class ReportError(TCLError, ValueError):
    """No metrics files, or one that is not an evaluation result."""


def collect_results(folder: str | os.PathLike) -> list[dict]:
    """Every ``*.json`` evaluation result in ``folder``, in registry order (unknown names last)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} not found: run stages/evaluate.py first (it writes <folder>/<benchmark>.json)")
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ReportError(f"{path}: not readable JSON ({err})") from None
        if not isinstance(data, dict) or "benchmark" not in data or "miou" not in data:
            raise ReportError(f"{path}: not an evaluation result (no 'benchmark' / 'miou')")
        results.append(data)
    if not results:
        raise ReportError(f"no evaluation results (*.json) in {folder}")
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    return sorted(results, key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"]))


def collect_baselines(folder: str | os.PathLike) -> dict[str, list[dict]]:
    """Baseline results by kind: ``folder/<kind>/<benchmark>.json`` (e.g. step0, maskclip)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} not found: run stages/evaluate.py --baseline ... first")
    return {sub.name: collect_results(sub) for sub in sorted(folder.iterdir())
            if sub.is_dir() and any(sub.glob("*.json"))}


def _precision(result: dict) -> str | None:
    """The precision a result was computed in (top level since the throughput fields; older files: settings)."""
    return result.get("precision") or result.get("settings", {}).get("precision")


def build_report(results: list[dict], baselines: dict[str, list[dict]] | None = None) -> dict:
    """Rows (benchmark, mIoU, aAcc, images, images/s, windows/s, the precision and device that produced
    the row, settings, and ``miou_<kind>`` / ``precision_<kind>`` of each baseline evaluated on the same
    benchmark), their mIoUs keyed by benchmark (``by_benchmark``), the means over the reporting
    benchmarks (with the precision of the rows they average, ``mixed`` when they differ) and
    ``precisions``: every precision behind a number of the report."""
    baselines = baselines or {}
    by_kind = {kind: {r["benchmark"]: r for r in kind_results} for kind, kind_results in baselines.items()}
    rows = []
    for r in results:
        settings = r.get("settings", {})
        bench = BENCHMARKS.get(r["benchmark"])
        extra = {}
        for kind, values in by_kind.items():
            other = values.get(r["benchmark"])
            extra[f"miou_{kind}"] = other["miou"] if other else None
            extra[f"precision_{kind}"] = _precision(other) if other else None
        rows.append({
            "benchmark": r["benchmark"], "miou": r["miou"], "aacc": r.get("aacc"), "num_images": r.get("num_images"),
            "images_per_s": r.get("images_per_s"), "windows_per_s": r.get("windows_per_s"),
            "precision": _precision(r), "device": r.get("device") or settings.get("device"),
            "setting": settings.get("setting"), "pamr": settings.get("pamr"),
            "kp_w": settings.get("kp_w"), "bg_thresh": settings.get("bg_thresh"), "model": r.get("model"),
            "training_split": bool(bench.training_split) if bench else r["benchmark"].startswith("t_"),
            **extra,
        })
    counted = [row for row in rows if not row["training_split"] and row["miou"] is not None]

    def mean(key: str) -> float | None:
        values = [row[key] for row in counted if row[key] is not None]
        return round(sum(values) / len(values), 2) if values else None

    def mean_precision(key: str) -> str | None:
        used = {row[key] for row in counted if row[key.replace("precision", "miou")] is not None}
        return None if not used else next(iter(used)) if len(used) == 1 else "mixed"

    # Keyed by benchmark as well, so that `dvc metrics show` / `dvc exp show` list every benchmark's mIoU.
    by_benchmark = {row["benchmark"]: {key: value for key, value in row.items() if key.startswith("miou")}
                    for row in rows}
    used = {row[key] for row in rows for key in ("precision", *(f"precision_{k}" for k in by_kind))
            if row[key.replace("precision", "miou")] is not None}
    return {"rows": rows, "by_benchmark": by_benchmark,
            "mean": {"miou": mean("miou"), "aacc": mean("aacc"), "precision": mean_precision("precision"),
                     **{f"miou_{kind}": mean(f"miou_{kind}") for kind in by_kind},
                     **{f"precision_{kind}": mean_precision(f"precision_{kind}") for kind in by_kind},
                     "benchmarks": [row["benchmark"] for row in counted]},
            "baselines": list(by_kind), "precisions": sorted(used, key=lambda p: (p is None, p or ""))}


def render_markdown(report: dict) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    kinds = report.get("baselines", [])
    precisions = report.get("precisions", [])
    single = len(precisions) == 1

    def baseline_cell(row: dict, kind: str) -> str:
        # a baseline number computed in another precision than its row's says which, so that every
        # number of the table can be traced to the precision that produced it
        value, precision = row.get(f"miou_{kind}"), row.get(f"precision_{kind}")
        if value is None or single or precision == row.get("precision"):
            return cell(value)
        return f"{cell(value)} ({cell(precision)})"

    extra = "".join(f" {kind} mIoU |" for kind in kinds)
    lines = [f"| benchmark | mIoU |{extra} aAcc | images | images/s | windows/s | precision | setting | PAMR | kp_w "
             "| bg_thresh |",
             "|---|---:|" + "---:|" * len(kinds) + "---:|---:|---:|---:|---|---|---|---:|---:|"]
    for row in report["rows"]:
        name = f"{row['benchmark']} (train split)" if row["training_split"] else row["benchmark"]
        base = "".join(f" {baseline_cell(row, kind)} |" for kind in kinds)
        lines.append(f"| {name} | {cell(row['miou'])} |{base} {cell(row['aacc'])} | {cell(row['num_images'])} | "
                     f"{cell(row['images_per_s'])} | {cell(row.get('windows_per_s'))} | {cell(row.get('precision'))} | "
                     f"{cell(row['setting'])} | {cell(row['pamr'])} | {cell(row['kp_w'])} | {cell(row['bg_thresh'])} |")
    mean = report["mean"]
    base = "".join(f" {baseline_cell(mean, kind)} |" for kind in kinds)
    lines.append(f"| **mean** ({len(mean['benchmarks'])}) | **{cell(mean['miou'])}** |{base} {cell(mean['aacc'])} "
                 f"| | | | {cell(mean.get('precision'))} | | | | |")
    models = {json.dumps(row["model"], sort_keys=True) for row in report["rows"] if row["model"]}
    notes = ["", "mIoU and aAcc ×100 (mmseg IoUMetric). The means leave out training-split benchmarks."]
    if kinds:
        notes.append("Baselines: step0 = TCL before training (MaskCLIP-style), maskclip = the CLIP's own dense "
                     "features (KP branch alone, no PAMR).")
    if single:
        notes.append(f"Precision: every number above was computed in {cell(precisions[0])}.")
    elif precisions:
        notes.append(f"Precision: the numbers come from {', '.join(map(cell, precisions))} runs (– : not recorded); "
                     "each row's is in the precision column, a baseline's in brackets where it differs.")
    if "mixed" in {mean.get(key) for key in mean if key.startswith("precision")}:
        notes.append("Warning: a mean averages numbers computed in different precisions.")
    if len(models) > 1:
        notes.append("Warning: the rows come from different models.")
    if len(models) == 1:
        notes.append(f"Model: `{next(iter(models))}`.")
    return "\n".join(lines + notes) + "\n"


def read_mean_miou(report_file: str | os.PathLike) -> float | None:
    """The mean mIoU of a report :func:`build_report` made and the report stage wrote as JSON
    (``None`` when no reporting benchmark was evaluated); raises ``ReportError`` for a missing or
    foreign file."""
    try:
        return json.loads(Path(report_file).read_text())["mean"]["miou"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{report_file}: no mean mIoU ({err}); run the report stage first") from None
