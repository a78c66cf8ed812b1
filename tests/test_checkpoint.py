"""tcl.checkpoint's CLIP files: a full disk while writing clip.pt is the one-line DiskFullError (it was torch's
bare RuntimeError), nothing half-written is left, and the same CLIP always gives the same bytes."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tcl.checkpoint import CLIP_WEIGHTS, save_clip
from tcl.model import create_clip
from tests.conftest import TINY_CLIP

ROOT = Path(__file__).resolve().parents[1]


def _file_size_limit(limit: int):
    def preexec() -> None:  # in the child: writes past ``limit`` bytes fail with EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_writing_clip_pt_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "clip"
    script = textwrap.dedent(f"""
        import sys
        from stages.common import run_stage
        from tcl.checkpoint import save_clip
        from tcl.model import create_clip
        from tests.conftest import TINY_CLIP

        clip = create_clip(TINY_CLIP)
        sys.exit(run_stage("prepare_clip", lambda: save_clip({str(out)!r}, clip, TINY_CLIP)))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE",
                               "PYTHONDONTWRITEBYTECODE": "1"},  # no .pyc cut short by the limit
                          preexec_fn=_file_size_limit(20_000))  # the tiny CLIP's weights are larger
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"prepare_clip: error: file too large for the file-size limit (ulimit -f) writing {out / CLIP_WEIGHTS} "
        "(raise the limit, then rerun)"]
    assert list(out.iterdir()) == []


def test_the_same_clip_is_written_as_the_same_bytes(tmp_path):
    clip = create_clip(TINY_CLIP)
    save_clip(tmp_path / "a", clip, TINY_CLIP)
    save_clip(tmp_path / "b", clip, TINY_CLIP)
    assert (tmp_path / "a" / CLIP_WEIGHTS).read_bytes() == (tmp_path / "b" / CLIP_WEIGHTS).read_bytes()
