"""``-S/--set`` has one declaration (pipelines.overrides.add_override_arguments) for every command line that
takes overrides, and importing it costs no torch, so that --help and argument errors stay instant."""

from __future__ import annotations

import argparse
import subprocess
import sys

from pipelines.overrides import add_override_arguments

from .conftest import REPO

COMMANDS = ["stages/common.py", "pipelines/run.py", "pipelines/flow.py", "pipelines/serve.py"]


def test_set_is_declared_in_one_place():
    declared = sorted(str(path.relative_to(REPO)) for folder in ("stages", "pipelines", "tcl")
                      for path in (REPO / folder).rglob("*.py") if '"--set"' in path.read_text())
    # (download's own --set, without -S, passes img2dataset arguments through: not a parameter override)
    assert declared == ["pipelines/overrides.py", "stages/download.py"]
    for command in COMMANDS:  # and each command line takes it from there
        assert "add_override_arguments" in (REPO / command).read_text(), command


def test_the_declaration_collects_repeated_overrides_with_a_help_of_the_command_s_own():
    parser = argparse.ArgumentParser()
    add_override_arguments(parser, "default parameter override of the scheduled runs (repeatable)")
    assert parser.parse_args(["-S", "train.steps=3", "--set", "clip.weights=null"]).overrides == [
        "train.steps=3", "clip.weights=null"]
    assert parser.parse_args([]).overrides == []
    assert "default parameter override of the scheduled runs" in parser.format_help()


def test_importing_it_imports_neither_torch_nor_the_stages():
    probe = ("import sys, pipelines.overrides, stages.common; "
             "print(sorted(m for m in ('torch', 'prefect', 'dvc') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]
