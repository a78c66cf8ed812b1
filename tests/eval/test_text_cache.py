"""The text-embedding disk cache: bit-identical reads, a key that covers what the embedding depends on,
corrupt files recomputed, concurrent writers that never expose a partial file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tcl.eval import Protocol, Protocols, evaluate_benchmark, sweep_bg_thresh
from tcl.eval import text_cache as tc

from .conftest import tiny_config, write_layout

REPO = Path(__file__).resolve().parents[2]
NAMES = ["cat", "dog", "grass"]


def test_a_cached_embedding_is_bit_identical_and_skips_the_text_tower(tiny_tcl, tmp_path, monkeypatch):
    computed = tiny_tcl.build_text_embedding(NAMES, "custom").float()
    first, record = tc.text_embedding(tiny_tcl, NAMES, "custom", tmp_path)
    assert record["cache"] == "miss" and Path(record["file"]).is_file() and record["file"].endswith(".safetensors")
    assert torch.equal(first, computed)

    def refuse(tokens):
        raise AssertionError("a cache hit must not run the text tower")

    monkeypatch.setattr(tiny_tcl, "encode_text", refuse)
    again, record = tc.text_embedding(tiny_tcl, NAMES, "custom", tmp_path)
    assert record["cache"] == "hit" and again.dtype == torch.float32
    assert torch.equal(again, computed)
    assert [p.name for p in tmp_path.iterdir()] == [Path(record["file"]).name]  # no temporaries left


def _scores(result: dict) -> dict:
    return {key: result[key] for key in ("miou", "aacc", "macc", "per_class_iou", "per_class_acc", "num_images")}


def test_an_evaluation_reads_its_embeddings_back_with_the_same_numbers(tiny_tcl, tmp_path):
    """A real TCL on a tiny VOC: the first evaluation stores the embeddings under evaluate.text_cache
    (relative to the root), later ones (and the threshold sweep) read them; every number equals the
    uncached evaluation's."""
    write_layout(tmp_path, "voc", images=3)
    geometry = Protocol(short_side=32, long_side=64, crop=32, stride=16)  # the tiny CLIP's 32-px windows
    config = tiny_config(protocols=Protocols(paper=geometry, synthetic=geometry), text_cache="cache/text")
    uncached = evaluate_benchmark(tiny_tcl, "voc", tiny_config(text_cache=None, protocols=config.protocols),
                                  root=tmp_path, print_table=False)
    assert uncached["text_embedding"]["cache"] == "off" and not (tmp_path / "cache").exists()
    first = evaluate_benchmark(tiny_tcl, "voc", config, root=tmp_path, print_table=False)
    second = evaluate_benchmark(tiny_tcl, "voc", config, root=tmp_path, print_table=False)
    assert [first["text_embedding"]["cache"], second["text_embedding"]["cache"]] == ["miss", "hit"]
    assert Path(first["text_embedding"]["file"]).parent == Path("cache/text")  # relative to the root, as configured
    assert _scores(first) == _scores(second) == _scores(uncached)
    sweep = sweep_bg_thresh(tiny_tcl, "voc", config, [0.4], root=tmp_path)
    assert sweep["text_embedding"]["cache"] == "hit" and sweep["candidates"][0.4] == first["miou"]
    for result in (first, sweep):  # the throughput fields of every result
        assert result["num_images"] == 3 and result["num_windows"] >= result["num_images"]
        assert result["windows_per_s"] >= result["images_per_s"] > 0 and result["seconds"] > 0
        assert result["windows_per_s"] == pytest.approx(
            result["images_per_s"] * result["num_windows"] / result["num_images"], rel=1e-3)
        assert (result["precision"], result["device"]) == ("fp32", "cpu")


def test_the_key_covers_text_weights_classes_templates_and_dtype(tiny_tcl, tmp_path):
    def file_of(model=tiny_tcl, names=NAMES, template="custom") -> Path:
        return tc.cache_file(tmp_path, tc.cache_key(model, names, template))

    base = file_of()
    assert file_of() == base
    assert file_of(names=["dog", "cat", "grass"]) != base  # order is the label order
    assert file_of(names=NAMES[:2]) != base
    assert file_of(template="simple") != base
    key = tc.cache_key(tiny_tcl, NAMES, "custom")
    assert key["templates"] == list(tc.get_templates("custom")) and key["dtype"] == "torch.float32"
    assert key["device"] == "cpu"
    with torch.no_grad():
        tiny_tcl.clip.visual.conv1.weight.add_(1.0)  # the image tower: not part of the text embedding
    assert file_of() == base
    with torch.no_grad():
        tiny_tcl.clip.token_embedding.weight[0, 0] += 1.0  # in place: the memoised digest must notice
    changed = file_of()
    assert changed != base
    assert file_of(model=tiny_tcl.half()) not in (base, changed)  # dtype


