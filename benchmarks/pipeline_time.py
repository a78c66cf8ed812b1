"""How long does the whole default pipeline take after installation, stage by stage?

    python benchmarks/pipeline_time.py                      # one fresh clone of HEAD, timed
    python benchmarks/pipeline_time.py --repeats 3          # three, one after the other: median and range
    python benchmarks/pipeline_time.py --work /tmp/pt -S train.steps=20   # any override, every repeat

Each repeat clones this checkout's HEAD into ``--work`` (committed files only: what a fresh clone
has, without ``data/``, ``models/``, ``metrics/``, ``dvc.lock`` or an MLflow store) and runs
``python -m pipelines.run`` there with this interpreter: ``make run`` without its install step,
the MLflow parent run included. The clone runs its own code (``PYTHONPATH`` is dropped). Its output
goes to ``pipeline.log`` in the clone; each DVC ``Running stage`` line is timestamped as it
arrives, so a stage's time runs from its line to the next one (DVC's hashing and lock update
after a stage count towards it), ``startup`` is the time before the first stage and ``total`` the
command's wall time.

Prints one row per stage (median, min and max over the repeats, in seconds) and the machine
(CPU model, cores, whether it has AVX-512); per run, the last throughput ``prepare_clip`` printed
(samples/s: the same work in every run, so on a shared host it shows how fast the machine was
meanwhile). Writes everything to ``--out`` (JSON, atomically).
A measurement, not a test: let the machine be otherwise idle, since the stages use every core.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pipelines/ and tcl/ of this checkout
PROG = "pipeline_time"
_STAGE_LINE = re.compile(r"^Running stage '([^']+)':")
_CLIP_STEP = re.compile(r"^step \d+/\d+ .* (\d+(?:\.\d+)?) samples/s")


def machine() -> dict:
    """CPU model, usable cores and whether the CPU has AVX-512 (Linux; ``None`` where unknown)."""
    model, avx512 = None, None
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        if key.strip() == "flags" and avx512 is None:
            avx512 = "avx512f" in value.split()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "avx512": avx512}


def time_stages(lines: list[tuple[float, str]], start: float, end: float) -> dict[str, float]:
    """Seconds per stage from ``(arrival time, line)`` pairs of a command that ran from ``start`` to
    ``end``: ``startup`` until the first ``Running stage`` line, each stage until the next one (the
    last until ``end``); nothing for a command that printed nothing. A stage DVC names twice (it
    cannot) would be summed."""
    if not lines:
        return {}
    times: dict[str, float] = {}
    current, since = "startup", start
    for at, text in lines:
        match = _STAGE_LINE.match(text)
        if match:
            times[current] = times.get(current, 0.0) + at - since
            current, since = match.group(1), at
    times[current] = times.get(current, 0.0) + end - since
    return {name: round(seconds, 1) for name, seconds in times.items()}


def clip_throughput(lines: list[tuple[float, str]]) -> float | None:
    """The last samples/s that the ``prepare_clip`` stage printed: the same work in every run of one
    configuration, so it tells how fast the machine was while the run took its time."""
    stage, last = None, None
    for _, text in lines:
        match = _STAGE_LINE.match(text)
        if match:
            stage = match.group(1)
        elif stage == "prepare_clip" and (step := _CLIP_STEP.match(text)):
            last = float(step.group(1))
    return last


def run_once(index: int, work: Path, overrides: list[str]) -> dict:
    """Clone HEAD into ``work/run-<index>`` and time ``python -m pipelines.run`` there."""
    from pipelines.dvc_cli import tool_env

    clone = work / f"run-{index}"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True,
                   capture_output=True, timeout=600)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True, capture_output=True,
                            text=True).stdout.strip()
    env = tool_env()
    env.pop("PYTHONPATH", None)  # the clone runs its own code, not the caller's
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile exports it for make run
    args = [sys.executable, "-m", "pipelines.run"] + [arg for item in overrides for arg in ("-S", item)]
    log = clone / "pipeline.log"
    lines: list[tuple[float, str]] = []
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as handle, subprocess.Popen(
            args, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace") as proc:
        for text in proc.stdout:
            at = time.monotonic()
            handle.write(text)
            lines.append((at, text.rstrip("\n")))
            match = _STAGE_LINE.match(text)
            if match:
                print(f"{PROG}: run {index}: {match.group(1)} at {at - start:5.0f} s", flush=True)
        status = proc.wait()
    total = time.monotonic() - start
    return {"run": index, "clone": str(clone), "commit": commit, "log": str(log), "ok": status == 0,
            "exit_status": status, "total": round(total, 1), "stages": time_stages(lines, start, start + total),
            "prepare_clip_samples_per_s": clip_throughput(lines)}


def summarize(runs: list[dict]) -> list[dict]:
    """Per stage (in the order of the first run) and for the total: median, min and max seconds."""
    done = [run for run in runs if run["ok"]]
    names = list(dict.fromkeys(name for run in done for name in run["stages"]))
    columns = [(name, [run["stages"][name] for run in done if name in run["stages"]]) for name in names]
    columns.append(("total", [run["total"] for run in done]))
    rows = []
    for name, values in columns:
        if values:
            rows.append({"stage": name, "median": round(statistics.median(values), 1), "min": min(values),
                         "max": max(values), "n": len(values)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipelines.runner import CommandParser

    parser = CommandParser(prog="python benchmarks/pipeline_time.py", doc=__doc__, label=PROG)
    parser.add_argument("--repeats", type=int, default=1, help="fresh clones timed one after the other (1)")
    parser.add_argument("--work", type=Path, default=Path("outputs/pipeline_time"),
                        help="the clones go here; it must be empty or absent (%(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter override for every repeat, as for python -m pipelines.run")
    parser.add_argument("--out", type=Path, default=Path("outputs/pipeline_time.json"),
                        help="JSON record, written atomically (%(default)s)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} is not empty: give a new folder (the clones must be fresh)")
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        parser.error(f"-S {bad[0]!r}: give KEY=VALUE")

    from tcl.atomic import write_json_atomic

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    host = machine()
    print(f"{PROG}: {args.repeats} fresh clone(s) of {ROOT} in {work}; {host['cpu']}, {host['cores']} core(s), "
          f"AVX-512: {host['avx512']}", flush=True)
    runs = []
    for index in range(1, args.repeats + 1):
        run = run_once(index, work, args.overrides)
        runs.append(run)
        state = "done" if run["ok"] else f"FAILED (exit {run['exit_status']}; see {run['log']})"
        speed = run["prepare_clip_samples_per_s"]
        print(f"{PROG}: run {index}: {state} in {run['total']:.0f} s ({run['total'] / 60:.1f} min)"
              + (f"; prepare_clip at {speed:g} samples/s" if speed else ""), flush=True)
        write_json_atomic(args.out, {"machine": host, "overrides": args.overrides, "runs": runs,
                                     "summary": summarize(runs)})
    print("\n| stage | median s | min s | max s |\n|---|---:|---:|---:|")
    for row in summarize(runs):
        print(f"| {row['stage']} | {row['median']:.1f} | {row['min']:.1f} | {row['max']:.1f} |")
    print(f"{PROG}: wrote {args.out}", flush=True)
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
