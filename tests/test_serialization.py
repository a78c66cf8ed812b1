"""No entry point runs code from a file it loads; every refusal is one line of the project's error type.

Each hostile file of :mod:`tests.payloads` (REDUCE, BUILD, NEWOBJ, INST, OBJ × zip, legacy and bare
pickle layouts) goes through every place the project reads a weights file or checkpoint. An unsafe
loader creates the marker file (checked first, so the table cannot pass vacuously).
"""

from __future__ import annotations

import ast
import contextlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcl.errors import TCLError
from tests.conftest import TINY_CLIP
from tests.inference.conftest import write_tiny_checkpoint
from tests.payloads import CASES, write_payload

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A clean tiny training checkpoint (tcl.pt) with its CLIP (clip/clip.pt, clip/clip.json)."""
    folder = tmp_path_factory.mktemp("clean")
    write_tiny_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def saved_pyfunc(tiny, tmp_path_factory) -> Path:
    from tcl.serving.pyfunc import save_segmentation_model

    path = tmp_path_factory.mktemp("pyfunc") / "model"
    return save_segmentation_model(path, tiny / "tcl.pt", input_example=False)


def _official_shell(folder: Path) -> Path:
    """The smallest file the official loader accepts up to the point where it loads the CLIP weights."""
    state = {"masker.image_encoder.backbone.transformer.resblocks.11.ln_1.weight": torch.ones(4),
             "masker.image_encoder.decoder.decoder.net.0.conv.norm.weight": torch.ones(4)}
    torch.save({"model": state}, folder / "official_shell.pth")
    return folder / "official_shell.pth"


def _clip_dir_with(payload: Path, folder: Path) -> Path:
    clip = folder / "clip_dir"
    clip.mkdir()
    (clip / "clip.json").write_text(json.dumps({"model": TINY_CLIP}))
    (clip / "clip.pt").write_bytes(payload.read_bytes())
    return clip


def _checkpoint_naming(payload: Path, tiny: Path, folder: Path) -> Path:
    """A clean checkpoint whose recorded CLIP weights file is the hostile one."""
    from tcl.checkpoint import read_checkpoint

    clean = read_checkpoint(tiny / "tcl.pt")
    clean["clip"] = {"model": TINY_CLIP, "weights": str(payload)}
    torch.save(clean, folder / "names_payload.pt")
    return folder / "names_payload.pt"


def _pyfunc_with(payload: Path, saved: Path, folder: Path) -> Path:
    import shutil

    import yaml

    model = folder / "pyfunc"
    shutil.copytree(saved, model)
    artifacts = yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
    (model / artifacts["checkpoint"]["path"]).write_bytes(payload.read_bytes())
    return model


def _entry_points():
    from tcl.checkpoint import load_model, load_saved_clip, read_checkpoint
    from tcl.compat import load_official_checkpoint
    from tcl.inference import load_inference_model
    from tcl.model import create_clip, read_weights
    from tcl.serving.pyfunc import save_segmentation_model

    def pyfunc_load_context(payload, tiny, folder, saved):
        import mlflow

        mlflow.pyfunc.load_model(str(_pyfunc_with(payload, saved, folder)))

    return {
        "read_weights": lambda p, t, f, s: read_weights(p),
        "create_clip(weights=)": lambda p, t, f, s: create_clip(dict(TINY_CLIP), p),
        "load_saved_clip (--clip DIR of train/evaluate)": lambda p, t, f, s: load_saved_clip(_clip_dir_with(p, f)),
        "load_official_checkpoint(checkpoint)": lambda p, t, f, s: load_official_checkpoint(p, t / "clip" / "clip.pt"),
        "load_official_checkpoint(clip_weights=)":
            lambda p, t, f, s: load_official_checkpoint(_official_shell(f), clip_weights=p),
        "read_checkpoint (train --resume)": lambda p, t, f, s: read_checkpoint(p),
        "load_model": lambda p, t, f, s: load_model(p),
        "load_model(clip_weights=) (tcl predict --clip-weights)":
            lambda p, t, f, s: load_model(t / "tcl.pt", clip_weights=p),
        "checkpoint naming the payload as its CLIP": lambda p, t, f, s: load_model(_checkpoint_naming(p, t, f)),
        "load_inference_model (tcl predict --checkpoint)": lambda p, t, f, s: load_inference_model(p),
        "save_segmentation_model": lambda p, t, f, s: save_segmentation_model(f / "out", p, input_example=False),
        "pyfunc load_context": pyfunc_load_context,
    }


ENTRY_POINTS = list(_entry_points())


def _unsafe_load(path: Path, layout: str):
    """What the loaders must never do (used only to prove that each payload really acts)."""
    if layout == "pickle":
        with open(path, "rb") as handle:
            pickle.load(handle)  # noqa: S301 - the point of this test helper
    else:
        torch.load(path, weights_only=False)  # noqa: S614


@pytest.mark.parametrize(("kind", "layout"), CASES, ids=[f"{k}-{lay}" for k, lay in CASES])
def test_each_payload_acts_when_unpickled_unsafely(tmp_path, kind, layout):
    marker = tmp_path / "MARKER"
    path = write_payload(tmp_path / "payload.pt", kind, layout, marker)
    with contextlib.suppress(Exception):  # some payloads break the loader after they have acted
        _unsafe_load(path, layout)
    assert marker.exists(), "the payload must act under an unsafe loader, or this table proves nothing"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("kind", "layout"), CASES, ids=[f"{k}-{lay}" for k, lay in CASES])
def test_no_entry_point_runs_code_from_a_file(tmp_path, tiny, saved_pyfunc, entry, kind, layout):
    marker = tmp_path / "MARKER"
    payload = write_payload(tmp_path / "payload.pt", kind, layout, marker)
    with pytest.raises(Exception) as caught:  # noqa: B017 - which error is checked below
        _entry_points()[entry](payload, tiny, tmp_path, saved_pyfunc)
    assert not marker.exists(), f"{entry} ran code from a {kind}/{layout} file"
    error = caught.value
    while entry == "pyfunc load_context" and not isinstance(error, TCLError) and error is not None:
        error = error.__cause__ or error.__context__  # MLflow wraps what load_context raises
    assert isinstance(error, TCLError), f"{type(error).__name__}: {error}"
    message = str(error)  # one line that names the hostile file (or the copy the entry point was given)
    assert "\n" not in message and ": refused to load: " in message, message
    assert message.split(": refused to load: ")[0].endswith((".pt", "clip.pt")), message


@pytest.mark.parametrize("case", [("reduce", "legacy"), ("reduce", "pickle"), ("build", "zip")])
@pytest.mark.parametrize("flag", ["--checkpoint", "--clip-weights"])
def test_tcl_predict_refuses_in_one_line(tmp_path, tiny, flag, case):
    from PIL import Image

    marker = tmp_path / "MARKER"
    payload = write_payload(tmp_path / "payload.pt", *case, marker)
    Image.new("RGB", (32, 32), (90, 90, 90)).save(tmp_path / "image.png")
    checkpoint = payload if flag == "--checkpoint" else tiny / "tcl.pt"
    extra = ["--clip-weights", str(payload)] if flag == "--clip-weights" else []
    result = subprocess.run([sys.executable, "-m", "tcl.cli", "predict", str(tmp_path / "image.png"), "--phrases",
                             "cat", "--checkpoint", str(checkpoint), *extra, "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcl: error: ") and "payload.pt" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"hello, not a checkpoint\n", b"PK\x03\x04broken"])
def test_unreadable_files_are_one_line_project_errors(tmp_path, tiny, content):
    from tcl.checkpoint import load_model
    from tcl.compat import load_official_checkpoint
    from tcl.model import read_weights

    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    for load in (read_weights, load_model, lambda p: load_official_checkpoint(p, tiny / "clip" / "clip.pt")):
        with pytest.raises(TCLError) as caught:
            load(path)
        assert "\n" not in str(caught.value) and "bad.pth" in str(caught.value)


# --- the forbidden calls -------------------------------------------------------------------------------

_SCANNED = ("tcl", "stages", "pipelines", "benchmarks")


def _forbidden_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load",
                        "dill.loads", "joblib.load", "pickle.Unpickler", "numpy.load", "np.load"):
                found.append(name)
            if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{name} without weights_only=True")
        if isinstance(node, ast.ClassDef):
            found += [f"class {node.name}({ast.unparse(b)})" for b in node.bases if "Unpickler" in ast.unparse(b)]
    return found


def test_the_scan_finds_what_it_looks_for():
    source = ("import pickle, torch\nclass U(pickle.Unpickler): pass\npickle.load(f)\ntorch.load(p)\n"
              "torch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n")
    assert len(_forbidden_calls(ast.parse(source))) == 4


def test_no_unsafe_loading_anywhere_in_the_project():
    offenders = {}
    for folder in _SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found = _forbidden_calls(ast.parse(path.read_text(), str(path)))
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}
    # torch.load itself has one home, so its allow-list is reviewed in one place
    users = [str(p.relative_to(ROOT)) for folder in _SCANNED for p in sorted((ROOT / folder).rglob("*.py"))
             if any(isinstance(n, ast.Call) and ast.unparse(n.func).endswith("torch.load")
                    for n in ast.walk(ast.parse(p.read_text())))]
    assert users == ["tcl/serialization.py"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "evaluate"])
@pytest.mark.parametrize("case", [("reduce", "legacy"), ("reduce", "pickle"), ("newobj", "zip")])
def test_stages_refuse_a_hostile_clip_dir(tmp_path, stage, case):
    """``stages/train.py`` and ``stages/evaluate.py --clip DIR`` read DIR/clip.pt: one line, exit 2, no marker."""
    from tests.data.test_stream import write_shards
    from tests.eval.conftest import write_layout
    from tests.train.conftest import tiny_params, write_params

    marker = tmp_path / "MARKER"
    write_shards(tmp_path / "shards", "tiny", shards=1, per_shard=8)
    write_layout(tmp_path, "voc", images=1)
    params = write_params(tmp_path / "params.yaml", tiny_params(tmp_path / "shards"))
    clip = _clip_dir_with(write_payload(tmp_path / "payload.pt", *case, marker), tmp_path)
    if stage == "train":
        args = ["--clip", str(clip), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics"),
                "--no-tracking"]
    else:
        args = ["--benchmark", "voc", "--clip", str(clip), "--baseline", "step0",
                "--out", str(tmp_path / "out" / "result.json"), "--no-mlflow", "--overlays", ""]
    result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), "--params", str(params), *args],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{stage}: error: ") and "clip.pt" in lines[0]
