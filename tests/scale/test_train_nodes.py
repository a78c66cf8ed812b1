"""Paths 1 and 2 of the scale-out suite: training and evaluation on two torchrun "nodes" on 127.0.0.1.

Each node is its own torchrun launcher with one gloo process, joined through torchrun's c10d rendezvous
exactly as docs/scale-out.md tells users (there: a host name instead of 127.0.0.1). The stages
are the project's own command lines as dvc.yaml runs them (stages/train.py, stages/evaluate.py), with
MLflow tracking into each project's ./mlflow.db, on tiny shards and a tiny CLIP.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcl.checkpoint import read_checkpoint
from tests.eval.conftest import write_layout
from tests.train import conftest as train_conftest
from tests.train.conftest import tiny_params, write_params

from .train_nodes import (
    REPO,
    RUN_TIMEOUT,
    assert_succeeded,
    kill_node,
    node_env,
    start_node,
    start_two_nodes,
    stop_nodes,
    wait_for_text,
    wait_nodes,
)

STEPS = 12  # a tiny step takes 0.1-1 s: enough steps that the kill below lands before the end
TRAIN = [str(REPO / "stages" / "train.py"), "--params", "params.yaml", "--clip", "models/clip", "--out",
         "models/tcl", "--metrics", "metrics"]  # dvc.yaml's train command, from the project root
# Timing columns of the loss log: measured, so they differ between any two runs.
TIMED = {"samples_per_s"}

# tests/train's session fixtures: the tiny CLIP and the shards
tiny_clip_dir, tiny_shards = train_conftest.tiny_clip_dir, train_conftest.tiny_shards


def make_project(root: Path, clip: Path, shards: Path) -> Path:
    """A project root as the train stage sees it: params.yaml, models/clip, the shards (absolute path)."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "clip").symlink_to(clip, target_is_directory=True)
    write_params(root / "params.yaml", tiny_params(shards, steps=STEPS, ust_steps=3, checkpoint_every=2))
    return root