def test_no_folder_or_no_clip_means_no_cache(tiny_tcl, tmp_path):
    emb, record = tc.text_embedding(tiny_tcl, NAMES, "simple", None)
    assert record == {"cache": "off", "seconds": record["seconds"], "file": None}
    assert torch.equal(emb, tiny_tcl.build_text_embedding(NAMES, "simple").float())

    class NoClip:  # e.g. the tests' colour predictor: nothing to hash, so nothing is cached
        def build_text_embedding(self, names, template):
            return torch.ones(len(names), 3)

    _, record = tc.text_embedding(NoClip(), NAMES, "simple", tmp_path)
    assert record["cache"] == "off" and not any(tmp_path.iterdir())


def _spoil(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "last byte flipped":  # the header still parses: only the checksum sees it
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    elif how == "another key's entry":
        path.write_bytes(other.read_bytes())


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "last byte flipped", "another key's entry"])
def test_an_unusable_file_is_recomputed_and_replaced(tiny_tcl, tmp_path, how):
    computed = tiny_tcl.build_text_embedding(NAMES, "simple").float()
    _, record = tc.text_embedding(tiny_tcl, NAMES, "simple", tmp_path)
    _, other = tc.text_embedding(tiny_tcl, ["cat", "dog", "sky"], "simple", tmp_path)
    path = Path(record["file"])
    _spoil(path, how, Path(other["file"]))
    assert tc.read_entry(path, tc.cache_key(tiny_tcl, NAMES, "simple")) is None
    emb, record = tc.text_embedding(tiny_tcl, NAMES, "simple", tmp_path)
    assert record["cache"] == "rebuilt" and torch.equal(emb, computed)
    emb, record = tc.text_embedding(tiny_tcl, NAMES, "simple", tmp_path)
    assert record["cache"] == "hit" and torch.equal(emb, computed)


def test_a_cache_that_cannot_be_written_only_warns(tiny_tcl, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    with pytest.warns(UserWarning, match="text-embedding cache not written"):
        emb, record = tc.text_embedding(tiny_tcl, NAMES, "simple", blocker / "cache")
    assert record["cache"] == "miss" and torch.equal(emb, tiny_tcl.build_text_embedding(NAMES, "simple").float())


ROWS = 4096  # 8 MiB: a write takes long enough for a reader to land inside it
WRITER = """
import sys, torch
ROWS = int(sys.argv[3])
from tcl.eval.text_cache import write_entry
key = {"format": 1, "classes": [f"c{i}" for i in range(ROWS)]}
tensor = torch.randn(ROWS, 512, generator=torch.Generator().manual_seed(0))
for _ in range(int(sys.argv[2])):
    write_entry(sys.argv[1], key, tensor)
"""


def _whole(data: bytes, size: int, expected: torch.Tensor) -> bool:
    """A complete entry (the header's metadata order varies between processes: compare what it holds)."""
    from safetensors.torch import load

    try:
        return len(data) == size and torch.equal(load(data)["text_emb"], expected)
    except Exception:  # safetensors' own error types for a malformed buffer
        return False


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    """Two processes rewrite the same entry over and over while this one reads it: once it exists, every
    read gets the complete entry (a write in place fails this at once)."""
    path = tmp_path / "cache" / "entry.safetensors"
    key = {"format": 1, "classes": [f"c{i}" for i in range(ROWS)]}
    expected = torch.randn(ROWS, 512, generator=torch.Generator().manual_seed(0))
    tc.write_entry(tmp_path / "reference.safetensors", key, expected)
    complete = (tmp_path / "reference.safetensors").read_bytes()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), "20", str(ROWS)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}) for _ in range(2)]
    reads = partial = 0
    try:
        deadline = time.monotonic() + 120
        while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                assert reads == 0, "the entry vanished between two writes"
                continue
            reads += 1
            partial += not _whole(data, len(complete), expected)
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
            writer.wait(timeout=30)
    assert [w.returncode for w in writers] == [0, 0]
    assert reads > 0 and partial == 0, f"{partial} of {reads} reads saw a partial entry"
    assert torch.equal(tc.read_entry(path, key), expected)
    assert [p.name for p in path.parent.iterdir()] == ["entry.safetensors"]  # every temporary renamed
