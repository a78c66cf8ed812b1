from __future__ import annotations

import pytest
import torch

from tcl import TCLConfig, create_tcl
from tcl.compat import export_official_state_dict
from tcl.errors import ConfigError
from tests import reference_official as ref


def _randomise_gates(model):
    with torch.no_grad():
        for stage in model.masker.decoder.stages:
            stage.block1.gate.fill_(0.4)
            stage.block2.gate.fill_(-0.3)
        model.masker.sim2mask.w.fill_(15.0)
        model.masker.sim2mask.b.fill_(0.0)


def test_only_the_masker_and_temperatures_are_trainable(tiny_tcl):
    names = set(tiny_tcl.trainable_parameters())
    assert names and all(n.startswith("masker.") or n.endswith("_loss.logit_scale") for n in names)
    assert not any(p.requires_grad for p in tiny_tcl.clip.parameters())


def test_gradients_reach_only_the_masker(tiny_tcl):
    tiny_tcl.train()
    out = tiny_tcl(torch.randn(3, 3, 64, 64), tiny_tcl.tokenize(["a red square", "a cat", "sky"]))
    tiny_tcl.total_loss(out).backward()
    with_grad = {n for n, p in tiny_tcl.named_parameters() if p.grad is not None}
    assert any(n.startswith("masker.blocks.") for n in with_grad)
    assert any(n.startswith("masker.decoder.") for n in with_grad)
    assert all(n.startswith("masker.") or "_loss." in n for n in with_grad)


def test_training_outputs_and_total_loss(tiny_tcl):
    torch.manual_seed(0)
    out = tiny_tcl(torch.randn(2, 3, 64, 64), tiny_tcl.tokenize(["a", "b"]))
    assert set(out) == {"mask", "neg_mask", "area_loss", "neg_area_loss", "tclf_loss", "tv_img_loss",
                        "tv_mask_loss", "tcli_loss"}
    assert out["mask"].shape == (2, 1, 16, 16) and out["neg_mask"].shape == (2, 1, 16, 16)
    expected = sum(v for k, v in out.items() if "loss" in k)
    assert torch.equal(tiny_tcl.total_loss(out), expected)
    # area terms: 0.4·|E[M+] − 0.4| and 0.4·E[M−]
    assert out["area_loss"].item() == pytest.approx(0.4 * abs(out["mask"].mean().item() - 0.4), rel=1e-5)
    assert out["neg_area_loss"].item() == pytest.approx(0.4 * out["neg_mask"].mean().item(), rel=1e-5)


def test_disabled_loss_weights_drop_their_terms(tiny_clip_config):
    model = create_tcl(tiny_clip_config, config=TCLConfig(ie_freeze=2, tcl_w=0.0, tv_w=0.0))
    out = model(torch.randn(2, 3, 64, 64), model.tokenize(["a", "b"]))
    assert set(out) == {"mask", "neg_mask", "area_loss", "neg_area_loss"}


@pytest.mark.parametrize("terms, kept, dropped", [(("image",), "tcli_loss", "tclf_loss"),
                                                  (("region",), "tclf_loss", "tcli_loss")])
def test_tcl_terms_keep_only_the_named_term_and_its_temperature_alone_gets_a_gradient(tiny_clip_config, terms,
                                                                                       kept, dropped):
    model = create_tcl(tiny_clip_config, config=TCLConfig(ie_freeze=2, tcl_terms=terms))
    out = model(torch.randn(2, 3, 64, 64), model.tokenize(["a", "b"]))
    assert kept in out and dropped not in out
    model.total_loss(out).backward()
    used, unused = ((model.image_loss, model.region_loss) if terms == ("image",)
                    else (model.region_loss, model.image_loss))
    assert used.logit_scale.grad is not None and unused.logit_scale.grad is None


@pytest.mark.parametrize("terms", [(), ("image", "image"), ("pixel",)])
def test_bad_tcl_terms_are_one_line_errors(terms):
    with pytest.raises(ConfigError, match=r"^tcl_terms: must list each of image, region at most once"):
        TCLConfig(tcl_terms=terms)


def test_tcl_terms_from_a_checkpoint_record_become_a_tuple():
    assert TCLConfig(tcl_terms=["region"]).tcl_terms == ("region",)


