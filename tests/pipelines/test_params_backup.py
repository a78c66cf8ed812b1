"""Overrides hold for one run only: ``params.yaml`` comes back byte for byte however the run ends.

The restore path directly (an exception, a process SIGKILLed inside the block, a file edited by hand
after the crash) and through ``python -m pipelines.run`` on a stand-in project whose one stage
records the ``train.steps`` it ran with: after ``-S train.steps=5`` (which succeeds, fails, or SIGKILLs
the orchestrator mid-stage) and after ``--exp``, the next plain run trains the file's value.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from pipelines.params_backup import BACKUP_FILE, KEPT_SUFFIX, overrides_applied, recover

from .conftest import REPO, git, init_repo, run_python

#: The stage records its steps; it fails when told to, or SIGKILLs the orchestrator (the lock's holder PID).
STAGE = """import json, os, pathlib, signal, sys
steps = sys.argv[1]
pathlib.Path("steps.txt").write_text(steps + "\\n")
if pathlib.Path("fail_me").exists():
    sys.exit("stage failed on purpose")
if pathlib.Path("kill_me").exists():
    pathlib.Path("kill_me").unlink()
    os.kill(json.loads(pathlib.Path(".dvc/tmp/tcl-pipeline.lock").read_text())["pid"], signal.SIGKILL)
"""
DVC_YAML = {"stages": {
    "synthetic": {"cmd": "mkdir -p data/synthetic && echo x > data/synthetic/x", "outs": ["data/synthetic"]},
    "train": {"cmd": "python stage.py ${train.steps}", "deps": ["stage.py", "data/synthetic"],
              "params": ["train.steps"], "outs": [{"steps.txt": {"cache": False}}]},
}}


@pytest.fixture()
def project(tmp_path):
    root = init_repo(tmp_path / "project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "stage.py").write_text(STAGE)
    (root / ".gitignore").write_text("/data\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "stand-in project")
    return root


def _steps_in_file(root) -> int:
    return yaml.safe_load((root / "params.yaml").read_text())["train"]["steps"]


def _run(root, *args: str):
    # from the repository (where `pipelines` imports from, as under make run), on the project given by --root
    return run_python(["-m", "pipelines.run", "--no-tracking", "--root", str(root), *args], REPO, timeout=300)


def test_the_block_restores_params_yaml_after_an_exception(tmp_path):
    (tmp_path / ".dvc").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(RuntimeError), overrides_applied(tmp_path, [("train.steps", 5)], command="test"):
        assert _steps_in_file(tmp_path) == 5 and (tmp_path / BACKUP_FILE).is_file()
        raise RuntimeError("a stage failed")
    assert (tmp_path / "params.yaml").read_text() == before and not (tmp_path / BACKUP_FILE).exists()


def test_a_process_killed_inside_the_block_is_undone_by_recover_unless_the_file_was_edited_since(tmp_path):
    (tmp_path / ".dvc").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    crash = ("import os, signal, sys; from pipelines.params_backup import overrides_applied\n"
             "with overrides_applied(sys.argv[1], [('train.steps', 5)], command='crash test'):\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    for edited in (False, True):
        done = run_python(["-c", crash, str(tmp_path)], REPO)
        assert done.returncode == -signal.SIGKILL
        assert _steps_in_file(tmp_path) == 5 and (tmp_path / BACKUP_FILE).is_file()  # the crash left both
        if edited:  # the user changed params.yaml after the crash: never overwritten, the original kept aside
            (tmp_path / "params.yaml").write_text(before.replace("  steps: 40\n", "  steps: 7\n"))
        lines = []
        assert recover(tmp_path, lines.append)
        assert not (tmp_path / BACKUP_FILE).exists() and len(lines) == 1
        if edited:
            assert _steps_in_file(tmp_path) == 7 and "left as it is" in lines[0]
            assert (tmp_path / ("params.yaml" + KEPT_SUFFIX)).read_text() == before
        else:
            assert (tmp_path / "params.yaml").read_text() == before and "crash test" in lines[0]
    assert not recover(tmp_path, lines.append)  # nothing left to do


@pytest.mark.slow
def test_make_run_overrides_never_leak_into_the_next_run_even_after_a_failure_or_sigkill(project):
    before = (project / "params.yaml").read_text()
    default = _steps_in_file(project)

    done = _run(project, "-S", "train.steps=5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "steps.txt").read_text() == "5\n"  # the run used the override ...
    assert (project / "params.yaml").read_text() == before  # ... and left the file as it was
    done = _run(project)  # the next plain run trains the file's value (DVC sees train's parameter changed)
    assert done.returncode == 0 and (project / "steps.txt").read_text() == f"{default}\n", done.stdout + done.stderr

    (project / "fail_me").touch()
    failed = _run(project, "-S", "train.steps=6")
    assert failed.returncode == 1 and (project / "params.yaml").read_text() == before, failed.stdout + failed.stderr
    (project / "fail_me").unlink()

    (project / "kill_me").touch()
    killed = _run(project, "-S", "train.steps=7")  # the stage SIGKILLs the orchestrator: no finally runs
    assert killed.returncode == -signal.SIGKILL and _steps_in_file(project) == 7
    done = _run(project)  # the next start puts params.yaml back before reading it
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run: params.yaml restored" in done.stdout and "train.steps=7" in done.stdout
    assert (project / "params.yaml").read_text() == before and (project / "steps.txt").read_text() == f"{default}\n"
    assert not (project / BACKUP_FILE).exists()


@pytest.mark.slow
def test_an_experiment_run_restores_params_yaml_too(project):
    before = (project / "params.yaml").read_text()
    done = _run(project, "--exp", "five", "-S", "train.steps=5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "params.yaml").read_text() == before and not (project / BACKUP_FILE).exists()
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=project, capture_output=True,
                           text=True)
    assert shown.returncode == 0 and '"five"' in shown.stdout  # the experiment itself keeps its steps
    assert json.loads(shown.stdout) and (project / "steps.txt").read_text() == "5\n"