def loss_log(root: Path) -> list[dict]:
    with (root / "metrics" / "train_curve.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(handle)]


def assert_same_training(a: Path, b: Path) -> None:
    """Bit-identical checkpoints (every tensor, the optimizer's too, and the data streams) and the same loss log."""
    for name in ("latest.pt", "best.pt"):
        x, y = read_checkpoint(a / "models" / "tcl" / name), read_checkpoint(b / "models" / "tcl" / name)
        assert x["step"] == y["step"] == STEPS
        assert x["model"].keys() == y["model"].keys()
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"]), name
        states_x, states_y = x["optimizer"]["state"], y["optimizer"]["state"]
        assert states_x.keys() == states_y.keys()
        for key in states_x:
            assert all(torch.equal(states_x[key][m], states_y[key][m]) for m in states_x[key]), (name, key)
        assert x["stream"] == y["stream"] and len(x["stream"]) == 2  # both processes' positions in the data
    rows = loss_log(a)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert rows == loss_log(b)
    assert train_metrics(a) == train_metrics(b)


def train_metrics(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every train/* metric (timing aside) of the project's MLflow run: (step, value) in step order."""
    from mlflow.tracking import MlflowClient

    run_id = read_checkpoint(root / "models" / "tcl" / "latest.pt")["extra"]["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    names = [k for k in client.get_run(run_id).data.metrics if k.startswith("train/") and k[6:] not in TIMED]
    assert "train/loss" in names
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in names}


@pytest.fixture(scope="module")
def one_launcher(tmp_path_factory, tiny_clip_dir, tiny_shards):
    """The reference: one launcher with two processes, as dvc.yaml runs the stage (--standalone)."""
    root = make_project(tmp_path_factory.mktemp("one-launcher"), tiny_clip_dir, tiny_shards)
    nodes = [start_node("one launcher", ["--standalone", "--nproc-per-node", "2", *TRAIN], root, root / "run.log")]
    try:
        assert_succeeded(nodes)
    finally:
        stop_nodes(nodes)
    return root


def test_two_nodes_train_bit_identically_to_one_launcher(tmp_path, one_launcher, tiny_clip_dir, tiny_shards):
    root = make_project(tmp_path, tiny_clip_dir, tiny_shards)
    nodes = start_two_nodes(root, TRAIN, "tcl-1", root / "logs-train")
    try:
        assert_succeeded(nodes)
    finally:
        stop_nodes(nodes)
    assert f"train: done at step {STEPS}" in "".join(node.text() for node in nodes)
    assert read_checkpoint(root / "models" / "tcl" / "latest.pt")["extra"]["derived"]["world_size"] == 2
    assert_same_training(one_launcher, root)


def test_losing_a_node_then_restarting_both_resumes_bit_identically(tmp_path, one_launcher, tiny_clip_dir,
                                                                     tiny_shards):
    root = make_project(tmp_path, tiny_clip_dir, tiny_shards)
    nodes = start_two_nodes(root, TRAIN, "tcl-1", root / "logs-first")
    restarted: list = []
    try:
        wait_for_text(nodes, f"step 3/{STEPS} |", RUN_TIMEOUT)  # latest.pt holds step 2 (or later: no waiting)
        kill_node(nodes[1])
        # The survivor's process fails in its next collective (gloo: the peer closed the connection), so its
        # launcher exits with an error instead of waiting: the whole job is down, the checkpoint intact.
        survivor = wait_nodes(nodes[:1], 300)[0]
        assert survivor != 0, nodes[0].text()[-3000:]
        killed_at = read_checkpoint(root / "models" / "tcl" / "latest.pt")["step"]
        assert 2 <= killed_at < STEPS

        restarted = start_two_nodes(root, TRAIN, "tcl-1", root / "logs-again")  # the same command on both nodes
        assert_succeeded(restarted)
    finally:
        stop_nodes(nodes + restarted)
    assert f"resumed from models/tcl/latest.pt at step {killed_at}" in "".join(node.text() for node in restarted)
    assert_same_training(one_launcher, root)


def eval_params(root: Path) -> Path:
    """The training project's parameters plus a tiny benchmark: VOC layout, 3 images of 24×32, 16-px windows."""
    write_layout(root, "voc", images=3)  # data/VOCdevkit/VOC2012; 3 images: one node gets 2, the other 1
    raw = tiny_params(Path("unused"))
    window = {"short_side": 24, "long_side": 64, "crop": 16, "stride": 8}
    # One window and one image per forward pass, so an image is computed alike whatever process gets it.
    raw["evaluate"] = {"num_workers": 0, "overlays": 2, "window_batch": 1, "image_batch": 1,
                       "protocols": {"paper": window, "synthetic": window}}
    return write_params(root / "eval-params.yaml", raw)


def test_two_nodes_evaluate_like_one_process(one_launcher):
    root = one_launcher  # its mlflow.db holds the training run the evaluation runs nest under
    eval_params(root)

    def command(out: str) -> list[str]:
        return [str(REPO / "stages" / "evaluate.py"), "--params", "eval-params.yaml", "--benchmark", "voc",
                "--checkpoint", "models/tcl/best.pt", "--out", f"metrics/eval/{out}.json", "--overlays",
                f"metrics/overlays/{out}"]

    single = subprocess.run([sys.executable, *command("one")], cwd=root, env=node_env(), capture_output=True,
                            text=True, timeout=RUN_TIMEOUT)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]
    nodes = start_two_nodes(root, command("two"), "tcl-eval-1", root / "logs-eval")
    try:
        assert_succeeded(nodes)
    finally:
        stop_nodes(nodes)
    one = json.loads((root / "metrics/eval/one.json").read_text())
    two = json.loads((root / "metrics/eval/two.json").read_text())
    assert one["settings"]["world_size"] == 1 and two["settings"]["world_size"] == 2
    assert one["num_images"] == two["num_images"] == 3
    for key in ("miou", "aacc", "macc", "per_class_iou", "per_class_acc", "benchmark", "model"):
        assert one[key] == two[key], key
    # Measured times; the world size; the text-embedding cache record (the second run hits the cache the
    # first wrote); and the overlay panels: rank 0 draws its own first images (0 and 2 of 3). num_windows, summed
    # over the processes, must be equal.
    assert {k for k in one.keys() | two.keys() if one.get(k) != two.get(k)} <= {
        "seconds", "images_per_s", "windows_per_s", "text_embedding", "settings", "overlays"}
    assert {k for k in one["settings"] if one["settings"][k] != two["settings"][k]} == {"world_size"}
    assert [Path(p).name for p in two["overlays"]] == ["voc_voc_val_000.png", "voc_voc_val_002.png"]
