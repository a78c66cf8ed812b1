"""A training checkpoint records its CLIP weights relative to the project root (``models/clip/clip.pt``):
``tcl predict --checkpoint /abs/.../models/tcl/best.pt`` must find them from any working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tcl.checkpoint import CheckpointError, load_model
from tcl.cli import main
from tests.conftest import TINY_CLIP
from tests.inference.conftest import scene


def _project_checkpoint(root: Path) -> tuple[Path, torch.nn.Module]:
    """``root/models/tcl/best.pt`` naming its CLIP as ``models/clip/clip.pt``, as training in ``root`` writes it."""
    from tcl import TCLConfig, create_tcl
    from tcl.checkpoint import save_checkpoint, save_clip

    torch.manual_seed(0)
    model = create_tcl(dict(TINY_CLIP), config=TCLConfig(ie_freeze=2))
    root.mkdir(parents=True)
    (root / "params.yaml").write_text("{}\n")
    save_clip(root / "models" / "clip", model.clip, TINY_CLIP)
    (root / "models" / "tcl").mkdir(parents=True)
    path = save_checkpoint(root / "models" / "tcl" / "best.pt", model=model, step=0,
                           params={"model": {"ie_freeze": 2}},
                           clip={"model": TINY_CLIP, "weights": "models/clip/clip.pt"})
    return path, model


def test_relative_clip_path_is_found_from_another_directory(tmp_path, monkeypatch, capsys):
    checkpoint, trained = _project_checkpoint(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # models/clip/clip.pt does not exist from here

    model = load_model(checkpoint)
    expected = trained.clip.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.clip.state_dict().items())

    scene().save(elsewhere / "photo.png")
    assert main(["predict", "photo.png", "--phrases", "red, blue", "--checkpoint", str(checkpoint),
                 "--short-side", "64", "--out", "out"]) == 0
    assert (elsewhere / "out" / "photo_labels.png").is_file()
    capsys.readouterr()

    # The CLIP gone from the project too: one line naming the paths tried and the way out.
    shutil.move(tmp_path / "project" / "models" / "clip", tmp_path / "clip-moved")
    with pytest.raises(CheckpointError) as info:
        load_model(checkpoint)
    message = str(info.value)
    assert "\n" not in message and "--clip-weights" in message
    assert str(tmp_path / "project" / "models" / "clip" / "clip.pt") in message  # the project's path was tried
    assert "'models/clip/clip.pt'" in message
    assert main(["predict", "photo.png", "--phrases", "red, blue", "--checkpoint", str(checkpoint),
                 "--short-side", "64", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--clip-weights" in err and "Traceback" not in err
    # ... and --clip-weights still overrides the recorded path.
    assert load_model(checkpoint, clip_weights=tmp_path / "clip-moved" / "clip.pt").clip is not None


def test_search_is_bounded_and_cwd_comes_first(tmp_path, monkeypatch):
    checkpoint, _ = _project_checkpoint(tmp_path / "project")
    deep = tmp_path / "project" / "a" / "b" / "c" / "d" / "e" / "best.pt"  # six levels below the project
    deep.parent.mkdir(parents=True)
    shutil.copy(checkpoint, deep)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(deep)
    monkeypatch.chdir(tmp_path / "project")  # as recorded, relative to the cwd: what training's own stages do
    assert load_model(deep) is not None
