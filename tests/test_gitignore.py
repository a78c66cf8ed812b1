"""``.gitignore`` lets git see every output that dvc.yaml keeps out of DVC's cache, and hides the cached ones.

An output with ``cache: false`` (metrics, curves, reports) is meant for git: ignored, it cannot be
committed, and ``dvc exp show`` shows ``!`` for it in every experiment (as ``models/clip/metrics.json``
did under the blanket ``/models/``). Cached outputs (models, data) must stay out of git. Checked with
``git check-ignore --no-index``, so the answer does not depend on what is committed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs git and a git checkout")


def ignored(path: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def dvc_outputs() -> list[tuple[str, bool]]:
    """(path, cached) of every out/metrics/plots entry of dvc.yaml's stages; ``${...}`` becomes ``x``."""
    found = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        stage = stage.get("do", stage)  # foreach stages
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                found.append((path, (options or {}).get("cache", True)))
    return found


def test_the_clip_metrics_are_seen_by_git_and_its_weights_are_not():
    assert not ignored("models/clip/metrics.json")
    assert ignored("models/clip/clip.pt") and ignored("models/clip/clip.json")
    assert ignored("models/tcl/best.pt") and ignored("models/tcl/latest.pt") and ignored("models/anything_else")


def test_every_uncached_dvc_output_is_seen_by_git():
    uncached = [re.sub(r"\$\{[^}]*\}", "x", path) for path, cached in dvc_outputs() if not cached]
    assert "models/clip/metrics.json" in uncached
    # a folder output (overlays, baselines) is checked through a file inside it
    assert [p for p in uncached if ignored(p if Path(p).suffix else f"{p}/file.json")] == []


def test_every_cached_dvc_output_is_hidden_from_git():
    # the templated ones (download@, convert_coco_object@) are data/ folders named in params.yaml
    cached = [path for path, is_cached in dvc_outputs() if is_cached and "${" not in path]
    assert "models/clip/clip.pt" in cached
    assert [p for p in cached if not ignored(p)] == []


def test_the_plots_page_and_its_temporary_are_hidden_from_git():
    assert ignored("dvc_plots/index.html") and ignored(".dvc_plots.ab12cd34.tmp/page/index.html")
