"""``pipeline.nproc_per_node: auto`` (the default): one train process per GPU of the machine, 1 on a CPU."""

from __future__ import annotations

import re
import subprocess

import pytest

from pipelines.dvc_cli import tool_env
from tcl.config import ConfigError, PipelineConfig, load_params

from .conftest import REPO, run_python


def test_auto_is_the_default_and_means_the_gpu_count_or_one():
    assert PipelineConfig().nproc_per_node == "auto"
    assert load_params(REPO / "params.yaml").pipeline.nproc_per_node == "auto"
    assert PipelineConfig().local_world_size(gpus=0) == 1 and PipelineConfig().local_world_size(gpus=4) == 4
    assert PipelineConfig(nproc_per_node=3).local_world_size(gpus=8) == 3  # a number is kept as given
    for bad in (0, "gpus"):
        with pytest.raises(ConfigError, match="nproc_per_node: must be >= 1 or auto"):
            PipelineConfig(nproc_per_node=bad)


def _expected() -> str:
    import torch

    return str(max(1, torch.cuda.device_count()))


def test_the_train_command_takes_its_process_count_from_the_machine(tmp_path):
    """dvc.yaml's train command (as DVC resolves it) asks pipelines.nproc, which prints the machine's count."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        [stage] = repo.stage.collect("train")
    [inner] = re.findall(r"--nproc-per-node \$\((.+?)\)", stage.cmd)
    assert inner == "python -m pipelines.nproc --params params.yaml"
    # as DVC runs it: a shell, with the project's interpreter first on PATH (pipelines.dvc_cli.tool_env)
    done = subprocess.run(["bash", "-c", f"echo $({inner})"], cwd=REPO, env=tool_env(), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == _expected(), done.stderr

    fixed = tmp_path / "params.yaml"
    fixed.write_text((REPO / "params.yaml").read_text().replace("nproc_per_node: auto", "nproc_per_node: 3"))
    done = run_python(["-m", "pipelines.nproc", "--params", str(fixed)], REPO)
    assert done.returncode == 0 and done.stdout == "3\n"
    fixed.write_text((REPO / "params.yaml").read_text().replace("nproc_per_node: auto", "nproc_per_node: many"))
    done = run_python(["-m", "pipelines.nproc", "--params", str(fixed)], REPO)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "nproc: error: pipeline.nproc_per_node: must be >= 1 or auto (the machine's GPU count), got 'many'"]


def test_without_gpu_device_nodes_the_count_is_zero_and_torch_stays_unimported(monkeypatch):
    """The shortcut behind ``auto``: no /dev/nvidia<N>, /dev/kfd or /dev/dxg on Linux means torch's count is 0."""
    import sys

    import tcl.config as config

    monkeypatch.setattr(config.sys, "platform", "linux")
    monkeypatch.setattr(config.glob, "glob", lambda pattern: [])
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    assert config.gpu_count() == 0


def test_with_a_gpu_device_node_torch_is_asked(monkeypatch):
    import torch

    import tcl.config as config

    monkeypatch.setattr(config.sys, "platform", "linux")
    monkeypatch.setattr(config.glob, "glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert config.gpu_count() == 3 and PipelineConfig().local_world_size() == 3
    monkeypatch.setattr(config.sys, "platform", "win32")  # no /dev to look at: torch is asked
    monkeypatch.setattr(config.glob, "glob", lambda pattern: [])
    assert config.gpu_count() == 3


def test_this_machine_agrees_with_torch():
    """The shortcut must never disagree with torch's own count on the machine that runs the suite."""
    import torch

    from tcl.config import gpu_count

    assert gpu_count() == torch.cuda.device_count()
