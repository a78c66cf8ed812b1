from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from tcl.data.stream import (
    ShardSource,
    StreamConfig,
    StreamError,
    StreamState,
    TrainingStream,
    _derange,
    _derange_disjoint,
    build_loader,
)
from tcl.data.synthetic import STUFF_NAMES, named_kinds, render_scene


def _jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder, prefix: str, shards: int, per_shard: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for s in range(shards):
        name = folder / f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(name)) as sink:
            for i in range(per_shard):
                sink.write({"__key__": f"{s:04d}{i:04d}", "jpg": _jpeg(s * 1000 + i),
                            "txt": f"{prefix} sample {s} {i}"})
        names.append(str(name))
    return names


def make_stream(tmp_path, world=1, rank=0, resume=None, shuffle_captions="none", **overrides):
    options = dict(sources=(ShardSource((str(tmp_path / "a" / "a-{000000..000003}.tar"),)),), batch_size=3,
                   num_workers=0, seed=7, shuffle_buffer=8, shuffle_initial=4, image_size=32, augment="none")
    options.update(overrides)
    return TrainingStream(StreamConfig(**options), rank=rank, world_size=world, resume=resume,
                          shuffle_captions=shuffle_captions)


@pytest.fixture()
def shards(tmp_path):
    write_shards(tmp_path / "a", "a", shards=4, per_shard=6)
    return tmp_path


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_batches_are_full_tokenised_and_reproducible(shards):
    first = take(build_loader(make_stream(shards)), 5)
    again = take(build_loader(make_stream(shards)), 5)
    assert all(b["image"].shape == (3, 3, 32, 32) and b["text"].shape == (3, 77) for b in first)
    assert [b["caption"] for b in first] == [b["caption"] for b in again]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(first, again, strict=True))
    other_seed = take(build_loader(make_stream(shards, seed=8)), 5)
    assert [b["caption"] for b in other_seed] != [b["caption"] for b in first]


def test_shuffled_captions_keep_the_images_and_pair_each_with_another_caption(shards):
    real = take(build_loader(make_stream(shards, num_workers=2, batch_size=4)), 6)
    shuffled = take(build_loader(make_stream(shards, num_workers=2, batch_size=4, shuffle_captions="any")), 6)
    again = take(build_loader(make_stream(shards, num_workers=2, batch_size=4, shuffle_captions="any")), 6)
    moved = 0
    for r, s, a in zip(real, shuffled, again, strict=True):
        assert torch.equal(r["image"], s["image"])  # same images in the same order: only the pairing changes
        assert sorted(s["caption"]) == sorted(r["caption"])  # the batch's own captions, each used once
        assert all(x != y for x, y in zip(s["caption"], r["caption"], strict=True))  # none keeps its own
        assert s["caption"] == a["caption"]  # deterministic, so a shuffled run resumes exactly
        assert torch.equal(s["text"], make_stream(shards).tokenizer(s["caption"]))  # tokens follow the captions
        moved += s["caption"] != r["caption"]
    assert moved == len(real)
    assert len({tuple(b["caption"]) for b in shuffled}) == len(shuffled)


