"""MLflow history of the real training stage in the embedded store: after a SIGKILL and a resume every
metric has one point per step, equal to an uninterrupted run's, with 1 and 2 processes, also when the
store was locked at the kill; with the store locked from mid-run until training ended, the run still ends FINISHED."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sqlite_lock import SqliteLock
from tests.train.conftest import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "stages" / "train.py"
STEPS, CHECKPOINT_EVERY = 20, 10  # a tiny step takes ~0.1 s: the kill, however late, lands mid-run
TIMING = {"train/samples_per_s"}  # measured time: the only value two identical runs do not share


def start_stage(tmp: Path, name: str, params_file: Path, procs: int = 1) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc-per-node", str(procs)]
    command = [*launcher, str(STAGE), "--params", str(params_file), "--clip", str(tmp / "clip"),
               "--out", str(tmp / name / "out"), "--metrics", str(tmp / name / "metrics")]
    # cwd: the validation benchmark's data lies under tmp; own session: a SIGKILL takes all torchrun processes
    return subprocess.Popen(command, cwd=tmp, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_to_end(process: subprocess.Popen, on_line=None) -> str:
    output = []
    for line in process.stdout:  # bounded: the stage ends after its steps
        output.append(line)
        if on_line is not None:
            on_line(line)
    process.wait(timeout=300)
    return "".join(output)


def kill_mid_run(process: subprocess.Popen, name: str) -> int:
    """SIGKILL the stage once it reports step 13, three steps after the checkpoint of step 10 (steps that
    reached the store at once before metrics were held); returns the checkpoint's step."""
    from mlflow.tracking import MlflowClient

    from tcl.checkpoint import read_checkpoint

    kill_at(process, f"step 13/{STEPS}")
    step = read_checkpoint(Path.cwd() / name / "out" / "latest.pt")["step"]
    assert CHECKPOINT_EVERY <= step < STEPS
    _, stored = histories(MlflowClient(os.environ["MLFLOW_TRACKING_URI"]), name)
    assert max((s for points in stored.values() for s, _ in points), default=0) <= step  # held until a checkpoint
    return step


