"""The stages' one error path: every stage script ends a bad input in one line ``<stage>: error: ...``, exit 2.

As subprocesses, one bad input per script (a missing or invalid parameter file, a missing input
folder), all started at once so that their imports overlap; then :func:`stages.common.run_stage`
in-process: a ``TCLError`` is one line and exit 2 (or the error's ``exit_status``), a full disk
exit 1, Ctrl-C 130, anything else keeps its traceback; and, by reading the scripts, that the
stages catch nothing themselves.
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import run_stage
from tcl.atomic import DiskFullError
from tcl.errors import ConfigError, TCLError
from tcl.tracking.registry import RegistryError

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "stages"
HELPERS = {"common"}  # stages/ modules that are not stage scripts

# stage: (arguments, with {tmp} for the test's folder; a part of the error line). Where a bad input that needs
# no parameter file exists, it is used: reading one imports tcl.config, hence torch (seconds per process).
CASES = {
    "convert_coco_object": (["--root", "{tmp}/nowhere", "--out", "{tmp}/out"], "annotations/train2017 not found"),
    "download": (["--source", "synthetic", "--params", "{tmp}/missing.yaml", "--out", "{tmp}/out"],
                 "parameter file not found"),
    "evaluate": (["--all-benchmarks", "--params", "{tmp}/unknown-key.yaml", "--out-dir", "{tmp}/out"],
                 "one of the arguments --checkpoint --clip is required (see --help)"),
    "prepare_clip": (["--params", "{tmp}/unknown-key.yaml", "--out", "{tmp}/out"], "unknown key 'train.bogus'"),
    "register": (["--params", str(ROOT / "params.yaml"), "--checkpoint", "{tmp}/best.pt", "--report",
                  "{tmp}/report.json", "--out", "{tmp}/out/registered.json"],
                 "report.json: no mean mIoU ([Errno 2] No such file or directory"),
    "report": (["--inputs", "{tmp}/nowhere", "--out", "{tmp}/out"], "nowhere not found: run stages/evaluate.py"),
    "synthetic": (["--pairs", "0", "--out", "{tmp}/out"], "synthetic: error: pairs: must be >= 1, got 0"),
    "train": (["--params", "{tmp}/missing.yaml", "--out", "{tmp}/out", "--metrics", "{tmp}/out"],
              "parameter file not found"),
}


def _stage_scripts() -> list[str]:
    return sorted(p.stem for p in STAGES.glob("*.py") if p.stem not in HELPERS and not p.stem.startswith("_"))


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "NO_ALBUMENTATIONS_UPDATE": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}


def test_every_stage_script_has_a_case():
    assert _stage_scripts() == sorted(CASES)


def test_each_stage_ends_a_bad_input_in_one_line_with_exit_2(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["bogus"] = 1
    (tmp_path / "unknown-key.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "best.pt").write_bytes(b"not read: the stage fails before")
    running = {}
    for stage, (argv, _) in CASES.items():  # all at once: each spends most of its time importing
        command = [sys.executable, str(STAGES / f"{stage}.py"), *(a.format(tmp=tmp_path) for a in argv)]
        running[stage] = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
    failures = []
    for stage, process in running.items():
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        lines = err.splitlines()
        expected = CASES[stage][1]
        if not (process.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{stage}: error: ")
                and expected in lines[0]):
            failures.append(f"{stage}: exit {process.returncode}, stderr {err!r}, stdout {out[-300:]!r}")
    assert failures == []
    assert not (tmp_path / "out").exists()  # no stage wrote anything
    assert not (tmp_path / "mlflow.db").exists()  # nor opened a run


def _handlers(stage: str) -> list[str]:
    """The exception names of every ``except`` clause in ``stages/<stage>.py`` that handles the error itself
    (``*`` for a bare one); a clause that raises another exception (argparse's ArgumentTypeError for a bad
    option value) translates it and is not counted."""
    names = []
    for node in ast.walk(ast.parse((STAGES / f"{stage}.py").read_text())):
        if isinstance(node, ast.ExceptHandler) and not any(isinstance(n, ast.Raise) for n in ast.walk(node)):
            caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type] if node.type else []
            names += [ast.unparse(c) for c in caught] or ["*"]
    return names


@pytest.mark.parametrize("stage", sorted(CASES))
def test_stages_catch_nothing_themselves_and_end_through_run_stage(stage):
    text = (STAGES / f"{stage}.py").read_text()
    assert "return run_stage(PROG, " in text
    assert [name for name in _handlers(stage)] == []


def _demo(capsys, work, **kwargs) -> tuple[int, list[str]]:
    status = run_stage("demo", work, **kwargs)
    captured = capsys.readouterr()
    assert captured.out == ""
    return status, captured.err.splitlines()


def _raise(err: BaseException):
    def work():
        raise err
    return work


def test_run_stage_turns_a_tcl_error_into_one_line_and_exit_2(capsys):
    assert _demo(capsys, _raise(ConfigError("train.steps: must be >= 1, got 0"))) == (
        2, ["demo: error: train.steps: must be >= 1, got 0"])
    assert _demo(capsys, _raise(TCLError("any library error"))) == (2, ["demo: error: any library error"])


def test_run_stage_exits_with_the_status_an_error_asks_for(capsys):
    assert _demo(capsys, _raise(RegistryError("registering x failed (MlflowException: gone)"))) == (
        1, ["demo: error: registering x failed (MlflowException: gone)"])


def test_run_stage_reports_a_full_disk_in_one_line_and_exit_1(capsys, tmp_path):
    target = tmp_path / "latest.pt"
    assert _demo(capsys, _raise(DiskFullError(errno.ENOSPC, target)), after_disk_full=lambda: "resume from x") == (
        1, [f"demo: error: no space left on device writing {target} (free space on that disk, then rerun; "
            "resume from x)"])
    assert _demo(capsys, _raise(DiskFullError(errno.EFBIG, target))) == (
        1, [f"demo: error: file too large for the file-size limit (ulimit -f) writing {target} "
            "(raise the limit, then rerun)"])


def test_run_stage_ends_ctrl_c_with_130(capsys):
    assert _demo(capsys, _raise(KeyboardInterrupt())) == (130, ["demo: interrupted"])
    assert _demo(capsys, _raise(KeyboardInterrupt()), after_interrupt=lambda: "data/x left as it was") == (
        130, ["demo: interrupted: data/x left as it was"])


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("k"), OSError(errno.EACCES, "Permission denied")])
def test_run_stage_lets_anything_else_through_with_its_traceback(capsys, bug):
    with pytest.raises(type(bug)):
        run_stage("demo", _raise(bug))
    assert capsys.readouterr().err == ""


def test_run_stage_returns_the_work_s_status(capsys):
    assert _demo(capsys, lambda: None) == (0, [])
    assert _demo(capsys, lambda: 143) == (143, [])
