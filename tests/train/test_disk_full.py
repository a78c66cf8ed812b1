"""A full disk while writing outputs: one line naming the file, the previous checkpoint intact, no temporaries left.

The failures are real: ENOSPC from the kernel (writing /dev/full; a size-limited tmpfs in a private mount
namespace where this machine allows one) and EFBIG from a file-size limit (``RLIMIT_FSIZE``) set in the
stage's process, which fails the stage's real ``torch.save`` of its checkpoint.
"""

from __future__ import annotations

import errno
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from tcl.atomic import DiskFullError, atomic_path, remove_stale_temporaries, write_text_atomic
from tcl.checkpoint import read_checkpoint
from tcl.config import load_params
from tcl.train.trainer import train
from tests.train.conftest import tiny_params, write_params
from tests.train.test_trainer import ROOT, STAGE, stage_env


def _fill_dev_full() -> None:
    with open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")  # ENOSPC, from the kernel


def test_a_full_disk_names_the_target_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    write_text_atomic(target, "previous\n")
    with pytest.raises(DiskFullError) as caught, atomic_path(target):
        _fill_dev_full()
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert str(caught.value) == f"no space left on device writing {target} (free space on that disk, then rerun)"
    assert target.read_text() == "previous\n" and sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_stale_temporaries_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    stale = [tmp_path / ".latest.pt.k3j_9x0a.tmp", tmp_path / ".train.json.abcdefgh.tmp"]
    kept = [tmp_path / "latest.pt", tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / ".x.tmp-12345678"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_any_stage_reports_a_full_disk_in_one_line(tmp_path):
    """run_stage: a DiskFullError from an atomic write anywhere in a stage's work is one line, exit 1."""
    target = tmp_path / "result.json"
    script = textwrap.dedent(f"""
        from tcl.atomic import atomic_path
        import sys
        from stages.common import run_stage

        def work():
            with atomic_path({str(target)!r}):
                open("/dev/full", "wb", buffering=0).write(b"x")

        sys.exit(run_stage("demo", work))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=stage_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"demo: error: no space left on device writing {target} (free space on that disk, then rerun)"]
    assert list(tmp_path.iterdir()) == []


def _file_size_limit(limit: int):
    def preexec() -> None:  # in the child: writes past ``limit`` bytes fail with EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_train_stage_out_of_room_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, tiny_clip_dir,
                                                                                tiny_shards):
    out, metrics = tmp_path / "out", tmp_path / "metrics"
    first = write_params(tmp_path / "first.yaml", tiny_params(tiny_shards, steps=2))  # the stage's own config
    train(load_params(first), tiny_clip_dir, out, metrics_dir=metrics, track=False)
    previous = (out / "latest.pt").read_bytes()
    assert read_checkpoint(out / "latest.pt")["step"] == 2
    (out / ".latest.pt.zz9_ab12.tmp").write_bytes(previous[:100])  # what a write killed earlier leaves
    params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards, steps=4))
    command = [sys.executable, str(STAGE), "--params", str(params_file), "--clip", str(tiny_clip_dir), "--out",
               str(out), "--metrics", str(metrics), "--no-tracking"]

    # room for everything but a checkpoint (the JSON and CSV outputs are far smaller than half of one)
    full = subprocess.run(command, cwd=ROOT, env=stage_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(len(previous) // 2))
    assert full.returncode == 1, full.stderr
    assert full.stderr.splitlines()[-1] == (
        f"train: error: file too large for the file-size limit (ulimit -f) writing {out / 'latest.pt'} "
        f"(raise the limit, then rerun; {out / 'latest.pt'} holds the last checkpoint and this command resumes "
        "from it)")
    assert "Traceback" not in full.stderr and "inline_container" not in full.stderr
    assert (out / "latest.pt").read_bytes() == previous  # the step-2 checkpoint, untouched
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "latest.pt"]  # no .tmp left


def _private_tmpfs_works(folder) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {folder}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_train_stage_on_a_full_disk_says_no_space_left(tmp_path, tiny_clip_dir, tiny_shards):
    """ENOSPC for real: the checkpoint folder is a 64 KiB tmpfs (visible only to the stage's mount namespace)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if not _private_tmpfs_works(mount):
        pytest.skip("no private tmpfs mount here (needs unshare -m and mount rights)")
    params_file = write_params(tmp_path / "params.yaml", tiny_params(tiny_shards, steps=2))
    stage = [sys.executable, str(STAGE), "--params", str(params_file), "--clip", str(tiny_clip_dir), "--out",
             str(mount), "--metrics", str(tmp_path / "metrics"), "--no-tracking"]
    script = (f"mount -t tmpfs -o size=64k tmpfs {mount} && {{ {subprocess.list2cmdline(stage)}; echo rc=$?; "
              f"ls -A {mount}; }}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=stage_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.stderr.splitlines()[-1] == (
        f"train: error: no space left on device writing {mount / 'latest.pt'} "
        "(free space on that disk, then rerun)"), done.stderr  # (no checkpoint yet to resume from)
    assert "Traceback" not in done.stderr
    assert done.stdout.splitlines()[-2:] == ["rc=1", "config.json"]  # nothing half-written, no temporary file
