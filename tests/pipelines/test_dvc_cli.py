"""Running DVC stages from Python: streamed output, failures as one exception, stale stages, the lock."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from pipelines import dvc_cli

from .conftest import init_repo

DVC_YAML = {"stages": {
    "first": {"cmd": "echo hello from first && echo 1 > a.txt", "outs": ["a.txt"]},
    "second": {"cmd": "cat a.txt > b.txt && echo second done", "deps": ["a.txt"], "outs": ["b.txt"]},
    "broken": {"cmd": "echo about to fail && exit 3", "deps": ["b.txt"]},
}}


@pytest.fixture()
def repo(tmp_path):
    root = init_repo(tmp_path / "repo")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    return root


def test_stages_run_through_dvc_with_streamed_output_and_become_up_to_date(repo):
    assert dvc_cli.stage_names(repo) == ["first", "second", "broken"]
    assert sorted(dvc_cli.stale_stages(repo, ["second"])) == ["first", "second"]
    lines: list[str] = []
    dvc_cli.repro("first", root=repo, on_line=lines.append)
    assert "hello from first" in lines  # the stage's own output, line by line
    tail = dvc_cli.repro("second", root=repo)
    assert "second done" in tail and (repo / "b.txt").read_text() == "1\n"
    assert dvc_cli.stale_stages(repo, ["second"]) == []
    assert any("didn't change, skipping" in line for line in dvc_cli.repro("second", root=repo))
    assert any("Running stage 'second'" in line for line in dvc_cli.repro("second", root=repo, force=True))


def test_a_failing_stage_raises_with_its_output(repo):
    dvc_cli.run_dvc(["repro", "second"], root=repo)  # the broken stage's upstream
    with pytest.raises(dvc_cli.DvcError) as caught:
        dvc_cli.repro("broken", root=repo)
    assert caught.value.returncode != 0 and "about to fail" in caught.value.tail
    assert "exited with 3" in str(caught.value) and "\n" not in str(caught.value)


def test_a_held_dvc_lock_is_waited_for(repo):
    from dvc.lock import make_lock

    lock = make_lock(str(repo / ".dvc" / "tmp" / "lock"))
    lock.lock()
    release = threading.Timer(3.0, lock.unlock)
    release.start()
    start = time.monotonic()
    try:
        dvc_cli.repro("first", root=repo)  # would fail at once with "Unable to acquire lock" without waiting
    finally:
        release.cancel()
        if lock.is_locked:
            lock.unlock()
    assert time.monotonic() - start >= 2.5 and (repo / "a.txt").exists()


def test_stage_environment_puts_this_interpreter_first(monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.setenv("PATH", "/usr/bin")
    env = dvc_cli.tool_env({"EXTRA": "1"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent) and env["EXTRA"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
