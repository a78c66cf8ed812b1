"""A throw-away copy of the project (git repo, DVC, tiny parameters) for running the pipeline for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.checkout import copy_checkout, git

REPO = Path(__file__).resolve().parents[2]
# What the pipeline needs of the checkout (tests, benchmarks and docs are not part of any stage).
_SKIP = ("tests/", "benchmarks/", "docs/")

#: A pipeline small enough for a test: a few dozen pairs, a few eval images, a few steps.
TINY = [
    "synthetic.pairs=48", "synthetic.val_images=3", "synthetic.train_images=3",
    "download.sources.synthetic.processes=1", "download.sources.synthetic.threads=4",
    "download.sources.synthetic.samples_per_shard=16",
    "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=8",
    "prepare_clip.steps=2", "prepare_clip.warmup_steps=1", "prepare_clip.log_every=1",
]


def init_repo(root: Path) -> Path:
    """An empty git + DVC repository (no analytics) at ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=root, check=True,
                   capture_output=True)
    return root


def copy_project(dest: Path) -> Path:
    """Tracked and not-ignored files of the checkout → ``dest``, as a fresh git repository with one commit."""
    return copy_checkout(REPO, dest, skip=_SKIP)


def run_python(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600):
    from pipelines.dvc_cli import tool_env

    return subprocess.run([sys.executable, *args], cwd=cwd, env=tool_env(env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server (and database) for the session; it takes ~20 s to start here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        patch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield
