"""The data stages chained: synthetic corpus → download stage (loopback) → training stream."""

from __future__ import annotations

import itertools

from tcl.data import DownloadSource, ShardSource, StreamConfig, TrainingStream, build_loader, download_shards
from tcl.data.synthetic import SyntheticParams, generate_synthetic


def test_synthetic_corpus_downloads_into_shards_that_the_stream_reads(tmp_path):
    out = tmp_path / "synthetic"
    generate_synthetic(out, SyntheticParams(pairs=60, val_images=2, train_images=2))
    corpus = out / "corpus"
    source = DownloadSource(root=str(corpus), list="pairs.tsv", serve=True, out=str(tmp_path / "shards"),
                            prefix="synthetic-", image_size=96, samples_per_shard=25, processes=1, threads=4)
    stats = download_shards(source, stats_path=tmp_path / "download.json")
    assert stats["samples_succeeded"] == 60 and stats["shards"] == 3
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == [
        "synthetic-000000.tar", "synthetic-000001.tar", "synthetic-000002.tar"]

    pattern = str(tmp_path / "shards" / "synthetic-{000000..000002}.tar")
    config = StreamConfig(sources=(ShardSource((pattern,)),), batch_size=10, num_workers=0, shuffle_buffer=1,
                          shuffle_initial=1, image_size=64, augment="crop", crop_scale_min=0.5)
    stream = TrainingStream(config)
    batches = list(itertools.islice(iter(build_loader(stream)), 6))  # one epoch (no shuffle buffer)
    captions = sorted(c for b in batches for c in b["caption"])
    listed = sorted(line.split("\t")[0] for line in (corpus / "pairs.tsv").read_text().splitlines()[1:])
    assert captions == listed  # one epoch: every pair exactly once, captions intact
    assert batches[0]["image"].shape == (10, 3, 64, 64) and batches[-1]["skipped"] == {}
