"""Does TCL beat both baselines whatever the seed, and only when captions belong to their images?

    python benchmarks/seed_sweep.py                              # seeds 0 1 2 3, each with both controls
    python benchmarks/seed_sweep.py --seeds 0 5 --controls disjoint   # two seeds, one control each
    python benchmarks/seed_sweep.py --seeds 0 5 --no-control     # two seeds, real captions only
    python benchmarks/seed_sweep.py --work /tmp/sweep -S train.steps=200   # any override, every run

For each seed the whole default pipeline (``python -m pipelines.run``: synthetic world, download,
CLIP pre-training, TCL training, thresholds, evaluation, baselines, report) runs in its own copy of
this checkout under ``--work`` with ``synthetic.seed``, ``data.seed`` and ``train.seed`` all set to
the seed, so the world, the data order and training all change together. Then, for each control
(``--controls``, both by default), the same copy runs again with ``train.shuffle_captions`` set to
it: DVC keeps the world, the shards, the CLIP and the baselines, and retrains TCL with every image
paired with another image's caption (``any``) or with one that names none of the kinds its own
caption names (``disjoint``: no pair grounded by chance), then evaluates it.

Per seed it prints one line: the mean mIoU of trained TCL and of the two baselines (``maskclip``,
the CLIP's own dense features, and ``step0``, TCL before training), the margin over the better
baseline on the mean and on the worst benchmark, each control's gain over step 0, and the minutes
each run took. Then the minimum margins over seeds and each control's largest gain.
Everything, with each run's per-benchmark rows and validation curve, goes to ``--out`` (JSON,
written atomically). A failed run is reported with the tail of its log and the sweep goes on.

This is a measurement (numbers go into docs/training.md and the issue notes), not a test; about
8 minutes per seed plus 5 for each control on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pipelines/ and tcl/ of this checkout
PROG = "seed_sweep"
_SEED_KEYS = ("synthetic.seed", "data.seed", "train.seed")

from tcl.data.config import SHUFFLE_MODES  # noqa: E402  (torch-free; after the path insert above)

# The train.shuffle_captions modes a sweep can run after the real captions.
CONTROLS = tuple(mode for mode in SHUFFLE_MODES if mode != "none")


def _batch_size(copy: Path) -> int:
    """The global batch of the run in ``copy`` (what its trainer wrote beside the checkpoints)."""
    config = json.loads((copy / "models" / "tcl" / "config.json").read_text(encoding="utf-8"))
    return int(config["derived"]["global_batch"])


def _rows(copy: Path) -> list[dict]:
    report = json.loads((copy / "metrics" / "report" / "report.json").read_text(encoding="utf-8"))
    return [row for row in report["rows"] if not row.get("training_split")]


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _curve(copy: Path, batch: int) -> list[dict[str, float]]:
    """The validation curve, each row with ``train_minutes``: training time up to its step, from the logged
    samples/s (validation time left out)."""
    train = _read_csv(copy / "metrics" / "train_curve.csv")
    rows = _read_csv(copy / "metrics" / "val_curve.csv")
    for row in rows:
        seconds, previous = 0.0, 0.0
        for logged in train:
            if logged["step"] > row["step"]:
                break
            seconds += (logged["step"] - previous) * batch / logged["samples_per_s"]
            previous = logged["step"]
        row["train_minutes"] = round(seconds / 60, 2)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means of TCL and the baselines over the benchmarks, the margins over the better baseline."""
    def mean(key: str) -> float:
        return round(sum(row[key] for row in rows) / len(rows), 2)

    margins = {row["benchmark"]: round(row["miou"] - max(row["miou_maskclip"], row["miou_step0"]), 2) for row in rows}
    tcl, maskclip, step0 = mean("miou"), mean("miou_maskclip"), mean("miou_step0")
    return {"tcl": tcl, "maskclip": maskclip, "step0": step0, "margin": round(tcl - max(maskclip, step0), 2),
            "margins": margins, "min_margin": min(margins.values()),
            "per_benchmark": {row["benchmark"]: {"tcl": row["miou"], "maskclip": row["miou_maskclip"],
                                                 "step0": row["miou_step0"]} for row in rows}}


