"""params.yaml survives DVC's writer: it is written exactly as ``dvc exp run -S`` writes it, so a one-key
override is a one-line diff, and its explanations live in docs/params.md, where the writer cannot drop them."""

from __future__ import annotations

import difflib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from pipelines.overrides import parse_overrides, write_overrides
from tcl.config import load_params, params_from_file, read_params_file

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
DOCS = REPO / "docs" / "params.md"
#: The values of the commented params.yaml this file replaced (read with DVC's YAML 1.2 reader), as JSON.
BEFORE = REPO / "tests" / "fixtures" / "params_values_i14.json"
#: Keys whose value others may change since then (the key must stay).
MAY_CHANGE = {("pipeline", "nproc_per_node")}
#: Keys added since then, with their values (every other key keeps the value it had).
ADDED = {("evaluate", "text_cache"): ".cache/text_embeddings", ("train", "shuffle_captions"): "none",
         ("model", "tcl_terms"): ["region"]}
#: Values changed on purpose since then, by path (issue 16: the tiny CLIP pools its class token, as real CLIP's
#: ViTs; the built-in world trains the region-level term alone at weight 0.3, its block copy from the start,
#: for 40 steps validated every 10; the loopback corpus downloads with 8 threads a process, a speed setting only).
CHANGED = {("clip", "model", "vision_cfg", "pool_type"): "tok", ("model", "tcl_w"): 0.3, ("train", "ust_steps"): 0,
           ("train", "steps"): 40, ("train", "val_every"): 10, ("train", "checkpoint_every"): 10,
           ("download", "sources", "synthetic", "threads"): 8}


def _dvc_rewrite(path: Path, overrides: list[str]) -> None:
    """What ``dvc exp run -S`` does to the file: DVC's own code path (as pipelines.overrides.write_overrides)."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(path), overrides)


def _changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("override, removed, added", [
    ("train.steps=5", "  steps: 40", "  steps: 5"),
    ("clip.weights=openai", "  weights:", "  weights: openai"),  # null, written empty, as DVC writes it
    ("prepare_clip.min_lr=0.00002", "  min_lr: 1e-05", "  min_lr: 2e-05"),
    ("evaluate.pamr=true", "  pamr:", "  pamr: true"),
    ("download.sources.synthetic.threads=4", "      threads: 8", "      threads: 4"),
    ("data.sources.0.weight=2.0", "    weight: 1.0", "    weight: 2.0"),
])
def test_a_dvc_rewrite_of_one_key_is_a_one_line_diff(tmp_path, override, removed, added):
    copy = tmp_path / "params.yaml"
    shutil.copy(PARAMS, copy)
    _dvc_rewrite(copy, [override])
    assert _changed_lines(PARAMS.read_text(), copy.read_text()) == [f"-{removed}", f"+{added}"]


def test_make_run_overrides_change_only_their_lines(tmp_path):
    """``make run ARGS="-S ..."`` writes through pipelines.overrides (DVC's writer, validated first)."""
    copy = tmp_path / "params.yaml"
    shutil.copy(PARAMS, copy)
    write_overrides(copy, parse_overrides(["train.steps=7", "evaluate.bg_thresh=0.4"]))
    assert sorted(_changed_lines(PARAMS.read_text(), copy.read_text())) == [
        "+  bg_thresh: 0.4", "+  steps: 7", "-  bg_thresh:", "-  steps: 40"]


def test_params_yaml_is_exactly_what_dvcs_writer_writes():
    """No comments, block style, DVC's spelling of null and floats: the writer's fixed point, byte for byte."""
    from dvc.utils.serialize._yaml import _dump  # what DVC's YAML modifier dumps with

    text = PARAMS.read_text()
    assert not [line for line in text.splitlines() if "#" in line], "params.yaml has comments: see docs/params.md"
    out = io.StringIO()
    _dump(YAML(typ="rt").load(text), out)
    assert out.getvalue() == text


def test_the_values_are_those_of_the_commented_file():
    expected = json.loads(BEFORE.read_text())
    now = YAML(typ="safe").load(PARAMS.read_text())  # DVC's reader (YAML 1.2: 1e-05 is a number)
    for section, key in MAY_CHANGE:
        expected[section][key] = now[section][key]
    for (section, key), value in ADDED.items():
        expected[section][key] = value
    for (*parents, key), value in CHANGED.items():
        node = expected
        for name in parents:
            node = node[name]
        node[key] = value
    assert now == expected
    assert load_params(PARAMS) == params_from_file(expected, PARAMS)  # tcl.config (PyYAML) reads the same Params


def _documented_keys() -> set[str]:
    return set(re.findall(r"`([a-z_]+\.[a-z0-9_]+)", DOCS.read_text()))


def test_every_section_and_key_has_an_entry_in_docs_params_md():
    data = read_params_file(PARAMS)
    keys = {f"{section}.{key}" for section, values in data.items() for key in values}
    documented = _documented_keys()
    assert sorted(keys - documented) == []
    headings = set(re.findall(r"^## `([a-z_]+)`", DOCS.read_text(), re.M))
    assert headings == set(data)
    unknown = {k for k in documented if k.split(".")[0] in data} - keys
    assert sorted(unknown) == []  # a renamed or removed key leaves no stale entry
