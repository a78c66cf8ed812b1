"""tcl.config loads and validates a whole parameter file without torch, open_clip, webdataset or mmseg,
and the sections check themselves when built in code, with the messages the loader shows."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcl.config import ClipSettings, ConfigError, PipelineConfig, from_dict
from tcl.data.config import CocoObjectConversion, DownloadConfig, DownloadSource, ShardSource, StreamConfig
from tcl.data.synthetic.config import SyntheticParams
from tcl.eval.config import EvalConfig, Protocol
from tcl.model.config import TCLConfig
from tcl.train.config import ClipPretrainConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "webdataset", "mmseg")
#: The modules that hold a section of params.yaml: each must stay importable without torch.
SECTION_MODULES = ("tcl/config.py", "tcl/model/config.py", "tcl/data/config.py", "tcl/data/synthetic/config.py",
                   "tcl/train/config.py", "tcl/eval/config.py")
PROBE = ("import sys, tcl.config; params = tcl.config.load_params(sys.argv[1]); "
         f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")


def _heavy_modules_loaded(root: Path) -> list[str]:
    """The heavy packages in sys.modules of a fresh interpreter after tcl.config.load_params(params.yaml),
    importing the ``tcl`` package under ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "params.yaml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.strip().split(",") if name]


def test_loading_the_project_params_imports_no_torch_open_clip_webdataset_or_mmseg():
    assert _heavy_modules_loaded(REPO) == []


def test_the_probe_sees_a_torch_import_in_a_section_module(tmp_path):
    """The check above can fail: with ``import torch`` added to one section module it reports torch."""
    copy = tmp_path / "tcl"
    subprocess.run(["cp", "-r", str(REPO / "tcl"), str(copy)], check=True)
    module = copy / "train" / "config.py"
    text = module.read_text()
    anchor = "from ..errors import require"
    module.write_text(text.replace(anchor, f"import torch  # noqa: F401\n\n{anchor}"))
    assert "torch" in _heavy_modules_loaded(tmp_path)


@pytest.mark.parametrize("path", ["tcl/train/trainer.py", "tcl/train/clip_pretraining.py"])
def test_training_does_not_import_tcl_config(path):
    """No cycle tcl.config ↔ tcl.train: training imports its section from tcl.train.config only (a
    ``TYPE_CHECKING`` import for annotations does not run)."""
    tree = ast.parse((REPO / path).read_text())
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
    for node in ast.walk(tree):  # ``from ..config import`` inside tcl/train/ is tcl.config (``.config`` is ours)
        if isinstance(node, ast.ImportFrom) and id(node) not in type_only:
            module = ("tcl." if node.level == 2 else "tcl.train." if node.level == 1 else "") + (node.module or "")
            assert module != "tcl.config", f"{path}:{node.lineno} imports tcl.config"
        elif isinstance(node, ast.Import) and id(node) not in type_only:
            assert "tcl.config" not in [alias.name for alias in node.names], f"{path}:{node.lineno}"


@pytest.mark.parametrize(("build", "message"), [
    (lambda: TCLConfig(ie_freeze=0), "ie_freeze: must be >= 1, got 0"),
    (lambda: TCLConfig(gumbel_tau=0.0), "gumbel_tau: must be > 0, got 0.0"),
    (lambda: ClipSettings(weights=""), "weights: must be null, 'openai' or a weights file, got ''"),
    (lambda: ClipSettings(model={"embed_dim": 8}),
     "model.vision_cfg: missing (a CLIP config dict needs embed_dim, vision_cfg, text_cfg)"),
    (lambda: StreamConfig(augment="heavy"), "augment: must be one of paper, crop, none, got 'heavy'"),
    (lambda: StreamConfig(batch_size=0), "batch_size: must be >= 1, got 0"),
    (lambda: TrainConfig(steps=0), "steps: must be >= 1, got 0"),
    (lambda: TrainConfig(precision="fp8"), "precision: must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    (lambda: TrainConfig(val_benchmarks=("t_voc20",), val_metric="voc_miou"),
     "val_metric: must be one of avg_miou, t_voc20_miou, got 'voc_miou'"),
    (lambda: ClipPretrainConfig(lr=0.0), "lr: must be > 0, got 0.0"),
    (lambda: EvalConfig(kp_w=2.0), "kp_w: must be in [0, 1] (or null: the setting's), got 2.0"),
    (lambda: Protocol(stride=0), "stride: must be >= 1, got 0"),
    (lambda: SyntheticParams(pairs=0), "pairs: must be >= 1, got 0"),
    (lambda: DownloadSource(root="r", list="l.tsv", out="o", threads=0), "threads: must be >= 1, got 0"),
    (lambda: DownloadSource(root="r", list="l.tsv"), "out: must be set"),
    (lambda: DownloadConfig(sources={}), "sources: at least one source is needed"),
    (lambda: CocoObjectConversion(root="r"), "out: must be set"),
    (lambda: PipelineConfig(register_alias="latest"), "register_alias: a name like 'champion' (not 'latest')"),
])
def test_a_section_built_in_code_checks_itself(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value).startswith(message)


def test_the_loader_prefixes_the_section_path_to_the_sections_own_message():
    with pytest.raises(ConfigError, match=r"^train\.val_metric: must be one of avg_miou, t_voc20_miou, got 'x'$"):
        from_dict(TrainConfig, {"val_benchmarks": ["t_voc20"], "val_metric": "x"}, "train")
    with pytest.raises(ConfigError, match=r"^evaluate\.protocols\.paper\.crop: must be >= 1, got 0$"):
        from_dict(EvalConfig, {"protocols": {"paper": {"crop": 0}}}, "evaluate")
    with pytest.raises(ConfigError, match=r"^data\.batch_size: must be >= 1, got 0$"):
        from_dict(StreamConfig, {"batch_size": 0, "sources": [{"patterns": ["x"]}]}, "data")


def test_defaults_are_valid_configs():
    """Every section's defaults pass its own checks: code may build a config from defaults alone."""
    for section in (TCLConfig, ClipSettings, StreamConfig, ShardSource, TrainConfig, ClipPretrainConfig, EvalConfig,
                    SyntheticParams, DownloadConfig, PipelineConfig):
        section()
