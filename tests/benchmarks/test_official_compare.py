"""benchmarks/official_compare.py: its argument checks, import shims and weight conversion (no official code
needed), and, in the slow suite, a tiny-shape run against the real kakaobrain/tcl code (bc2b551) extracted from
the local mirror when there is one.

The harness is only worth its numbers if both sides compute the same thing: the conversion tests check
that every parameter of the official model (its key listing, read off the real model at ViT-B/16 shapes)
gets a value of the right shape from ours, and the slow tests that the outputs agree and that a
different computation is refused rather than timed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch

from tcl.compat import export_official_state_dict
from tcl.inference.sliding import window_boxes
from tcl.model.factory import OPENAI_VIT_B16
from tcl.model.masker import gumbel_sigmoid
from tcl.model.tcl import TCL, TCLConfig
from tests.conftest import read_key_listing

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "official_compare.py"
MIRROR = Path("/work/.mirror/kakaobrain+tcl/repo")


@pytest.fixture(scope="module")
def oc():
    spec = importlib.util.spec_from_file_location("official_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _env() -> dict[str, str]:
    """This checkout's tcl first, whatever PYTHONPATH the test run has (which may carry einops)."""
    extra = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *([extra] if extra else [])])}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- arguments
def test_a_missing_official_path_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out.json"
    done = _run("--official", str(tmp_path / "absent"), "--out", str(out))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "--official" in lines[0] and "no such folder" in lines[0]
    assert "archive bc2b551" in lines[0] or "git clone https://github.com/kakaobrain/tcl" in lines[0]
    assert not out.exists() and done.stdout == ""