@pytest.mark.parametrize("shard_count", [4, 1])  # shard-level split, then sample-level split
def test_ranks_and_workers_see_disjoint_samples_covering_an_epoch(tmp_path, shard_count):
    write_shards(tmp_path / "a", "a", shards=shard_count, per_shard=24 // shard_count)
    pattern = str(tmp_path / "a" / "a-*.tar")
    seen = []
    for rank in range(2):
        # no shuffle buffer, so the first epoch is not mixed with the next one
        stream = make_stream(tmp_path, world=2, rank=rank, num_workers=2, batch_size=2, shuffle_buffer=1,
                             shuffle_initial=1, sources=(ShardSource((pattern,)),))
        batches = take(build_loader(stream), 6)  # 2 workers × 3 batches × 2 = 6 samples per slot = 1 epoch
        seen += [c for b in batches for c in b["caption"]]
    assert len(seen) == 24 and len(set(seen)) == 24


def _check_assignment(captions):
    """``captions`` re-assigned, each caption used once and no image given its own (by index)."""
    tagged = [f"{c} #{i}" for i, c in enumerate(captions)]
    for seed in range(5):
        moved = _derange_disjoint(tagged, seed)
        assert sorted(moved) == sorted(tagged)
        assert all(m != t for m, t in zip(moved, tagged, strict=True))


def test_disjoint_captions_name_no_kind_the_image_shows():
    scenes = [render_scene(0, 0, index, 48) for index in range(512)]
    own = [scene.caption for scene in scenes]
    stuff = set(STUFF_NAMES)
    shows = {"disjoint": [0, 0], "any": [0, 0]}  # images given a caption naming an object / a background they show
    for start in range(0, 512, 64):
        batch = own[start:start + 64]
        moved = _derange_disjoint(batch, seed=start)
        assert sorted(moved) == sorted(batch) and moved == _derange_disjoint(batch, seed=start)
        assert moved != _derange_disjoint(batch, seed=start + 1)  # the seed chooses among the assignments
        for m, c in zip(moved, batch, strict=True):
            assert not named_kinds(m) & named_kinds(c)
            assert not named_kinds(m) & stuff or named_kinds(c) & stuff  # a background only if the own names one
        for mode, captions in (("disjoint", moved), ("any", _derange(batch, start))):
            for scene, caption in zip(scenes[start:start + 64], captions, strict=True):
                shows[mode][0] += bool(named_kinds(caption) & set(scene.objects))
                shows[mode][1] += bool(named_kinds(caption) & set(scene.stuffs))
    # against the scenes' truth: no object and few backgrounds shown (a second background its caption left
    # out); a plain derangement ("any") pairs many images with a caption naming what they show
    assert shows["disjoint"][0] == 0 and shows["disjoint"][1] < 0.06 * 512, shows
    assert shows["any"][0] > 0.2 * 512 and shows["any"][1] > 0.1 * 512, shows


def test_disjoint_captions_fall_back_to_another_images_caption_when_none_is_disjoint():
    _check_assignment(["a car", "two cars", "a car and a dog", "a red car"])  # every image shows a car
    _check_assignment(["a car", "a dog", "a car and a dog"])  # the third has no disjoint caption left
    for n in range(2, 9):
        _check_assignment(["a cat"] * (n - 1) + ["a bus"])
    assert _derange_disjoint(["a cat"], 0) == ["a cat"]


def test_disjoint_stream_pairs_images_with_captions_that_name_other_kinds(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    with wds.TarWriter(str(folder / "a-000000.tar")) as sink:
        for i in range(96):
            caption = render_scene(1, 0, i, 48).caption
            sink.write({"__key__": f"{i:04d}", "jpg": _jpeg(i), "txt": caption})
    stream = make_stream(tmp_path, shuffle_captions="disjoint", batch_size=32,
                         sources=(ShardSource((str(folder / "a-000000.tar"),)),))
    real = take(build_loader(make_stream(tmp_path, batch_size=32, sources=stream.config.sources)), 3)
    for r, s in zip(real, take(build_loader(stream), 3), strict=True):
        assert torch.equal(r["image"], s["image"]) and sorted(r["caption"]) == sorted(s["caption"])
        assert all(not named_kinds(a) & named_kinds(b) for a, b in zip(r["caption"], s["caption"], strict=True))
    with pytest.raises(StreamError, match="shuffle_captions must be one of none, any, disjoint"):
        make_stream(tmp_path, shuffle_captions=True)


@pytest.mark.parametrize("shuffle_captions", ["none", "any", "disjoint"])  # the control run resumes exactly too
@pytest.mark.parametrize("interrupt_at", [4, 5])  # the next batch belongs to worker 0, then to worker 1
def test_exact_resume_matches_an_uninterrupted_run(shards, interrupt_at, shuffle_captions):
    kwargs = dict(num_workers=2, augment="paper", shuffle_buffer=5, shuffle_captions=shuffle_captions)
    full = take(build_loader(make_stream(shards, **kwargs)), 10)

    stream = make_stream(shards, **kwargs)
    state = stream.initial_state()
    for batch in take(build_loader(stream), interrupt_at):
        state.update(batch)
    saved = StreamState.from_dict(state.to_dict())  # what a checkpoint stores
    resumed = take(build_loader(make_stream(shards, resume=saved, **kwargs)), 10 - interrupt_at)

    assert [b["caption"] for b in resumed] == [b["caption"] for b in full[interrupt_at:]]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(resumed, full[interrupt_at:], strict=True))


def test_resume_from_another_setup_is_refused(shards):
    state = StreamState(seed=7, world_size=2, num_workers=1)
    with pytest.raises(StreamError, match="cannot resume the data stream exactly"):
        make_stream(shards, resume=state)


def test_bad_data_is_skipped_and_counted(tmp_path):
    folder = tmp_path / "bad"
    write_shards(folder, "good", shards=1, per_shard=6)
    with wds.TarWriter(str(folder / "good-000001.tar")) as sink:
        sink.write({"__key__": "x1", "jpg": b"not a jpeg", "txt": "broken image"})
        sink.write({"__key__": "x2", "jpg": _jpeg(1), "txt": "   "})
        sink.write({"__key__": "x3", "txt": "no image at all"})
        sink.write({"__key__": "x4", "jpg": _jpeg(2)[:200], "txt": "truncated jpeg"})
        sink.write({"__key__": "x5", "jpg": _jpeg(3), "txt": "fine"})
    (folder / "good-000002.tar").write_bytes(b"\x00garbage" * 100)
    pattern = str(folder / "good-{000000..000003}.tar")  # 000003 does not exist
    stream = make_stream(tmp_path, sources=(ShardSource((pattern,)),), batch_size=1, shuffle_buffer=1,
                         shuffle_initial=1)
    assert stream.missing == [str(folder / "good-000003.tar")]
    batches = take(build_loader(stream), 14)  # two epochs of the 7 good samples
    counts = batches[-1]["skipped"]
    assert counts["undecodable_image"] == 4 and counts["empty_caption"] == 2
    assert counts["incomplete_sample"] == 2 and counts["corrupt_tar"] >= 1
    assert stream.skip_counts(StreamState(7, 1, 1, skipped={0: counts}))["shard_missing"] == 1
    assert {c for b in batches for c in b["caption"]} >= {"fine", "good sample 0 0"}


def test_sources_mix_by_weight(tmp_path):
    write_shards(tmp_path / "a", "a", shards=2, per_shard=10)
    write_shards(tmp_path / "b", "b", shards=2, per_shard=10)
    stream = make_stream(tmp_path, batch_size=20, sources=(
        ShardSource((str(tmp_path / "a"),), weight=3.0), ShardSource((str(tmp_path / "b" / "b-*.tar"),), weight=1.0)))
    captions = [c for b in take(build_loader(stream), 20) for c in b["caption"]]
    share = sum(c.startswith("a ") for c in captions) / len(captions)
    assert 0.70 < share < 0.80


def test_missing_sources_fail_at_start_with_a_clear_message(tmp_path):
    with pytest.raises(StreamError, match=r"no shards found .*run the download stage"):
        make_stream(tmp_path, sources=(ShardSource((str(tmp_path / "none-{000000..000002}.tar"),)),))


def test_augmentation_failures_are_skipped_and_counted(shards):
    stream = make_stream(shards, batch_size=2)
    calls = {"n": 0}
    transform = stream.transform

    def flaky(image):
        calls["n"] += 1
        if calls["n"] % 3 == 0:  # what timm's 0-bit posterize does on current Pillow
            raise ValueError("bits must be between or equal to 1 and 8")
        return transform(image)

    stream.transform = flaky
    batches = take(build_loader(stream), 4)
    assert all(b["image"].shape[0] == 2 for b in batches)
    assert batches[-1]["skipped"]["augment_error"] == 3


def _cut_end_of_archive(path) -> None:
    """Cut a tar just before its closing zero blocks: every sample still reads, the archive is truncated."""
    data = path.read_bytes().rstrip(b"\0")
    path.write_bytes(data + b"\0" * (-len(data) % 512))  # the last member's padding, not the end blocks


@pytest.mark.parametrize("layout", ["folder", "brace"])
def test_every_skip_is_counted_under_its_reason(tmp_path, layout):
    """Planted: 3 undecodable images, 2 non-UTF-8 captions, one missing shard, one truncated tar; one
    epoch's counts must say exactly that, and the non-UTF-8 captions must not be used repaired."""
    folder = tmp_path / "shards"
    write_shards(folder, "s", shards=4, per_shard=5)  # 20 good samples, s-000000 .. s-000003
    with wds.TarWriter(str(folder / "s-000004.tar")) as sink:  # bad samples, each shard ending with a good one
        for i in range(3):
            sink.write({"__key__": f"bad{i}", "jpg": b"not a jpeg", "txt": f"broken image {i}"})
        for i in range(2):
            sink.write({"__key__": f"mojibake{i}", "jpg": _jpeg(90 + i), "txt": b"caf\xe9 \xff" + bytes([i])})
        sink.write({"__key__": "last", "jpg": _jpeg(99), "txt": "a good one"})
    _cut_end_of_archive(folder / "s-000003.tar")
    (folder / "s-000001.tar").unlink()
    pattern = str(folder) if layout == "folder" else str(folder / "s-{000000..000004}.tar")
    stream = make_stream(tmp_path, sources=(ShardSource((pattern,)),), batch_size=1, shuffle_buffer=1,
                         shuffle_initial=1)
    assert stream.missing == [str(folder / "s-000001.tar")]
    good = 3 * 5 + 1
    state = stream.initial_state()
    batches = take(build_loader(stream), good)  # exactly one epoch
    for batch in batches:
        state.update(batch)
    assert stream.skip_counts(state) == {"undecodable_image": 3, "caption_not_utf8": 2, "shard_missing": 1,
                                         "shard_truncated": 1}
    captions = [c for b in batches for c in b["caption"]]
    assert len(captions) == len(set(captions)) == good and not any("\ufffd" in c for c in captions)


def test_a_folder_knows_its_last_shard_from_the_download_stage(tmp_path):
    """Deleting a folder's last shard leaves no gap in the numbering; the download stage's stats name it."""
    folder = tmp_path / "shards"
    write_shards(folder, "synthetic", shards=3, per_shard=2)  # synthetic-000000.tar ..., as the stage names them
    (folder / "synthetic-000002.tar").unlink()
    source = (ShardSource((str(folder),)),)
    assert make_stream(tmp_path, sources=source, batch_size=1).missing == []
    work = folder / ".synthetic-img2dataset"
    work.mkdir()
    for i in range(3):
        (work / f"{i:06d}_stats.json").write_text("{}")
    assert make_stream(tmp_path, sources=source, batch_size=1).missing == [str(folder / "synthetic-000002.tar")]
