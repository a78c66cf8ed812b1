"""Loading the released ``tcl.pth`` layout and matching the official computations (ViT-B/16 shapes)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tcl.compat import export_official_state_dict, load_official_checkpoint
from tcl.compat.official import official_to_tcl_key, tcl_to_official_key
from tcl.model import WeightsError
from tests import reference_official as ref
from tests.conftest import random_state_dict, read_key_listing

HEADS = 12  # ViT-B/16 vision heads; the text tower has 8


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """Random official-format weights: tcl.pth (non-CLIP keys) and an OpenAI-format ViT-B-16.pt."""
    folder = tmp_path_factory.mktemp("official")
    tcl_shapes = read_key_listing("official_tcl_checkpoint_keys.tsv")
    clip_shapes = read_key_listing("openai_clip_vit_b16_keys.tsv")
    tcl_state = random_state_dict(tcl_shapes, seed=1)
    # OpenAI's archive stores fp16 values; the official loader runs CLIP weights through fp16.
    clip_state = random_state_dict(clip_shapes, seed=2, fp16_values=True)
    torch.save({"model": tcl_state}, folder / "tcl.pth")
    torch.save(clip_state, folder / "ViT-B-16.pt")
    return folder, tcl_state, clip_state


@pytest.fixture(scope="module")
def official_model(official_files):
    folder, _, _ = official_files
    return load_official_checkpoint(folder / "tcl.pth", clip_weights=folder / "ViT-B-16.pt")


def test_parameter_inventory_matches_spec(official_model):
    """28,725,512 trainable parameters, 21,637,640 during the decoder-only phase: the counts of the official model
    (kakaobrain/tcl bc2b551, models/tcl/tcl.py, TCL; main.py ``train`` logs the trainable count)."""
    model = official_model
    try:
        model.set_decoder_only(False)
        assert sum(p.numel() for p in model.trainable_parameters().values()) == 28_725_512
        model.set_decoder_only(True)
        assert sum(p.numel() for p in model.trainable_parameters().values()) == 21_637_640
    finally:
        model.set_decoder_only(False)
        model.eval()


def test_every_official_key_is_loaded(official_files, official_model):
    _, tcl_state, clip_state = official_files
    ours = official_model.state_dict()
    for key, value in tcl_state.items():
        assert torch.equal(ours[official_to_tcl_key(key, 11)], value), key
    assert torch.equal(ours["clip.visual.proj"], clip_state["visual.proj"])
    assert torch.equal(ours["clip.token_embedding.weight"], clip_state["token_embedding.weight"])
    assert not official_model.training and not official_model.clip.training


def test_export_round_trip(official_files, official_model):
    _, tcl_state, _ = official_files
    exported = export_official_state_dict(official_model)
    assert exported.keys() == tcl_state.keys()
    assert all(torch.equal(exported[k], tcl_state[k]) for k in tcl_state)
    for key in official_model.state_dict():
        name = tcl_to_official_key(key, 11)
        if name is not None:
            assert official_to_tcl_key(name, 11) == key


@pytest.mark.parametrize(("apply_pamr", "kp_w"), [(True, 0.3), (False, 0.0), (False, 0.3)])
def test_masks_match_official_computation(official_files, official_model, apply_pamr, kp_w):
    _, tcl_state, clip_state = official_files
    generator = torch.Generator().manual_seed(3)
    # 200×232 is not a multiple of 16 (padding) and not 224×224 (positional interpolation).
    images = torch.randn(2, 3, 200, 232, generator=generator)
    text = torch.nn.functional.normalize(torch.randn(4, 512, generator=generator), dim=-1)
    ours = official_model.generate_masks(images, text, apply_pamr=apply_pamr, kp_w=kp_w)
    expected = ref.generate_masks(images, text, clip_state, tcl_state, HEADS, apply_pamr, kp_w)
    assert ours.shape == (2, 4, 200, 232)
    assert expected.std() > 0.05  # the comparison is not between near-constant maps
    assert (ours - expected).abs().max() < 5e-5


def test_text_embedding_matches_official_computation(official_files, official_model):
    _, _, clip_state = official_files
    classes = ["cat", "dining table", "bed "]
    ours = official_model.build_text_embedding(classes, template="custom")
    prompts = [t.format(c) for c in classes for t in ref_custom_templates()]
    tokens = official_model.tokenize(prompts)
    expected = ref.text_embedding(tokens, len(classes), clip_state, heads=8)
    assert ours.shape == (3, 512)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert (ours - expected).abs().max() < 1e-5


def ref_custom_templates():
    """The 9 `custom` templates, restated from kakaobrain/tcl bc2b551, datasets/templates.py, ``custom``."""
    return ["itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
            "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
            "a photo of many {}.", "a photo of {}s."]


def test_fp32_clip_weights_pass_through_fp16_like_the_official_loader(official_files, tmp_path):
    folder, _, clip_state = official_files
    fp32 = dict(clip_state)
    fp32["visual.proj"] = clip_state["visual.proj"] + 1e-4  # not representable in fp16
    torch.save(fp32, tmp_path / "clip32.pt")
    model = load_official_checkpoint(folder / "tcl.pth", clip_weights=tmp_path / "clip32.pt")
    assert torch.equal(model.clip.visual.proj, fp32["visual.proj"].half().float())
    # LayerNorms and embeddings are kept in fp32 by OpenAI's convert_weights
    assert model.clip.visual.ln_post.weight.dtype == torch.float32


def test_missing_loss_temperatures_are_tolerated(official_files, tmp_path):
    folder, tcl_state, _ = official_files
    state = {k: v for k, v in tcl_state.items() if "_loss." not in k}
    torch.save({"model": state}, tmp_path / "minimal.pth")
    model = load_official_checkpoint(tmp_path / "minimal.pth", clip_weights=folder / "ViT-B-16.pt")
    assert torch.equal(model.masker.sim2mask.w, tcl_state["masker.sim2mask.w"])


def _save_variant(tmp_path, state, name="variant.pth"):
    torch.save({"model": state}, tmp_path / name)
    return tmp_path / name


def test_missing_key_is_named(official_files, tmp_path):
    folder, tcl_state, _ = official_files
    key = "masker.image_encoder.decoder.decoder.net.1.conv2.gate.gate"
    path = _save_variant(tmp_path, {k: v for k, v in tcl_state.items() if k != key})
    with pytest.raises(WeightsError, match="missing keys.*net.1.conv2.gate.gate"):
        load_official_checkpoint(path, clip_weights=folder / "ViT-B-16.pt")


def test_unexpected_key_is_named(official_files, tmp_path):
    folder, tcl_state, _ = official_files
    path = _save_variant(tmp_path, {**tcl_state, "masker.extra_head.weight": torch.zeros(3)})
    with pytest.raises(WeightsError, match="unexpected keys.*masker.extra_head.weight"):
        load_official_checkpoint(path, clip_weights=folder / "ViT-B-16.pt")


def test_shape_mismatch_is_named(official_files, tmp_path):
    folder, tcl_state, _ = official_files
    key = "masker.image_encoder.decoder.image_proj.proj"
    path = _save_variant(tmp_path, {**tcl_state, key: torch.zeros(768, 256)})
    with pytest.raises(WeightsError, match=r"shape mismatches.*image_proj.proj: checkpoint \(768, 256\)"):
        load_official_checkpoint(path, clip_weights=folder / "ViT-B-16.pt")


def test_truncated_file_is_reported(official_files, tmp_path):
    folder, _, _ = official_files
    data = (folder / "tcl.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_official_checkpoint(tmp_path / "cut.pth", clip_weights=folder / "ViT-B-16.pt")


def test_training_checkpoint_extras_load_without_omegaconf(official_files, tmp_path, monkeypatch):
    """The official training checkpoint pickles its OmegaConf config and NumPy metrics beside the weights
    (kakaobrain/tcl utils/checkpoint.py, save_checkpoint); they load as inert values, omegaconf unused."""
    omegaconf = pytest.importorskip("omegaconf")
    from tcl.checkpoint import load_model
    from tcl.serialization import PickledConfig, safe_load

    folder, tcl_state, _ = official_files
    config = omegaconf.OmegaConf.create({"model": {"type": "TCL", "ie_freeze": 11}, "train": {"lr": 1.6e-3},
                                         "evaluate": {"task": ["voc", "context"]}})
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    checkpoint = {"model": tcl_state, "optimizer": optimizer.state_dict(),
                  "lr_scheduler": {"t_initial": 50000, "warmup_t": 15000, "noise_range_t": None},
                  "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "step": 50000, "config": config,
                  "metrics": {"val/avg_miou": np.mean([np.float64(37.2), np.float64(30.1)])}}
    for layout in ("zip", "legacy"):
        path = tmp_path / f"training-{layout}.pth"
        torch.save(checkpoint, path, _use_new_zipfile_serialization=layout == "zip")
        with monkeypatch.context() as patch:
            for name in [m for m in sys.modules if m == "omegaconf" or m.startswith("omegaconf.")]:
                patch.delitem(sys.modules, name)
            patch.setitem(sys.modules, "omegaconf", None)  # importing it now fails: proves it is not used
            loaded = safe_load(path)
            assert isinstance(loaded["config"], PickledConfig) and loaded["step"] == 50000
            assert float(loaded["metrics"]["val/avg_miou"]) == pytest.approx(33.65)
            for load in (load_official_checkpoint, load_model):
                model = load(path, clip_weights=folder / "ViT-B-16.pt")
                assert torch.equal(model.masker.sim2mask.b, tcl_state["masker.sim2mask.b"])


def test_other_pickled_objects_beside_the_weights_are_refused(official_files, tmp_path):
    folder, tcl_state, _ = official_files
    torch.save({"model": tcl_state, "hook": print}, tmp_path / "training.pth")
    with pytest.raises(WeightsError, match=r"training.pth: refused to load: it asks for the Python object "
                                           r"(builtins\.)?print"):
        load_official_checkpoint(tmp_path / "training.pth", clip_weights=folder / "ViT-B-16.pt")


def test_clip_weights_are_required_without_clip_keys(official_files):
    folder, _, _ = official_files
    with pytest.raises(WeightsError, match="pass clip_weights="):
        load_official_checkpoint(folder / "tcl.pth")


def test_checkpoint_with_clip_keys_needs_no_clip_file(official_files, official_model, tmp_path):
    folder, tcl_state, _ = official_files
    full = export_official_state_dict(official_model, include_clip=True)
    assert any(k.startswith("clip_text_encoder.") for k in full)
    path = _save_variant(tmp_path, full, "full.pth")
    model = load_official_checkpoint(path)
    text = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    image = torch.randn(1, 3, 64, 80)
    expected = official_model.generate_masks(image, text, apply_pamr=False, kp_w=0.3)
    assert torch.allclose(model.generate_masks(image, text, apply_pamr=False, kp_w=0.3), expected, atol=1e-6)


def test_segment_command_end_to_end(official_files, tmp_path, capsys):
    from PIL import Image

    from tcl.cli import main

    folder, _, _ = official_files
    Image.new("RGB", (90, 60), (200, 30, 30)).save(tmp_path / "red.png")
    code = main(["segment", str(tmp_path / "red.png"), "--classes", "red thing,sky", "--checkpoint",
                 str(folder / "tcl.pth"), "--clip-weights", str(folder / "ViT-B-16.pt"), "--short-side", "64",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    import json

    fractions = json.loads((tmp_path / "out" / "red_fractions.json").read_text())
    assert fractions["classes"] == ["background", "red thing", "sky"]
    assert sum(fractions["fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    labels = Image.open(tmp_path / "out" / "red_labels.png")
    assert labels.size == (90, 60)
    assert Image.open(tmp_path / "out" / "red_overlay.png").size[0] == 90
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporaries
