"""A real Prefect server, work pool and process worker on 127.0.0.1 for the scale suite (docs/scale/prefect.md).

Everything is started as a subprocess of the test through Prefect's own command line, exactly as a user
types it, with a private ``PREFECT_HOME`` (and its SQLite database) in the test's temporary folder.
Each long-lived process gets its own session; stopping it stops its whole tree by PID (the process
worker starts every flow run in a new process group of its own, so killing the worker's group alone
would leave a flow run behind).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

__all__ = ["PREFECT", "prefect_env", "prefect_cli", "start_logged", "wait_for_health", "stop_tree"]

#: The ``prefect`` command of this interpreter's environment (the project's .venv).
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """The environment of every Prefect command here: a private home and database, this server, no network."""
    env = {key: value for key, value in os.environ.items()
           # the copy's own code must be imported (not a worktree's via PYTHONPATH); MLflow goes to the copy's mlflow.db
           if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI") and not key.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # as the Makefile: Prefect's server needs ~20 s to start on 2 busy cores
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "DVC_NO_ANALYTICS": "1",
        # the interpreter's scripts (python, torchrun, dvc, prefect) first, as `source .venv/bin/activate` does
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    })
    return env


def prefect_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    """``prefect <args>`` (no prompts: stdin is not a terminal); its output, or an AssertionError naming the failure."""
    done = subprocess.run([PREFECT, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def start_logged(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """A long-lived command in its own session, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_health(process: subprocess.Popen, api_url: str, log: Path, timeout: float = 180) -> None:
    """Until the server answers ``/health`` (bounded); raises with the log's tail if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{api_url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s: {log.read_text()[-3000:]}")


def stop_tree(process: subprocess.Popen, grace: float = 30) -> list[int]:
    """SIGTERM ``process``'s group, ``grace`` seconds, then SIGKILL to it and every descendant left (by PID,
    descendants listed before the first signal: they may sit in groups of their own). The PIDs still
    alive afterwards (none, unless something ignores SIGKILL)."""
    if process.poll() is not None:
        process.wait()
        return []
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    _, alive = psutil.wait_procs(tree, timeout=1)
    for proc in alive:  # psutil checks each is still the process listed (not a reused PID)
        try:
            if proc.is_running() and os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)  # a group leader: what it started in its group too
            proc.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)
    _, alive = psutil.wait_procs(tree, timeout=15)
    return [proc.pid for proc in alive]