def test_a_folder_that_is_not_the_official_code_is_named(oc, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(oc, "OFFICIAL_DEPENDENCIES", {})  # whether einops is installed here or not
    assert oc.main(["--official", str(tmp_path), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "is not a kakaobrain/tcl checkout (no models/tcl/tcl.py)" in err[0] and "kakaobrain/tcl" in err[0]
    assert not (tmp_path / "o.json").exists()


def test_a_missing_dependency_of_the_official_code_names_the_pip_install(oc, tmp_path, monkeypatch):
    assert oc.missing_dependencies({"json": "json", "no_such_module_for_tcl_tests": "no-such-pkg"}) == ["no-such-pkg"]
    monkeypatch.setattr(oc, "OFFICIAL_DEPENDENCIES", {"no_such_einops_for_tcl_tests": "einops"})
    with pytest.raises(oc.UsageError, match=r"needs einops.*pip install einops"):
        oc.check_official(tmp_path)


def test_cases_and_precisions_are_checked(oc, capsys):
    with pytest.raises(oc.UsageError, match="unknown nope; choose from window"):
        oc.parse_args(["--official", "x", "--cases", "window,nope"])
    with pytest.raises(oc.UsageError, match="--precision fp16"):
        oc.parse_args(["--official", "x", "--precision", "fp16"])
    args = oc.parse_args(["--official", "x", "--cases", "image, train", "--precision", "bf16"])
    assert args.cases == ["image", "train"] and args.precision == ("bf16",)
    with pytest.raises(SystemExit) as exited:
        oc.parse_args(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in oc.CASES) and "--repeats" in shown


# ----------------------------------------------------------------------------- shims
def test_the_registry_shim_registers_and_builds(oc):
    registry = oc.official_shims()["mmcv.utils"].Registry("model")

    @registry.register_module()
    class Thing:
        def __init__(self, size, name="x"):
            self.size, self.name = size, name

    built = registry.build({"type": "Thing", "size": 3})
    assert isinstance(built, Thing) and built.size == 3 and built.name == "x"
    with pytest.raises(KeyError, match="already registered"):
        registry.register_module()(Thing)
    with pytest.raises(KeyError, match="Other is not registered in model"):
        registry.build({"type": "Other"})


def test_the_shims_are_what_the_official_imports_resolve_to(oc, monkeypatch):
    """``from mmcv.utils import Registry`` and ``from utils import get_logger`` (kakaobrain/tcl models/builder.py,
    models/tcl/encoders.py) must find the shims even where a real mmcv 2.x (without mmcv.utils.Registry) is
    installed: a module in sys.modules is used before its parent package is looked at."""
    shims = oc.official_shims()
    assert set(shims) <= {"mmcv.utils", "utils", "pkg_resources"} and {"mmcv.utils", "utils"} <= set(shims)
    for name, module in shims.items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace: dict = {}
    exec("from mmcv.utils import Registry\nfrom utils import get_logger\nfrom pkg_resources import packaging",
         namespace)
    assert namespace["Registry"] is oc.Registry
    assert isinstance(namespace["get_logger"](), logging.Logger)
    assert hasattr(namespace["packaging"], "version")


# ----------------------------------------------------------------------------- weights
def _meta_vit_b16():
    """open_clip's ViT-B/16 (what the harness builds with create_clip) with shapes only: no 150M random numbers."""
    with torch.device("meta"):
        return open_clip.create_model(OPENAI_VIT_B16, device="meta").float().eval()


def test_our_clip_in_openai_layout_is_what_sclip_reads(oc):
    state = oc.openai_clip_state(_meta_vit_b16())
    expected = read_key_listing("openai_clip_vit_b16_keys.tsv")
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_every_parameter_of_the_official_model_gets_ours(oc):
    """The official TCL's state dict (tests/fixtures/official_tcl_model_keys.tsv, read off the real model
    built from configs/tcl.yml at ViT-B/16 shapes) is exactly what the harness loads, strict, from ours."""
    with torch.device("meta"):
        model = TCL(_meta_vit_b16(), oc.our_config(_official_model_section()))
    exported = export_official_state_dict(model, include_clip=True)
    assert {k: tuple(v.shape) for k, v in exported.items()} == read_key_listing("official_tcl_model_keys.tsv")


def _official_model_section() -> dict:
    """kakaobrain/tcl bc2b551 configs/tcl.yml ``model:`` as a dict (the values the harness maps)."""
    return {"type": "TCL", "clip_model": "ViT-B/16", "ie_freeze": 11, "ie_ignore_last_attn": True,
            "masker": {"type": "Masker",
                       "decoder": {"type": "GDecoder", "double": True, "n_layers": 2, "kernel_size": 3,
                                   "act": "gelu", "norm": "ln"},
                       "sim2mask": {"init_w": 10.0, "init_b": -2.5, "gumbel_tau": 1.0, "learnable": True}},
            "tcl_w": 0.1, "area_w": 0.4, "tv_w": 1.0}


def test_our_config_follows_the_official_model_section(oc):
    assert oc.our_config(_official_model_section()) == TCLConfig()
    changed = _official_model_section()
    changed.update(ie_freeze=10, tcl_w=0.2, area_w=0.5, tv_w=0.0)
    changed["masker"]["decoder"]["n_layers"] = 1
    changed["masker"]["sim2mask"].update(init_w=5.0, init_b=-1.0, gumbel_tau=0.5)
    assert oc.our_config(changed) == TCLConfig(ie_freeze=10, decoder_stages=1, sim2mask_init_w=5.0,
                                               sim2mask_init_b=-1.0, gumbel_tau=0.5, tcl_w=0.2, area_w=0.5,
                                               tv_w=0.0)
    changed["masker"]["decoder"]["type"] = "Other"
    with pytest.raises(oc.UsageError, match="not the released TCL one"):
        oc.our_config(changed)


# ----------------------------------------------------------------------------- the checks
def test_median_noise_makes_the_gumbel_mask_layout_independent(oc):
    """Under the check's noise mode both sides' Gumbel-sigmoid hard masks are σ(z) > ½ whatever layout their
    noise tensor has; with real noise the same numbers in another layout give another mask."""
    logits = torch.randn(4, 4, 8, 8) * 2
    permuted = logits.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same values, channels-last strides
    with oc.MedianNoise() as mode:
        ours = gumbel_sigmoid(logits)
        theirs = torch.rand_like(permuted)
    assert mode.draws == 2
    assert torch.equal(ours, (logits > 0).float()) and torch.equal(theirs, torch.full_like(permuted, 0.5))
    torch.manual_seed(0)
    contiguous = torch.rand(logits.shape)
    torch.manual_seed(0)
    strided = torch.rand_like(permuted)
    assert not torch.equal(contiguous, strided)


def test_the_restated_mmseg_windows_are_ours(oc):
    for height, width, crop, stride in ((448, 597, 448, 224), (448, 448, 448, 224), (100, 1000, 448, 224),
                                        (500, 448, 448, 224), (64, 90, 64, 32), (300, 200, 128, 100)):
        assert oc.mmseg_boxes(height, width, crop, stride) == window_boxes(height, width, crop, stride)


def test_masks_that_differ_are_a_problem(oc):
    masks = torch.rand(3, 16, 16)
    assert oc._mask_problem(oc._mask_agreement(masks, masks.clone())) is None
    assert "masks differ by 2.00e-04" in oc._mask_problem(oc._mask_agreement(masks + 2e-4, masks))
    # within the tolerance everywhere, but one pixel's arg-max moves
    argmax_flip = masks.clone()
    argmax_flip[:, 0, 0] = torch.tensor([0.5, 0.5 + 5e-5, 0.1])
    reference = argmax_flip.clone()
    reference[:, 0, 0] = torch.tensor([0.5 + 5e-5, 0.5, 0.1])
    tie = oc._mask_agreement(argmax_flip, reference)  # top two 5e-5 apart, max|Δ| 5e-5: a tie, not a problem
    assert tie["label_flips"] == 1 and tie["label_flips_beyond_ties"] == 0 and oc._mask_problem(tie) is None
    # labels made apart from the scores (the whole-image case's resize and arg-max): a flip where the official
    # top two are 0.3 apart is a different computation even though the scores agree
    labels = reference.argmax(0)
    moved = labels.clone()
    moved[5, 5] = (labels[5, 5] + 1) % 3
    top = int(labels[5, 5])
    reference[:, 5, 5] = torch.tensor([[0.9, 0.6, 0.1][(i - top) % 3] for i in range(3)])
    real = {"max_abs_diff": 1e-6, **oc._label_agreement(moved, labels, reference, 1e-6)}
    assert real["label_flips_beyond_ties"] == 1 and "labels differ where the top two" in oc._mask_problem(real)


# ----------------------------------------------------------------------------- against the real official code
def _needs_official():
    if shutil.which("git") is None or not MIRROR.is_dir():
        pytest.skip(f"needs git and the kakaobrain/tcl mirror at {MIRROR}")
    absent = [m for m in ("einops", "omegaconf") if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"the official code needs {', '.join(absent)} (pip install --target DIR; DIR on PYTHONPATH)")


@pytest.fixture(scope="module")
def official_checkout(tmp_path_factory):
    _needs_official()
    root = tmp_path_factory.mktemp("official-tcl")
    archive = subprocess.run(["git", f"--git-dir={MIRROR}", "archive", "bc2b551"], capture_output=True, timeout=120)
    if archive.returncode:
        pytest.skip(f"git archive bc2b551 failed: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True, timeout=120)
    return root


@pytest.mark.slow
def test_tiny_run_agrees_with_the_official_code(official_checkout, tmp_path):
    out = tmp_path / "compare.json"
    done = _run("--official", str(official_checkout), "--tiny", "--repeats", "1", "--cases", "window,image,train",
                "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["official"]["commit"] == "bc2b551"  # the fingerprint of the model files matched
    assert report["ours"]["tcl"] == str(REPO)
    cases = report["cases"]
    for name in ("window", "image"):
        fp32 = cases[name]["agreement"]["fp32"]
        assert fp32["max_abs_diff"] <= 1e-4 and fp32["label_flips_beyond_ties"] == 0, (name, fp32)
        labels = fp32.get("classes_only", fp32)  # the image's background may win everywhere (random weights)
        assert labels["distinct_labels"] >= 2 and labels["label_flips_beyond_ties"] == 0, (name, labels)
    train = cases["train"]["agreement"]["fp32"]
    assert train["loss_rel_diff"] <= 1e-4 and train["grad_rel_diff"] <= 1e-3
    assert train["grads_compared"] == train["grads_official"] == 39
    lines = [line for line in done.stdout.splitlines() if " ratio " in line and not line.startswith("case ")]
    assert [line.split()[:2] for line in lines] == [[c, p] for c in ("window", "image", "train")
                                                    for p in ("fp32", "bf16")]


@pytest.mark.slow
def test_a_different_computation_is_refused_not_timed(official_checkout):
    """One official weight moved: the window check must report the difference and time nothing."""
    driver = textwrap.dedent(f"""
        import importlib.util, json, sys, torch
        spec = importlib.util.spec_from_file_location("official_compare", {str(SCRIPT)!r})
        oc = importlib.util.module_from_spec(spec); sys.modules[spec.name] = oc; spec.loader.exec_module(oc)
        root = oc.check_official({str(official_checkout)!r})
        ours, theirs = oc.build_models(oc.import_official(root), root, oc.TINY)
        with torch.no_grad():
            theirs.masker.sim2mask.b += 0.01
            sides = oc.CASES["window-nopamr"][1](ours, theirs, oc.TINY)
            measured = oc.measure("window-nopamr", sides, ("fp32",), 2, print)
        print(json.dumps({{"problem": measured.problem, "timed": measured.ours_s}}))
    """)
    done = subprocess.run([sys.executable, "-c", driver], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["problem"].startswith("masks differ by") and result["timed"] == {}
    assert "disagree" in done.stdout and "not timed" in done.stdout