def run_pipeline(copy: Path, overrides: list[str], log: Path) -> tuple[bool, float]:
    """``python -m pipelines.run --no-tracking -S ...`` in ``copy``, output to ``log``; (ok, seconds)."""
    from pipelines.dvc_cli import tool_env

    env = tool_env()
    env.pop("PYTHONPATH", None)  # the copy runs its own code, not the caller's
    args = [sys.executable, "-m", "pipelines.run", "--no-tracking"]
    for item in overrides:
        args += ["-S", item]
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(args)}\n")
        handle.flush()
        status = subprocess.run(args, cwd=copy, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    return status == 0, time.perf_counter() - start


def _tail(log: Path, lines: int = 5) -> str:
    return " | ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])


def sweep_seed(seed: int, work: Path, extra: list[str], controls: list[str]) -> dict:
    from pipelines.checkout import copy_checkout

    copy = work / f"seed-{seed}"
    if not (copy / ".git").is_dir():
        copy_checkout(ROOT, copy, skip=("tests/", "benchmarks/", "docs/"))
    log = copy / "sweep.log"
    overrides = [f"{key}={seed}" for key in _SEED_KEYS] + extra
    record: dict = {"seed": seed, "copy": str(copy), "log": str(log), "overrides": overrides}
    runs = [("real", overrides, "pipeline")]
    runs += [(f"shuffled_{mode}", [*overrides, f"train.shuffle_captions={mode}"], f"{mode}-shuffle pipeline")
             for mode in controls]
    for name, settings, what in runs:  # the control after the real run: DVC keeps the world, CLIP and baselines
        ok, seconds = run_pipeline(copy, settings, log)
        record[f"{name}_seconds"] = round(seconds, 1)
        if not ok:
            record["error"] = f"{what} failed: {_tail(log)}"
            return record
        rows = _rows(copy)
        record.update({name: summarize(rows), f"{name}_rows": rows,
                       f"{name}_curve": _curve(copy, _batch_size(copy))})
        if name != "real":
            record[name]["gain_over_step0"] = round(record[name]["tcl"] - record[name]["step0"], 2)
    return record


def line(record: dict) -> str:
    if "real" not in record:
        return f"seed {record['seed']}: {record.get('error', 'no result')}"
    real = record["real"]
    text = (f"seed {record['seed']}: TCL {real['tcl']:.2f} | maskclip {real['maskclip']:.2f}"
            f" | step0 {real['step0']:.2f}"
            f" | margin {real['margin']:+.2f} (worst benchmark {real['min_margin']:+.2f})"
            f" | {record['real_seconds'] / 60:.1f} min")
    for mode in CONTROLS:
        if f"shuffled_{mode}" in record:
            control = record[f"shuffled_{mode}"]
            text += (f" | {mode} shuffle {control['tcl']:.2f} ({control['gain_over_step0']:+.2f} over step0,"
                     f" {record[f'shuffled_{mode}_seconds'] / 60:.1f} min)")
    if "error" in record:
        text += f" | {record['error']}"
    return text


def overall(records: list[dict]) -> dict:
    done = [r for r in records if "real" in r]
    result: dict = {"seeds": [r["seed"] for r in records], "completed": [r["seed"] for r in done]}
    if done:
        result["min_margin"] = min(r["real"]["margin"] for r in done)
        result["min_benchmark_margin"] = min(r["real"]["min_margin"] for r in done)
    for mode in CONTROLS:
        gains = [r[f"shuffled_{mode}"]["gain_over_step0"] for r in done if f"shuffled_{mode}" in r]
        if gains:
            result[f"max_gain_{mode}"] = max(gains)
    return result


def main(argv: list[str] | None = None) -> int:
    from pipelines.runner import CommandParser

    parser = CommandParser(prog="python benchmarks/seed_sweep.py", doc=__doc__, label=PROG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="seeds for synthetic.seed, data.seed and train.seed together (0 1 2 3)")
    parser.add_argument("--controls", nargs="+", choices=CONTROLS, default=list(CONTROLS),
                        help="the shuffled-caption runs after each seed's real one (%(default)s)")
    parser.add_argument("--no-control", dest="controls", action="store_const", const=[],
                        help="real captions only")
    parser.add_argument("--work", type=Path, default=Path("outputs/seed_sweep"),
                        help="one copy of the checkout per seed goes here; an existing copy is reused (%(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter override for every run, as for python -m pipelines.run")
    parser.add_argument("--out", type=Path, default=Path("outputs/seed_sweep.json"),
                        help="JSON record, written atomically (%(default)s)")
    args = parser.parse_args(argv)
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct and >= 0, got {args.seeds}")
    for item in args.overrides:
        key = item.partition("=")[0]
        if "=" not in item or key in _SEED_KEYS or key == "train.shuffle_captions":
            parser.error(f"-S {item!r}: give KEY=VALUE, and leave {', '.join(_SEED_KEYS)} and "
                         "train.shuffle_captions to the sweep")

    from tcl.atomic import write_json_atomic

    args.work.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        controls = f" and the controls {', '.join(args.controls)}" if args.controls else ""
        print(f"{PROG}: seed {seed}: running the pipeline{controls} in {args.work / f'seed-{seed}'} "
              "(log: sweep.log there)", flush=True)
        record = sweep_seed(seed, args.work.resolve(), args.overrides, args.controls)
        records.append(record)
        print(line(record), flush=True)
        write_json_atomic(args.out, {"runs": records, "overall": overall(records), "overrides": args.overrides})
    summary = overall(records)
    if "min_margin" in summary:
        print(f"minimum over seeds {summary['completed']}: margin {summary['min_margin']:+.2f} on the mean, "
              f"{summary['min_benchmark_margin']:+.2f} on the worst benchmark"
              + "".join(f"; largest gain over step0, {mode} shuffle {summary[f'max_gain_{mode}']:+.2f}"
                        for mode in CONTROLS if f"max_gain_{mode}" in summary), flush=True)
    print(f"{PROG}: wrote {args.out}", flush=True)
    return 0 if len(summary["completed"]) == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