def test_clip_stays_in_eval_mode_and_decoder_only_freezes_the_block_copies(tiny_tcl):
    tiny_tcl.train()
    assert tiny_tcl.training and not tiny_tcl.clip.training and tiny_tcl.masker.blocks.training
    tiny_tcl.set_decoder_only(True)
    assert not tiny_tcl.masker.blocks.training
    assert not any(n.startswith("masker.blocks.") for n in tiny_tcl.trainable_parameters())
    tiny_tcl.set_decoder_only(False)
    assert tiny_tcl.masker.blocks.training
    assert any(n.startswith("masker.blocks.") for n in tiny_tcl.trainable_parameters())


def test_ie_freeze_must_leave_a_block_for_the_masker(tiny_clip_config):
    with pytest.raises(ValueError, match="ie_freeze must be in 1..2"):
        create_tcl(tiny_clip_config, config=TCLConfig(ie_freeze=3))


@pytest.mark.parametrize("ie_freeze", [1, 2])
@pytest.mark.parametrize(("apply_pamr", "kp_w"), [(True, 0.3), (False, 0.0)])
def test_generate_masks_matches_the_official_computation(tiny_clip_config, ie_freeze, apply_pamr, kp_w):
    torch.manual_seed(ie_freeze)
    model = create_tcl(tiny_clip_config, config=TCLConfig(ie_freeze=ie_freeze)).eval()
    _randomise_gates(model)
    images = torch.randn(2, 3, 50, 77)
    text = model.build_text_embedding(["cat", "dog", "grass"], template="simple")
    ours = model.generate_masks(images, text, apply_pamr=apply_pamr, kp_w=kp_w)
    clip_state = model.clip.state_dict()
    expected = ref.generate_masks(images, text, clip_state, export_official_state_dict(model), 4,
                                  apply_pamr, kp_w)
    assert ours.shape == (2, 3, 50, 77)
    assert ours.min() >= 0.0 and ours.max() <= 1.0
    assert (ours - expected).abs().max() < 1e-5


def test_padding_is_split_and_cropped_away(tiny_tcl):
    """A 40×40 input is padded to 48×48 (4 px each side) and the masks are cropped back."""
    _randomise_gates(tiny_tcl)
    tiny_tcl.eval()
    text = tiny_tcl.build_text_embedding(["a", "b"], template="simple")
    image = torch.randn(1, 3, 40, 40)
    masks = tiny_tcl.generate_masks(image, text, apply_pamr=False, kp_w=0.0)
    padded = tiny_tcl.generate_masks(torch.nn.functional.pad(image, (4, 4, 4, 4)), text,
                                     apply_pamr=False, kp_w=0.0)
    assert masks.shape == (1, 2, 40, 40)
    assert torch.allclose(masks, padded[..., 4:44, 4:44], atol=1e-6)


def test_text_embedding_averages_unnormalised_templates(tiny_tcl):
    emb = tiny_tcl.build_text_embedding(["cat", "dog"], template="custom")
    assert emb.shape == (2, 32)
    raw = tiny_tcl.encode_text(tiny_tcl.tokenize([t.format("dog") for t in ref_templates()]))
    expected = torch.nn.functional.normalize(raw.mean(0), dim=-1)
    assert torch.allclose(emb[1], expected, atol=1e-6)
    normalised_first = torch.nn.functional.normalize(torch.nn.functional.normalize(raw, dim=-1).mean(0), dim=-1)
    assert not torch.allclose(emb[1], normalised_first, atol=1e-4)  # not CLIP's usual ensembling


def ref_templates():
    from tcl.model.templates import TEMPLATES
    assert len(TEMPLATES["custom"]) == 9 and TEMPLATES["simple"] == ("a photo of a {}.",)
    return TEMPLATES["custom"]


def test_text_embedding_input_errors(tiny_tcl):
    with pytest.raises(ValueError, match="unknown template set 'nope'"):
        tiny_tcl.build_text_embedding(["cat"], template="nope")
    with pytest.raises(ValueError, match="at least one class name"):
        tiny_tcl.build_text_embedding([])


def test_tokenizer_truncates_with_eot_last(tiny_tcl):
    tokens = tiny_tcl.tokenize(["word " * 200, "a cat"])
    assert tokens.shape == (2, 77)
    assert tokens[0, -1].item() == 49407 and tokens[0, 0].item() == 49406
    assert tokens[1, 3].item() == 49407 and tokens[1, 4:].eq(0).all()


def test_normalize_uses_imagenet_statistics(tiny_tcl):
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(tiny_tcl.normalize(x), torch.zeros(1, 3, 2, 2), atol=1e-6)
