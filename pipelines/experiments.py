"""``make exp-show``: DVC experiments side by side, compactly: name, the parameters that differ, mIoU per benchmark.

    python -m pipelines.experiments                      # dvc exp show --json, as a compact table
    python -m pipelines.experiments --all-commits        # other arguments go to dvc exp show
    python -m pipelines.experiments --input exp.json     # a saved `dvc exp show --json` output

``dvc exp show`` prints every parameter and metric, 87 columns and more. This table keeps one row per
workspace, commit and experiment (as ``dvc exp show``), the parameters whose values differ between
those rows (as ``--only-changed``), and the trained model's mIoU on each benchmark with their mean
(``metrics/report/report.json``: ``by_benchmark.<benchmark>.miou``, ``mean.miou``). A row whose
metrics DVC could not read (a failed experiment) shows ``!``; a missing value, ``-``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.runner import CommandParser, run_command
from tcl.errors import TCLError

__all__ = ["REPORT", "ExpRow", "rows_from_exp_show", "changed_params", "render_table", "exp_show_json", "main"]

PROG = "exp-show"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The metrics file whose ``by_benchmark`` and ``mean`` the table shows (the report stage's).
REPORT = "metrics/report/report.json"
_PREFIX = "synthetic_"


@dataclass
class ExpRow:
    """One row of ``dvc exp show``: the workspace, a commit or an experiment."""

    name: str
    rev: str
    params: dict[str, Any] = field(default_factory=dict)  # params.yaml, flattened to dotted keys
    miou: dict[str, float | None] = field(default_factory=dict)  # benchmark → mIoU
    mean: float | None = None
    failed: bool = False  # DVC reported an error for this row, or it has no data
    experiment: bool = False


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _row(entry: dict, name: str, experiment: bool) -> ExpRow:
    data = entry.get("data") or {}
    row = ExpRow(name=name, rev=str(entry.get("rev") or "")[:7] if entry.get("rev") != "workspace" else "",
                 experiment=experiment, failed=bool(entry.get("error")) or not data)
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    row.params = _flatten(params) if params else {}
    report = (data.get("metrics") or {}).get(REPORT) or {}
    if report.get("error") or "data" not in report:
        row.failed = row.failed or bool(report.get("error"))
        return row
    metrics = report["data"] or {}
    row.miou = {bench: (values or {}).get("miou") for bench, values in (metrics.get("by_benchmark") or {}).items()}
    row.mean = (metrics.get("mean") or {}).get("miou")
    return row


def rows_from_exp_show(data: Any) -> list[ExpRow]:
    """The rows of a ``dvc exp show --json`` output, in DVC's order (workspace, commit, its experiments, ...)."""
    if not isinstance(data, list):
        raise TCLError("not a `dvc exp show --json` output (expected a JSON list)")
    rows = []
    for entry in data:
        if not isinstance(entry, dict) or "rev" not in entry:
            raise TCLError("not a `dvc exp show --json` output (an entry without 'rev')")
        name = "workspace" if entry["rev"] == "workspace" else (entry.get("name") or str(entry["rev"])[:7])
        rows.append(_row(entry, name, experiment=False))
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:  # a checkpoint-less experiment has one rev
                rows.append(_row(rev, rev.get("name") or exp.get("name") or str(rev.get("rev"))[:7],
                                 experiment=True))
    return rows


def changed_params(rows: Sequence[ExpRow]) -> list[str]:
    """Dotted parameter keys whose value differs between the rows that have parameters (``--only-changed``)."""
    with_params = [row for row in rows if row.params]
    keys = sorted({key for row in with_params for key in row.params})
    marker = object()
    return [key for key in keys if len({json.dumps(row.params.get(key, marker), sort_keys=True, default=str)
                                        for row in with_params}) > 1]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render_table(rows: Sequence[ExpRow]) -> str:
    """Aligned text: Experiment, rev, the changed parameters, mIoU per benchmark, mean."""
    params = changed_params(rows)
    benchmarks: list[str] = []
    for row in rows:
        benchmarks += [bench for bench in row.miou if bench not in benchmarks]
    # the default benchmarks are all synthetic_*: the prefix would double the table's width
    strip = bool(benchmarks) and all(bench.startswith(_PREFIX) for bench in benchmarks)
    header = ["Experiment", "rev", *params, *(b[len(_PREFIX):] if strip else b for b in benchmarks), "mean"]
    table = [header]
    for row in rows:
        name = f"  {row.name}" if row.experiment else row.name
        values = [_cell(row.params.get(key)) if row.params else "!" for key in params]
        if row.failed and not row.miou:
            scores = ["!"] * (len(benchmarks) + 1)
        else:
            scores = [_cell(row.miou.get(bench)) for bench in benchmarks] + [_cell(row.mean)]
        table.append([name, row.rev or "-", *values, *scores])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    numeric = set(range(2 + len(params), len(header)))
    lines = ["  ".join(text.rjust(widths[i]) if i in numeric else text.ljust(widths[i])
                       for i, text in enumerate(line)).rstrip() for line in table]
    notes = ["", f"mIoU ×100 ({REPORT}), mean over the reported benchmarks."]
    if strip:
        notes.append(f"Benchmarks named without their '{_PREFIX}' prefix.")
    if not params:
        notes.append("No parameter differs between these rows.")
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:] + notes) + "\n"


def exp_show_json(root: str | os.PathLike, extra: Sequence[str] = ()) -> Any:
    """``dvc exp show --json [extra]`` in ``root``, parsed; a failure is a one-line :class:`TCLError`."""
    from pipelines.dvc_cli import dvc_command, tool_env

    done = subprocess.run(dvc_command("exp", "show", "--json", *extra), cwd=root, env=tool_env(),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise TCLError(f"dvc exp show failed in {root}: {lines[-1] if lines else done.returncode}")
    try:
        return json.loads(done.stdout or "[]")
    except ValueError:
        raise TCLError("dvc exp show --json printed no JSON") from None


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m pipelines.experiments", doc=__doc__, label=PROG,
                     usage="%(prog)s [--root DIR | --input FILE] [dvc exp show arguments ...]")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="project checkout (this one)")
    parser.add_argument("--input", type=Path, metavar="FILE", help="a saved `dvc exp show --json` output")
    args, extra = parser.parse_known_args(argv)

    def work() -> None:
        if args.input:
            if extra:
                raise TCLError(f"--input reads a saved output: {' '.join(extra)} cannot apply to it")
            try:
                data = json.loads(args.input.read_text())
            except OSError as err:
                raise TCLError(f"cannot read {args.input} ({err.strerror}); save it with "
                               "dvc exp show --json > FILE") from None
            except ValueError:
                raise TCLError(f"{args.input} is not JSON; save it with dvc exp show --json > FILE") from None
        else:
            data = exp_show_json(args.root, extra)
        print(render_table(rows_from_exp_show(data)), end="")

    return run_command(PROG, work)

if __name__ == "__main__":
    sys.exit(main())
