"""Experiments that keep the baseline (docs/pipeline.md, "A sweep that keeps the baseline") and ``make exp-show``.

The slow test follows the recipe on a tiny project for real: the default run, committed; one experiment
through ``make run --exp`` (in the workspace) and one through ``dvc exp run --temp``; ``dvc exp show``
still shows the baseline's metrics; the workspace is restored to the baseline's model. The fast tests
read a real ``dvc exp show --json`` output of such a sweep (tests/fixtures/exp_show.json).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import dvc_cli
from pipelines.experiments import changed_params, main, render_table, rows_from_exp_show

from .conftest import REPO, copy_project, git, run_python

FIXTURE = REPO / "tests" / "fixtures" / "exp_show.json"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dvc(root: Path, *args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    done = subprocess.run(dvc_cli.dvc_command(*args), cwd=root, env=dvc_cli.tool_env(env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def _report_row(data: list, name: str) -> dict:
    """The report metrics of the ``dvc exp show --json`` row called ``name`` (commit row or experiment)."""
    for entry in data:
        candidates = [entry] + [rev for exp in entry.get("experiments") or [] for rev in exp["revs"]]
        for row in candidates:
            if row.get("name") == name or (name == "workspace" and row["rev"] == "workspace"):
                return row["data"]["metrics"]["metrics/report/report.json"]["data"]
    raise AssertionError(f"no row {name} in dvc exp show: {[e.get('name') or e['rev'] for e in data]}")


@pytest.mark.slow
def test_a_sweep_keeps_the_baseline_and_the_workspace_gets_it_back(tmp_path, monkeypatch):
    from .test_full_pipeline import TINY_FULL

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = copy_project(tmp_path / "project")
    model = root / "models/tcl/best.pt"

    # 1. the default run (here: tiny; the project's params.yaml is the tiny one, as -S lasts for one run only)
    from pipelines.overrides import parse_overrides, write_overrides

    write_overrides(root / "params.yaml", parse_overrides(TINY_FULL))
    done = run_python(["-m", "pipelines.run", "--no-tracking"], root, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # 2. committed: what the recipe adds is all that the run left uncommitted
    git(root, "add", "params.yaml", "dvc.lock", "metrics", "models/clip/metrics.json")
    git(root, "commit", "-qm", "Default run")
    assert git(root, "status", "--porcelain") == ""
    baseline_model, baseline_report = _sha(model), json.loads((root / "metrics/report/report.json").read_text())

    # 3. the sweep: one experiment in the workspace (make run --exp), one in a temporary copy (--temp)
    done = run_python(["-m", "pipelines.run", "--no-tracking", "--exp", "steps3", "-S", "train.steps=3"], root,
                      timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _sha(model) != baseline_model  # what the recipe guards against: the workspace holds steps3's model
    steps3_model = _sha(model)
    _dvc(root, "exp", "run", "--temp", "-n", "steps4", "-S", "train.steps=4",
         env={"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"})
    assert _sha(model) == steps3_model  # --temp leaves the workspace alone

    # 4. dvc exp show: the baseline row keeps its metrics next to the experiments'
    data = json.loads(_dvc(root, "exp", "show", "--json").stdout)
    branch = git(root, "branch", "--show-current").strip()
    baseline = _report_row(data, branch)
    assert baseline["by_benchmark"] == baseline_report["by_benchmark"]
    assert baseline["mean"]["miou"] == baseline_report["mean"]["miou"] is not None
    rows = {row.name: row for row in rows_from_exp_show(data)}
    assert {branch, "steps3", "steps4", "workspace"} <= set(rows)
    assert [rows[name].params["train.steps"] for name in (branch, "steps3", "steps4")] == [2, 3, 4]
    assert rows[branch].mean == baseline_report["mean"]["miou"]
    assert rows["steps3"].mean is not None and rows["steps4"].mean is not None

    # ... and make exp-show prints them compactly
    shown = run_python(["-m", "pipelines.experiments", "--root", str(root)], root)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["Experiment", "rev", "train.steps", "voc", "coco_object", "mean"], lines
    baseline_line = next(line for line in lines if line.startswith(branch))
    assert baseline_line.split()[2:] == ["2", *(f"{baseline_report['by_benchmark'][b]['miou']:.2f}"
                                              for b in ("synthetic_voc", "synthetic_coco_object")),
                                         f"{baseline_report['mean']['miou']:.2f}"]
    assert max(len(line) for line in lines) < 87

    # 5. the workspace back to the baseline: its parameters, lock, metrics and model
    git(root, "checkout", "--", "params.yaml", "dvc.lock", "metrics", "models/clip/metrics.json")
    _dvc(root, "checkout")
    assert _sha(model) == baseline_model
    assert json.loads((root / "metrics/report/report.json").read_text()) == baseline_report
    assert git(root, "status", "--porcelain") == ""
    assert _dvc(root, "status", "--json").stdout.strip() in ("{}", "")  # DVC agrees: nothing to re-run


def test_rows_of_a_real_exp_show_output():
    data = json.loads(FIXTURE.read_text())
    rows = rows_from_exp_show(data)
    names = [row.name for row in rows]
    assert names[0] == "workspace" and "steps3" in names and "steps4" in names
    baseline = next(row for row in rows if not row.experiment and row.name != "workspace")
    assert set(baseline.miou) == {"synthetic_voc", "synthetic_coco_object"}
    assert baseline.mean is not None and all(value is not None for value in baseline.miou.values())
    assert {row.name: row.params["train.steps"] for row in rows} == {"workspace": 3, baseline.name: 2, "steps3": 3,
                                                                      "steps4": 4}
    assert changed_params(rows) == ["train.steps"]


def test_the_table_is_compact_and_holds_the_numbers():
    rows = rows_from_exp_show(json.loads(FIXTURE.read_text()))
    table = render_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["Experiment", "rev", "train.steps", "voc", "coco_object", "mean"]
    assert max(len(line) for line in lines) < 87
    for row in rows:
        line = next(line for line in lines[2:] if line.strip().split()[0] == row.name)
        assert line.split()[-1] == f"{row.mean:.2f}"
        assert line.split()[2] == str(row.params["train.steps"])


def test_a_failed_experiment_shows_bangs_not_a_traceback():
    data = json.loads(FIXTURE.read_text())
    exp = next(e for entry in data for e in entry.get("experiments") or [])
    exp["revs"][0].update(data=None, error={"type": "ReproductionError", "msg": "failed to reproduce 'train'"})
    rows = rows_from_exp_show(data)
    failed = next(row for row in rows if row.failed)
    line = next(line for line in render_table(rows).splitlines() if line.strip().startswith(failed.name))
    assert line.split()[2:] == ["!"] * 4


def test_command_line(tmp_path, capsys):
    assert main(["--input", str(FIXTURE)]) == 0
    assert capsys.readouterr().out.startswith("Experiment")
    for argv, message in ((["--input", str(tmp_path / "none.json")], "cannot read"),
                          (["--input", str(REPO / "params.yaml")], "is not JSON"),
                          (["--input", str(FIXTURE), "--all-commits"], "cannot apply to it")):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("exp-show: error: ") and message in err[0], err
    (tmp_path / "list.json").write_text('{"rev": "workspace"}')
    assert main(["--input", str(tmp_path / "list.json")]) == 2
    assert "not a `dvc exp show --json` output" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "pipelines.experiments", "--root", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("exp-show: error: dvc exp show failed"), done.stderr
    assert len(done.stderr.splitlines()) == 1
