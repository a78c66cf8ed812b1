"""One pipeline run per checkout (the workspace lock), and a stopped or killed run stops everything it started.

Real processes throughout: ``python -m pipelines.run`` on a stand-in project whose one stage sleeps and
starts a helper in a session of its own (as torchrun starts its workers), so that a plain process-group
kill would miss it. Every descendant PID is read from /proc while the stage runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipelines.dvc_cli import tool_env
from pipelines.guard import descendants
from pipelines.lock import LOCK_FILE, WorkspaceBusy, WorkspaceLock

from .conftest import REPO, init_repo

SLEEPER = ("python -c \"import subprocess, sys, time; "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
           "time.sleep(120)\" && echo done > done.txt && mkdir -p data/synthetic")


@pytest.fixture()
def project(tmp_path):
    root = init_repo(tmp_path / "project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    # data/synthetic stands for what the real dvc.yaml makes, so make run's input check finds it produced.
    stage = {"cmd": SLEEPER, "outs": ["done.txt", "data/synthetic"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sleeper": stage}}))
    return root


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its parent has not collected it yet


@contextlib.contextmanager
def pipeline_running(root: Path, log: Path, *args: str, tracking: bool = False):
    """``pipelines.run`` in its own session, yielded once both sleeping processes run; (process, descendants).
    With ``tracking``, its MLflow parent run goes to the project's embedded store."""
    env = {key: value for key, value in tool_env().items() if key != "MLFLOW_TRACKING_URI"}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.run", "--root", str(root),
                                    *([] if tracking else ["--no-tracking"]), *args], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while sum("time.sleep(120)" in _cmdline(pid) for pid in tree) < 2:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the stage did not start: {log.read_text()}"
            time.sleep(0.3)
            tree = descendants(process.pid)
        yield process, tree
    finally:  # whatever the test did: nothing it started outlives it
        for pid in [process.pid, *tree]:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)


def _all_gone(pids: list[int], timeout: float = 90.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.3)
    return alive


def test_a_second_run_is_refused_naming_the_first_and_sigkill_of_the_first_stops_its_tree(project, tmp_path):
    with pipeline_running(project, tmp_path / "first.log", "-S", "train.steps=11") as (first, tree):
        names = " ".join(_cmdline(pid) for pid in tree)
        assert "dvc" in names and "guard.py" in names  # dvc runs under the guard
        second = subprocess.run([sys.executable, "-m", "pipelines.run", "--root", str(project), "--no-tracking",
                                 "-S", "train.steps=22"], cwd=REPO, env=tool_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and second.stdout == ""
        [line] = second.stderr.splitlines()
        assert line.startswith("run: error: the workspace") and f"PID {first.pid}," in line
        assert "command: python -m pipelines.run --root" in line and "train.steps=11" in line
        # the refused run changed nothing: params.yaml holds the first run's override, which its dvc repro used
        assert yaml.safe_load((project / "params.yaml").read_text())["train"]["steps"] == 11

        first.send_signal(signal.SIGKILL)  # cannot be caught: the guard sees its parent die
        assert first.wait(timeout=30) == -signal.SIGKILL
        assert _all_gone(tree) == [], [(pid, _cmdline(pid)) for pid in tree if _alive(pid)]
    with WorkspaceLock.acquire(project, "test") as lock:  # the kernel released the dead run's lock
        assert lock.held


# SIGINT and SIGHUP take the same path as SIGTERM (one handler in pipelines.run, one in the guard): slow suite only
@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                  pytest.param(signal.SIGHUP, marks=pytest.mark.slow)], ids=lambda sig: sig.name)
def test_a_stopped_run_stops_dvc_and_every_stage_process(project, tmp_path, stop):
    tracking = stop == signal.SIGTERM  # (once is enough: the MLflow parent run ends KILLED, not RUNNING)
    with pipeline_running(project, tmp_path / "run.log", tracking=tracking) as (process, tree):
        process.send_signal(stop)
        assert process.wait(timeout=120) == 128 + stop, (tmp_path / "run.log").read_text()
        assert _all_gone(tree) == [], [(pid, _cmdline(pid)) for pid in tree if _alive(pid)]
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log and not (project / "done.txt").exists()
    if tracking:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        [parent] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      "tags.tcl.run_name = 'pipeline'")
        assert parent.info.status == "KILLED"
    with WorkspaceLock.acquire(project, "test"):
        pass


def test_the_lock_records_its_holder_and_a_waiting_run_gets_it_when_freed(project):
    first = WorkspaceLock.acquire(project, "python -m pipelines.run -S a=1")
    assert (project / LOCK_FILE).is_file() and str(os.getpid()) in (project / LOCK_FILE).read_text()
    with pytest.raises(WorkspaceBusy) as refused:
        WorkspaceLock.acquire(project, "second")
    assert refused.value.holder["pid"] == os.getpid()
    assert "command: python -m pipelines.run -S a=1" in str(refused.value)

    threading.Timer(1.0, first.release).start()
    waited: list[str] = []
    with WorkspaceLock.acquire(project, "second", wait=True, on_wait=waited.append) as second:
        assert second.holder["command"] == "second" and waited and waited[0].startswith("waiting: ")


@pytest.mark.slow
def test_sigterm_to_make_run_during_training_checkpoints_then_stops_torchrun_and_its_workers(tmp_path):
    """The real train stage under torchrun, through dvc and the guard: SIGTERM → latest.pt written, nothing left."""
    from tcl.checkpoint import read_checkpoint

    from .conftest import TINY, copy_project

    root = copy_project(tmp_path / "project")
    overrides = [*TINY, "train.steps=100000", "train.ust_steps=1", "train.warmup_steps=1", "train.log_every=1",
                 "train.image_every=0", "train.checkpoint_every=100000", "train.val_every=0"]
    args = [item for override in overrides for item in ("-S", override)]
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.run", "--no-tracking", *args, "train"],
                                   cwd=root, env=tool_env(), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 900
        while "step 3/100000" not in log.read_text():  # the upstream stages first, then a few training steps
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1.0)
        tree = descendants(process.pid)
        assert any("stages/train.py" in _cmdline(pid) and "torchrun" not in _cmdline(pid) for pid in tree)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert _all_gone(tree) == [], [(pid, _cmdline(pid)) for pid in tree if _alive(pid)]
    finally:
        for pid in [process.pid, *tree]:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert (root / "models/tcl/latest.pt").is_file(), log.read_text()[-4000:]
    assert read_checkpoint(root / "models/tcl/latest.pt")["step"] >= 3  # written on the way out
    assert "stopped at step" in log.read_text()
