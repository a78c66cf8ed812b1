"""Path 4 of the scale-out suite: a DVC remote. A tiny pipeline run in a clone of this checkout's HEAD is
pushed to a remote; a fresh clone of that project pulls it and DVC finds every stage up to date.

The remotes are real DVC remotes: a local folder, and an S3 bucket on a local S3-compatible server
(moto's, 127.0.0.1 only) through the dvc-s3 plugin when both are installed (the ``scale`` extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipelines.conftest import TINY, git

from .train_nodes import REPO, RUN_TIMEOUT, assert_succeeded, free_port, start_two_nodes, stop_nodes

#: tests/pipelines' tiny pipeline (a few dozen pairs, two training steps), one benchmark and one baseline.
TINY_REMOTE = TINY + [
    "train.steps=2", "train.ust_steps=1", "train.warmup_steps=1", "train.log_every=1", "train.image_every=0",
    "train.checkpoint_every=2", "train.val_every=0", "evaluate.num_workers=0", "evaluate.overlays=1",
    "evaluate.bg_thresh_candidates=[0.4, 0.5]", "evaluate.benchmarks=[synthetic_voc]",
    "pipeline.baselines=[maskclip]",
]
UP_TO_DATE = "Data and pipelines are up to date."


def tool_env() -> dict[str, str]:
    from pipelines.dvc_cli import tool_env as project_tool_env

    env = project_tool_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own ./mlflow.db
    return env


def run(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def dvc(cwd: Path, *args: str, timeout: float = 600, env: dict | None = None) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, timeout, env).stdout


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


@pytest.fixture(scope="module")
def ran_project(tmp_path_factory) -> Path:
    """A git clone of this checkout's committed HEAD, its params.yaml made tiny and committed, the whole
    pipeline run by ``python -m pipelines.run`` (what ``make run`` runs) and its results committed."""
    from pipelines.overrides import parse_overrides, write_overrides

    root = tmp_path_factory.mktemp("remote") / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True, capture_output=True, timeout=120)
    write_overrides(root / "params.yaml", parse_overrides(TINY_REMOTE))
    commit_all(root, "tiny parameters")
    start = time.monotonic()
    run([sys.executable, "-m", "pipelines.run"], root, timeout=1800)
    print(f"tiny pipeline: {time.monotonic() - start:.0f} s")
    commit_all(root, "pipeline run: dvc.lock and metrics")
    return root


def stage_names(root: Path) -> set[str]:
    return set(dvc(root, "stage", "list", "--name-only").split())


def assert_pulled_clone_is_up_to_date(origin: Path, clone: Path, env: dict | None = None) -> None:
    """A fresh clone of ``origin`` pulls from the default remote; ``dvc status`` and ``dvc repro`` then
    find every stage up to date (repro names each as skipped and runs none)."""
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True, timeout=120)
    assert not (clone / "models" / "tcl").exists()
    dvc(clone, "pull", env=env)
    assert (clone / "models" / "tcl" / "best.pt").is_file() and (clone / "data" / "synthetic" / "shards").is_dir()
    assert dvc(clone, "status").strip() == UP_TO_DATE
    repro = dvc(clone, "repro")
    assert "Running stage" not in repro, repro
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", repro))
    assert skipped == stage_names(clone), repro
    assert UP_TO_DATE in repro
    # what `make run` runs: nothing to do, so no MLflow run is opened either
    done = run([sys.executable, "-m", "pipelines.run"], clone, timeout=600)
    assert "up to date" in done.stdout, done.stdout


def test_local_remote_push_then_a_fresh_clone_pulls_and_nothing_reruns(ran_project, tmp_path):
    remote = tmp_path / "dvc-remote"
    dvc(ran_project, "remote", "add", "-d", "storage", str(remote))
    commit_all(ran_project, "DVC remote: a local folder")
    pushed = dvc(ran_project, "push")
    assert re.search(r"\d+ files? pushed", pushed), pushed
    assert "Everything is up to date" in dvc(ran_project, "push")  # a second push has nothing to send
    assert_pulled_clone_is_up_to_date(ran_project, tmp_path / "clone")


def _s3_plugins_missing() -> str:
    missing = [name for name in ("dvc_s3", "moto") if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed (pip install -e '.[scale]')" if missing else ""


@pytest.mark.skipif(bool(_s3_plugins_missing()), reason=_s3_plugins_missing() or "installed")
def test_s3_remote_on_a_local_s3_server_push_then_pull(ran_project, tmp_path):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # moto's S3 server takes any credentials; DVC reads them from the standard AWS variables.
    env = {**tool_env(), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with (tmp_path / "moto.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        _wait_for_http(endpoint, server, timeout=120)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/tcl-dvc", method="PUT"), timeout=30).close()
        dvc(ran_project, "remote", "add", "-d", "-f", "s3", "s3://tcl-dvc/project")
        dvc(ran_project, "remote", "modify", "s3", "endpointurl", endpoint)
        commit_all(ran_project, "DVC remote: S3 (local server)")
        pushed = dvc(ran_project, "push", env=env)
        assert re.search(r"\d+ files? pushed", pushed), pushed
        listing = urllib.request.urlopen(f"{endpoint}/tcl-dvc?list-type=2", timeout=30).read().decode()
        assert "<Key>project/files/md5/" in listing  # the objects are in the bucket, in DVC's layout
        assert_pulled_clone_is_up_to_date(ran_project, tmp_path / "clone", env=env)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # the server leads its own group (start_new_session)
        server.wait(timeout=30)


def _wait_for_http(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the S3 server exited"
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no S3 server at {url} after {timeout:.0f} s")


def stages_run(repro_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", repro_output))


def test_multi_node_stages_by_hand_then_dvc_commit_as_operations_md_says(ran_project, tmp_path):
    """docs/scale-out.md: train and evaluate on two nodes by hand (the stages' own commands under
    torchrun), record them with ``dvc commit -f``, then ``dvc repro`` runs only what follows them."""
    from pipelines.overrides import parse_overrides, write_overrides

    root = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(ran_project), str(root)], check=True, capture_output=True, timeout=120)
    # the shared cache of a cluster (here the first project's): the outputs come back by links, no remote needed
    dvc(root, "config", "--local", "cache.dir", str(ran_project / ".dvc" / "cache"))
    dvc(root, "checkout")
    write_overrides(root / "params.yaml", parse_overrides(["train.steps=3"]))
    assert "train" in json.loads(dvc(root, "status", "--json", "train"))
    logs = tmp_path / "logs"
    # dvc.yaml's train command; --resume none: models/tcl/latest.pt is the one-process run's (another world size)
    train = ["stages/train.py", "--params", "params.yaml", "--clip", "models/clip", "--out", "models/tcl",
             "--metrics", "metrics", "--resume", "none"]
    # dvc.yaml's evaluate command: the threshold on the training split, then evaluate.benchmarks (synthetic_voc)
    evaluate = ["stages/evaluate.py", "--params", "params.yaml", "--all-benchmarks", "--checkpoint",
                "models/tcl/best.pt", "--choose-bg-thresh", "metrics/bg_thresh/tcl.json", "--out-dir",
                "metrics/eval", "--overlays", "metrics/overlays"]
    nodes = start_two_nodes(root, train[:-2], "tcl-1", logs / "resume")  # without --resume none: refused
    try:
        codes = [node.proc.wait(timeout=RUN_TIMEOUT) for node in nodes]
        assert all(codes), codes
        assert "was written by 1 process(es); this run has 2: resume with the same world size" in "".join(
            node.text() for node in nodes)
        nodes += start_two_nodes(root, train, "tcl-1", logs / "train")
        assert_succeeded(nodes[2:])
        dvc(root, "commit", "-f", "train")
        assert json.loads(dvc(root, "status", "--json", "train")) == {}
        nodes += start_two_nodes(root, evaluate, "tcl-eval-1", logs / "eval")
        assert_succeeded(nodes[4:])
    finally:
        stop_nodes(nodes)
    dvc(root, "commit", "-f", "evaluate")
    assert json.loads((root / "metrics/eval/synthetic_voc.json").read_text())["settings"]["world_size"] == 2
    assert json.loads((root / "metrics/bg_thresh/tcl.json").read_text())["settings"]["world_size"] == 2
    assert stages_run(dvc(root, "repro")) == {"report", "register"}
    assert dvc(root, "status").strip() == UP_TO_DATE
