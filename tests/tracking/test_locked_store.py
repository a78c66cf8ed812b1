"""Exactly-once metrics (held until a checkpoint, replayed without duplicates) and the embedded SQLite store
locked by another process: the tracker waits for it, ends the run once it is back within ``finish``'s
time, and a run it could not end is closed by the next start in its experiment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tcl.tracking import RunTracker
from tcl.tracking.transport import probe
from tests.sqlite_lock import SqliteLock

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def steps(client, run_id: str, key: str = "loss") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_held_metrics_reach_the_store_on_release_and_replay_adds_only_what_is_missing(store):
    uri, client = store
    run = RunTracker.start("train", tracking_uri=uri, hold_metrics=True)
    for step in range(1, 6):
        run.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step=step)
    assert run.flush(30) and steps(client, run.run_id) == []  # held: no checkpoint covers them yet
    carried = run.unconfirmed_metrics(3)
    assert sorted((k, s) for k, _, _, s in carried) == sorted((k, s) for k in ("loss", "lr") for s in (1, 2, 3))
    run.release(3)
    assert run.flush(30) and steps(client, run.run_id) == [1, 2, 3]
    assert run.unconfirmed_metrics(3) == []  # stored: nothing left for a checkpoint to carry
    everything = carried + run.unconfirmed_metrics(5)  # steps 1-3 are stored already, 4-5 are not
    run.replay_metrics(everything)
    run.replay_metrics(everything)
    run.finish()
    assert steps(client, run.run_id) == [1, 2, 3, 4, 5] and steps(client, run.run_id, "lr") == [1, 2, 3, 4, 5]
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [1.0, 0.5, 1 / 3, 0.25, 0.2]


def test_finish_drops_held_metrics_no_checkpoint_covers(store):
    uri, client = store
    run = RunTracker.start("train", tracking_uri=uri, hold_metrics=True)
    run.log_metrics({"loss": 1.0}, step=1)
    run.release(1)
    run.log_metrics({"loss": 2.0}, step=2)  # computed again by a resumed run
    run.finish("FAILED")
    assert steps(client, run.run_id) == [1] and run.dropped == 0


def test_probe_tells_a_locked_sqlite_store(store, tmp_path):
    uri, client = store
    client.search_experiments()  # creates mlflow.db
    assert probe(uri) is None
    with SqliteLock(tmp_path / "mlflow.db"):
        reason = probe(uri, timeout=0.5)
        assert reason is not None and "locked" in reason
    assert probe(uri) is None
    assert probe(f"sqlite:///{tmp_path / 'absent.db'}") is None and not (tmp_path / "absent.db").exists()


OWNER = textwrap.dedent("""
    import sys
    from tcl.tracking import RunTracker

    run = RunTracker.start("owner", tracking_uri=sys.argv[1], stage="train")
    run.log_metrics({"loss": 1.0}, step=1)
    assert run.flush(60)
    print(run.run_id, flush=True)
    sys.stdin.readline()  # the test locks the store meanwhile
    run.log_metrics({"loss": 2.0}, step=2)
    print("finishing", flush=True)
    run.finish(timeout=float(sys.argv[2]))
""")


def start_owner(uri: str, finish_timeout: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, uri, str(finish_timeout)], cwd=ROOT, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_id = owner.stdout.readline().strip()
    assert run_id, owner.communicate(timeout=60)[1][-2000:]
    return owner, run_id


@pytest.mark.slow  # ~40 s: MLflow's first write to the locked store blocks for 20 s before it fails
def test_a_store_unlocked_during_finish_gets_the_queue_and_the_end_of_the_run(store, tmp_path):
    uri, client = store
    owner, run_id = start_owner(uri, finish_timeout=60)
    with SqliteLock(tmp_path / "mlflow.db"):
        owner.stdin.write("go\n")
        owner.stdin.flush()
        assert owner.stdout.readline().strip() == "finishing"
        seen = []
        for line in owner.stderr:  # bounded: the owner gives up after 54 s and exits
            seen.append(line)
            if "went away" in line and "TrackingWarning" in line:
                time.sleep(3)  # longer than one probe: finish() must keep waiting for the store
                break  # the tracker took the store for down while finish() runs: now unlock
    _, err = owner.communicate(timeout=120)  # finish() sees the store back, delivers and returns
    assert owner.returncode == 0, err[-2000:]
    assert any("locked" in line and "went away" in line for line in seen), "".join(seen)[-2000:]
    assert client.get_run(run_id).info.status == "FINISHED" and steps(client, run_id) == [1, 2]


def test_a_run_left_running_by_a_locked_store_is_closed_by_the_next_start(store, tmp_path):
    uri, client = store
    owner, run_id = start_owner(uri, finish_timeout=2)
    with SqliteLock(tmp_path / "mlflow.db"):
        owner.stdin.write("go\n")
        owner.stdin.flush()
        _, err = owner.communicate(timeout=120)  # finish() gives up while the lock is held
    assert owner.returncode == 0, err[-2000:]
    assert client.get_run(run_id).info.status == "RUNNING"  # the owner is gone, the run is not ended

    with pytest.warns(UserWarning, match=r"1 run\(s\) left RUNNING by a process that had ended set to FAILED"):
        nxt = RunTracker.start("next", tracking_uri=uri)
    closed = client.get_run(run_id)
    assert closed.info.status == "FAILED" and nxt.run_id in closed.data.tags["tcl.closed_by"]
    again = RunTracker.start("again", tracking_uri=uri)  # "next" is owned by a living process: left alone
    assert client.get_run(nxt.run_id).info.status == "RUNNING"
    again.finish()
    nxt.finish()
    assert client.get_run(nxt.run_id).info.status == "FINISHED"
