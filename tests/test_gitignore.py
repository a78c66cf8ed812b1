"""``.gitignore`` lets git see every output that dvc.yaml keeps out of DVC's cache, and hides the cached ones.

An output with ``cache: false`` (metrics, curves, reports) is meant for git: ignored, it cannot be
committed, and ``dvc exp show`` shows ``!`` for it in every experiment (as ``models/clip/metrics.json``
did under the blanket ``/models/``). Cached outputs (models, data) must stay out of git. Checked with
``git check-ignore --no-index``, so the answer does not depend on what is committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


@pytest.mark.slow  # ~20 s: a real `dvc exp run` and `dvc exp show`
def test_an_experiment_carries_the_clip_metrics(tmp_path):
    """The symptom itself: with the project's .gitignore, `dvc exp show` has the CLIP's metrics of the
    baseline commit and of an experiment (under the old `/models/` both read `!`), and the experiment's
    commit holds models/clip/metrics.json but not the cached weights."""
    from tests.pipelines.conftest import git, init_repo

    root = init_repo(tmp_path / "project")
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    (root / "make_clip.py").write_text(
        "import json, pathlib, yaml\n"
        "steps = yaml.safe_load(open('params.yaml'))['steps']\n"
        "pathlib.Path('models/clip').mkdir(parents=True, exist_ok=True)\n"
        "pathlib.Path('models/clip/metrics.json').write_text(json.dumps({'loss': 1.0 / steps}))\n"
        "pathlib.Path('models/clip/clip.pt').write_text(str(steps))\n")
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare_clip"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare_clip": {
        "cmd": f"{sys.executable} make_clip.py", "deps": ["make_clip.py"], "params": ["steps"],
        "outs": ["models/clip/clip.pt"], "metrics": stage["metrics"]}}}))  # the project's metrics entry
    (root / "params.yaml").write_text("steps: 1\n")
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([*dvc, "repro", "-q"], cwd=root, env=env, check=True, capture_output=True, timeout=300)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    subprocess.run([*dvc, "exp", "run", "-q", "-n", "e1", "-S", "steps=4"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=300)
    shown = json.loads(subprocess.run([*dvc, "exp", "show", "--json"], cwd=root, env=env, check=True,
                                      capture_output=True, text=True, timeout=300).stdout)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    experiment = baseline["experiments"][0]["revs"][0]
    metrics = [row["data"]["metrics"].get("models/clip/metrics.json", {}).get("data")
               for row in (baseline, experiment)]
    assert metrics == [{"loss": 1.0}, {"loss": 0.25}]
    committed = git(root, "ls-tree", "-r", "--name-only", experiment["rev"]).split()
    assert "models/clip/metrics.json" in committed and "models/clip/clip.pt" not in committed
