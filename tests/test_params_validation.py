"""Malformed params.yaml variants against the stages: each fails before any work, in one line naming the key.

Every case is (stage, mutation of the project's params.yaml, expected part of the error). The stage
runs on a small valid project (a saved CLIP of params.yaml's clip.model, a few shards, a VOC-layout
validation set, a URL list) with the mutation applied; it must exit 2 with ONE line on stderr (no
traceback) naming the key, and leave its output folders nonexistent (make run: the project folder
untouched). Most cases call the stage's ``main`` in-process; a subset runs the real command lines.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from tests.data.test_stream import write_shards
from tests.eval.conftest import write_layout
from tests.params_file import project_params

REPO = Path(__file__).resolve().parents[1]
INF, NAN = float("inf"), float("nan")

Mutation = Callable[[str], "str | bytes"]


def _walk(data: dict, key: str) -> tuple[dict, str]:
    *parents, leaf = key.split(".")
    for part in parents:
        data = data[part]
    return data, leaf


def put(key: str, value) -> Mutation:
    """Set the dotted ``key`` to ``value``."""
    def mutate(text: str) -> str:
        data = yaml.safe_load(text)
        node, leaf = _walk(data, key)
        node[leaf] = copy.deepcopy(value)
        return yaml.safe_dump(data, sort_keys=False)
    mutate.__name__ = f"{key}={value!r}"
    return mutate


def drop(key: str) -> Mutation:
    """Delete the dotted ``key``."""
    def mutate(text: str) -> str:
        data = yaml.safe_load(text)
        node, leaf = _walk(data, key)
        del node[leaf]
        return yaml.safe_dump(data, sort_keys=False)
    mutate.__name__ = f"del {key}"
    return mutate


def text(name: str, change: Callable[[str], str | bytes]) -> Mutation:
    change.__name__ = name
    return change


def twice_nested(section: str, line: str) -> Mutation:
    """``line`` inserted as the first key of ``section``, which already holds that key."""
    return text(f"{section}.{line.split(':')[0]} twice",
                lambda t: t.replace(f"\n{section}:\n", f"\n{section}:\n  {line}\n", 1))


INCOMPLETE_CLIP = {"embed_dim": 64, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4,
                                                 "layers": 2}}

# (stage, mutation, expected part of the one-line error)
CASES = [
    # train
    ("train", drop("train"), "train: missing from"),
    ("train", drop("train.steps"), "train.steps: missing from"),
    ("train", drop("data.shuffle_initial"), "data.shuffle_initial: missing from"),
    ("train", put("train.lr", INF), "train.lr: must be a finite number, got inf"),
    ("train", put("train.grad_clip", NAN), "train.grad_clip: must be a finite number, got nan"),
    ("train", text("train twice", lambda t: t + "train:\n  steps: 5\n"), "train given twice"),
    ("train", twice_nested("train", "steps: 7"), "train.steps given twice"),
    ("train", text("latin-1 byte", lambda t: t.encode() + b"# caf\xe9 (latin-1)\n"), "not UTF-8 text"),
    ("train", text("empty", lambda t: ""), "empty; a parameter file holds every section"),
    ("train", text("comments only", lambda t: "# nothing\n"), "empty; a parameter file holds every section"),
    ("train", text("a list", lambda t: "- train\n- steps\n"), "expected a mapping of sections"),
    ("train", text("bad YAML", lambda t: t + "model: {ie_freeze: 3\n"), "not valid YAML at line"),
    ("train", put("clip.model", INCOMPLETE_CLIP), "clip.model.vision_cfg: missing"),
    ("train", drop("clip.model.vision_cfg.width"), "clip.model.vision_cfg.width: missing"),
    ("train", put("clip.model.text_cfg.head", 4), "clip.model.text_cfg.head: not an open_clip text_cfg key"),
    ("train", put("clip.model.vision_cfg.layers", 5), "clip.model: differs from"),
    ("train", put("clip.weights", "openai"), "clip.weights: 'openai' goes with an open_clip config name"),
    ("train", put("train.val_benchmarks", ["t_synthetic_voc", "t_context59"]), "train.val_benchmarks: benchmark "
                                                                                       "'t_context59'"),
    ("train", put("evaluate.data_roots.synthetic_voc", "data/nowhere"), "evaluate.data_roots.synthetic_voc"),
    ("train", put("data.sources", [{"name": "gone", "patterns": ["/nonexistent/x-{000000..000003}.tar"],
                                    "weight": 1.0}]), "data.sources[0].patterns: no shards found for gone"),
    ("train", put("data.sources", [{"name": "hollow", "patterns": ["empty_shards"], "weight": 1.0}]),
     "data.sources[0].patterns: no shards found for hollow (no .tar files"),
    ("train", put("train.steps", "many"), "train.steps: expected int"),
    ("train", put("train.bogus", 1), "unknown key 'train.bogus'"),
    # evaluate
    ("evaluate", drop("evaluate"), "evaluate: missing from"),
    ("evaluate", drop("evaluate.protocols.synthetic"), "evaluate.protocols.synthetic: missing from"),
    ("evaluate", put("evaluate.bg_thresh", INF), "evaluate.bg_thresh: must be a finite number"),
    ("evaluate", put("evaluate.bg_thresh_candidates", [0.3, NAN]), "evaluate.bg_thresh_candidates[1]: must be a "
                                                                   "finite number"),
    ("evaluate", put("evaluate.data_roots.synthetic_voc", "data/nowhere"), "evaluate.data_roots.synthetic_voc"),
    ("evaluate", text("empty", lambda t: ""), "empty; a parameter file holds every section"),
    ("evaluate", put("clip.model.vision_cfg.width", 96), "clip.model: differs from"),
    # download
    ("download", drop("download"), "download: missing from"),
    ("download", put("download.sources.synthetic.list", "absent.tsv"), "download.sources.synthetic.list: "),
    ("download", put("download.sources.synthetic.timeout", INF), "download.sources.synthetic.timeout: must be a "
                                                                 "finite number"),
    ("download", twice_nested("data", "seed: 1"), "data.seed given twice"),
    # make run (python -m pipelines.run): params validated and inputs checked before dvc repro
    ("run", drop("pipeline"), "pipeline: missing from"),
    ("run", put("pipeline.nproc_per_node", 0), "pipeline.nproc_per_node: must be >= 1"),
    ("run", text("latin-1 byte", lambda t: t.encode() + b"# caf\xe9 (latin-1)\n"), "not UTF-8 text"),
    ("run", put("clip", {"model": "ViT-B-16-quickgelu", "weights": "/nonexistent/ViT-B-16.pt"}),
     "clip.weights: /nonexistent/ViT-B-16.pt not found"),
    ("run", put("model.ie_freeze", 2.5), "model.ie_freeze: expected int"),
    # prepare_clip
    ("prepare_clip", put("clip", {"model": "ViT-B-16-quickgelu", "weights": "/nonexistent/ViT-B-16.pt"}),
     "clip.weights: /nonexistent/ViT-B-16.pt not found"),
    ("prepare_clip", put("data.sources", [{"name": "gone", "patterns": ["/nonexistent/s.tar"], "weight": 1.0}]),
     "data.sources[0].patterns: no shards found for gone"),
]

# Run through the real command lines (subprocesses) as well: one or more per stage.
SUBPROCESS = {12, 17, 28, 31, 34}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A valid small project for params.yaml's stages, and the base parameter text pointing at it."""
    from tcl.checkpoint import save_clip
    from tcl.model import create_clip

    root = tmp_path_factory.mktemp("project")
    clip_model = project_params()["clip"]["model"]
    torch.manual_seed(0)
    save_clip(root / "models/clip", create_clip(clip_model), clip_model)
    write_shards(root / "shards", "s", shards=2, per_shard=4)
    (root / "empty_shards").mkdir()
    for split in ("train", "val"):
        write_layout(root, "voc", split=split, images=1)
    (root / "corpus").mkdir()
    (root / "corpus/pairs.tsv").write_text("a red disc\timages/0.jpg\n")
    base = project_params({
        "data": {"sources": [{"name": "synthetic", "patterns": [str(root / "shards")], "weight": 1.0}]},
        "evaluate": {"data_roots": {"synthetic_voc": "data/VOCdevkit/VOC2012"}},
        "download": {"sources": {"synthetic": {**project_params()["download"]["sources"]["synthetic"],
                                               "root": str(root / "corpus")}}},
    })
    (root / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    return root


def _command(stage: str, project: Path, params: Path, out: Path) -> tuple[list[str], list[Path]]:
    """(arguments of the stage's command line, output paths that must not appear)."""
    if stage == "train":
        return (["--params", str(params), "--clip", str(project / "models/clip"), "--out", str(out / "tcl"),
                 "--metrics", str(out / "metrics"), "--no-tracking"], [out / "tcl", out / "metrics"])
    if stage == "evaluate":
        return (["--params", str(params), "--benchmark", "synthetic_voc", "--clip", str(project / "models/clip"),
                 "--baseline", "step0", "--out", str(out / "eval/synthetic_voc.json"), "--overlays",
                 str(out / "overlays"), "--no-mlflow"], [out / "eval", out / "overlays"])
    if stage == "download":
        return (["--params", str(params), "--source", "synthetic", "--stats", str(out / "stats/s.json")],
                [out / "shards", out / "stats"])
    if stage == "prepare_clip":
        return ["--params", str(params), "--out", str(out / "clip")], [out / "clip"]
    assert stage == "run"
    return ["--root", str(params.parent), "--no-tracking"], []


def _prepare(case: int, project: Path, tmp_path: Path) -> tuple[str, list[str], list[Path], Path, str]:
    stage, mutate, expected = CASES[case]
    if stage == "run":  # the project's own params.yaml: every input of the default pipeline is made by a stage
        root = tmp_path / "checkout"
        (root / ".dvc").mkdir(parents=True)  # a DVC project (make run locks it before it reads anything)
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        base, params = (REPO / "params.yaml").read_text(), root / "params.yaml"
    else:
        # evaluate reads data relative to the parameter file's folder: the cases' files live in the project
        base, params = (project / "base.yaml").read_text(), project / f"params-{case}.yaml"
    text_ = base if stage != "download" else base.replace(  # the shards go to this case's folder
        "out: data/synthetic/shards", f"out: {tmp_path / 'out' / 'shards'}")
    changed = mutate(text_)
    (params.write_bytes if isinstance(changed, bytes) else params.write_text)(changed)
    argv, outputs = _command(stage, project, params, tmp_path / "out")
    return stage, argv, outputs, params, expected


def _check(stage: str, code: int, err: str, expected: str, outputs: list[Path], params: Path, before: bytes):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    prog = "prepare_clip" if stage == "prepare_clip" else stage
    assert err.startswith(f"{prog}: error: ") and expected in err, err
    for path in outputs:
        assert not path.exists(), f"{path} was created by a failing {stage}"
    if stage == "run":  # nothing written: the parameter file as it was, no MLflow store, no DVC state
        assert params.read_bytes() == before
        assert sorted(p.name for p in params.parent.iterdir()) == [".dvc", "dvc.yaml", "params.yaml"]


def _main(stage: str):
    if stage == "run":
        from pipelines.run import main
    else:
        main = __import__(f"stages.{stage}", fromlist=["main"]).main
    return main


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{s}-{m.__name__}" for s, m, _ in CASES])
def test_bad_params_fail_before_work_in_one_line(case, project, tmp_path, capsys, monkeypatch):
    stage, argv, outputs, params, expected = _prepare(case, project, tmp_path)
    monkeypatch.chdir(project)  # the train stage reads validation data relative to the working directory
    before = params.read_bytes()
    try:
        code = _main(stage)(argv)
    except SystemExit as exit_:  # argparse-level errors
        code = exit_.code
    _check(stage, code, capsys.readouterr().err, expected, outputs, params, before)


@pytest.mark.parametrize("case", sorted(SUBPROCESS), ids=[f"{CASES[c][0]}-{CASES[c][1].__name__}"
                                                          for c in sorted(SUBPROCESS)])
def test_the_command_lines_fail_the_same_way(case, project, tmp_path):
    stage, argv, outputs, params, expected = _prepare(case, project, tmp_path)
    before = params.read_bytes()
    command = ["-m", "pipelines.run"] if stage == "run" else [str(REPO / "stages" / f"{stage}.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, *command, *argv], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)
    _check(stage, done.returncode, done.stderr, expected, outputs, params, before)


def _offline_env(tmp_path: Path) -> dict:
    """No open_clip / Hugging Face cache, and a hub that refuses connections (127.0.0.1:9)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "HOME": str(tmp_path / "home"),
            "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf/hub"),
            "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_prepare_clip_with_openai_weights_offline_is_one_line(project, tmp_path):
    """It used to end in open_clip's 40-line download traceback."""
    params = project / "params-openai.yaml"
    params.write_text(put("clip", {"model": "ViT-B-16-quickgelu", "weights": "openai"})(
        (project / "base.yaml").read_text()))
    done = subprocess.run([sys.executable, str(REPO / "stages/prepare_clip.py"), "--params", str(params), "--out",
                           str(tmp_path / "clip")], cwd=project, env=_offline_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    _check("prepare_clip", done.returncode, done.stderr, "clip.weights: 'openai' weights are not in open_clip's "
           "cache and 127.0.0.1 is not reachable: download ViT-B-16.pt", [tmp_path / "clip"], params, b"")


def test_enough_variants_across_the_stages():
    stages = [stage for stage, _, _ in CASES]
    assert len(CASES) >= 30 and {"train", "evaluate", "download", "run"} <= set(stages)
    assert {CASES[c][0] for c in SUBPROCESS} >= {"train", "evaluate", "download", "run"}


def test_paper_setting_without_its_inputs_names_each_one(tmp_path):
    """make run with configs/paper.yaml on a machine that has none of its inputs: one line per missing
    input, each naming the key and where to get it, within seconds (it used to fail after minutes)."""
    root = tmp_path / "checkout"
    (root / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "configs/paper.yaml"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    env = _offline_env(tmp_path)  # the CLIP weights are missing too
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipelines.run", "--root", str(root), "--no-tracking",
                           "--overrides-file", str(root / "configs/paper.yaml")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    keys = [re.match(r"run: error: (\S+):", line).group(1) for line in lines]
    assert keys == ["download.sources.cc3m", "download.sources.cc12m", "pipeline.coco_object.coco.root",
                    "evaluate.data_roots.voc", "evaluate.data_roots.context", "evaluate.data_roots.coco_stuff",
                    "evaluate.data_roots.cityscapes", "evaluate.data_roots.ade20k", "clip.weights"], lines
    assert all('README, "The paper setting"' in line for line in lines)
    assert "data/cc3m/Train_GCC-training.tsv not found" in lines[0]
    assert "download ViT-B-16.pt" in lines[-1] and "set clip.weights to that file" in lines[-1]
    assert seconds < 120  # bounded checks only (no download, no dvc); ~5 s here
    assert sorted(p.name for p in root.iterdir()) == [".dvc", "configs", "dvc.yaml", "params.yaml"]
    assert (root / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()