def kill_at(process: subprocess.Popen, prefix: str, before_kill=None) -> None:
    for line in process.stdout:  # bounded: the stage ends after its steps at the latest
        if line.startswith(prefix):
            if before_kill is not None:
                before_kill()
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def histories(client, name: str) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """The run id of the training run whose checkpoints went to ``<cwd>/name``, and every metric's history."""
    from tcl.checkpoint import read_checkpoint

    run_id = read_checkpoint(Path.cwd() / name / "out" / "latest.pt")["extra"]["mlflow_run_id"]
    keys = client.get_run(run_id).data.metrics
    return run_id, {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def curve_points(metrics: Path) -> dict[str, list[tuple[int, float]]]:
    """train_curve.csv and val_curve.csv as MLflow keys -> [(step, value)]."""
    points: dict[str, list[tuple[int, float]]] = {}
    for prefix in ("train", "val"):
        path = metrics / f"{prefix}_curve.csv"
        if not path.is_file():
            continue
        with path.open() as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key != "step" and value != "":
                        points.setdefault(f"{prefix}/{key}", []).append((int(row["step"]), float(value)))
    return points


def assert_once_per_step(history: dict, curve: dict, steps: list[int]) -> None:
    assert history.keys() == curve.keys()
    for key, points in history.items():
        assert [s for s, _ in points] == [s for s, _ in curve[key]], key  # one point per step, no duplicate
        assert [round(v, 6) for _, v in points] == [v for _, v in curve[key]], key  # the curve rounds to 6 places
    assert [s for s, _ in history["train/loss"]] == steps


@pytest.fixture()
def project(tmp_path, tiny_clip_dir, tiny_shards, monkeypatch):
    """A tmp folder (the cwd) with the tiny CLIP (as ``clip``), the validation data and the store."""
    from tests.eval.conftest import write_layout

    (tmp_path / "clip").symlink_to(tiny_clip_dir, target_is_directory=True)
    write_layout(tmp_path, "voc", split="train", images=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def params_with_validation(project: Path, shards: Path) -> Path:
    raw = tiny_params(shards, steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, val_every=10,
                      val_benchmarks=["t_synthetic_voc"])
    raw["evaluate"] = {"data_roots": {"synthetic_voc": "data/VOCdevkit/VOC2012"}, "num_workers": 0, "overlays": 0,
                       "protocols": {"synthetic": {"short_side": 24, "long_side": 64, "crop": 16, "stride": 8}}}
    return write_params(project / "params.yaml", raw)


@pytest.mark.slow  # ~60 s: three runs of the training stage
def test_a_resumed_run_has_one_point_per_step_equal_to_an_uninterrupted_run(project, tiny_shards):
    from mlflow.tracking import MlflowClient

    params_file = params_with_validation(project, tiny_shards)
    reference = start_stage(project, "a", params_file)
    assert run_to_end(reference) and reference.returncode == 0

    victim = start_stage(project, "b", params_file)
    kill_mid_run(victim, "b")  # the steps after latest.pt's were computed and are computed again
    resumed = start_stage(project, "b", params_file)
    output = run_to_end(resumed)
    assert resumed.returncode == 0 and "resumed from" in output, output[-3000:]

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_a, a = histories(client, "a")
    run_b, b = histories(client, "b")
    assert run_a != run_b and client.get_run(run_b).info.status == "FINISHED"
    assert {"train/loss", "train/grad_norm", "train/lr", "val/avg_miou", "val/t_synthetic_voc_miou"} <= a.keys()
    assert a.keys() == b.keys()
    for key in a:
        assert [s for s, _ in b[key]] == [s for s, _ in a[key]], key
        if key not in TIMING:
            assert b[key] == a[key], key  # bit-identical training: the same values
    assert [s for s, _ in b["train/loss"]] == list(range(1, STEPS + 1))
    assert [s for s, _ in b["val/avg_miou"]] == [10, 20]
    assert_once_per_step(b, curve_points(project / "b" / "metrics"), list(range(1, STEPS + 1)))


@pytest.mark.slow  # ~60 s: two runs of the training stage under torchrun
def test_a_resumed_two_process_run_has_one_point_per_step(project, tiny_shards):
    from mlflow.tracking import MlflowClient

    params = tiny_params(tiny_shards, steps=STEPS, checkpoint_every=CHECKPOINT_EVERY)
    params_file = write_params(project / "params.yaml", params)
    kill_mid_run(start_stage(project, "b", params_file, procs=2), "b")  # every process at once
    resumed = start_stage(project, "b", params_file, procs=2)
    output = run_to_end(resumed)
    assert resumed.returncode == 0 and "resumed from" in output, output[-3000:]

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id, history = histories(client, "b")
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1  # rank 1 logs nothing
    assert client.get_run(run_id).data.params["derived.world_size"] == "2"
    assert_once_per_step(history, curve_points(project / "b" / "metrics"), list(range(1, STEPS + 1)))


@pytest.mark.slow  # ~60 s: two runs of the training stage, MLflow's first write to the locked store waits 20 s
def test_steps_a_checkpoint_covers_reach_the_store_even_if_it_was_locked_when_the_run_was_killed(project,
                                                                                                 tiny_shards):
    from mlflow.tracking import MlflowClient

    params_file = write_params(project / "params.yaml", tiny_params(tiny_shards, checkpoint_every=3))
    lock = SqliteLock(project / "mlflow.db")
    victim = start_stage(project, "b", params_file)
    try:
        for line in victim.stdout:  # bounded: the stage ends after its steps at the latest
            if line.startswith("step 1/6"):
                lock.acquire()  # nothing of steps 1-3 is stored before the kill: the checkpoint carries them
                break
        kill_at(victim, "step 5/6")
    finally:
        lock.release()
    resumed = start_stage(project, "b", params_file)
    output = run_to_end(resumed)
    assert resumed.returncode == 0 and "resumed from" in output, output[-3000:]

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id, history = histories(client, "b")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_once_per_step(history, curve_points(project / "b" / "metrics"), [1, 2, 3, 4, 5, 6])


@pytest.mark.slow  # ~50 s: the stage, MLflow's first write to the locked store waits 20 s
def test_a_store_locked_until_training_ended_gets_every_step_and_the_end_of_the_run(project, tiny_shards):
    from mlflow.tracking import MlflowClient

    params_file = write_params(project / "params.yaml", tiny_params(tiny_shards))
    lock, seen = SqliteLock(project / "mlflow.db"), set()

    def lock_then_unlock(line: str) -> None:
        if line.startswith("step 2/6"):
            lock.acquire()  # the release of steps 1-2 right after this line meets the lock
        seen.update(key for key in ("step 6/6", "went away") if key in line)
        if len(seen) == 2 and lock.proc is not None:  # training is over, the tracker took the store for down
            time.sleep(3)  # longer than one probe: finish() must keep waiting for the store
            lock.release()

    try:
        output = run_to_end(start_stage(project, "b", params_file), lock_then_unlock)
    finally:
        lock.release()
    assert "train: done at step 6" in output and "reachable again" in output, output[-3000:]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id, history = histories(client, "b")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_once_per_step(history, curve_points(project / "b" / "metrics"), [1, 2, 3, 4, 5, 6])
