"""Training on damaged shards: every skipped sample or shard reaches metrics/train.json and MLflow by reason."""

from __future__ import annotations

import json

import webdataset as wds

from tcl.config import Params, from_dict
from tcl.train.trainer import train
from tests.data.test_stream import _cut_end_of_archive, _jpeg, write_shards
from tests.train.conftest import tiny_params

PLANTED = {"undecodable_image": 3, "caption_not_utf8": 2, "shard_missing": 1, "shard_truncated": 1}


def test_skips_are_reported_by_reason(tmp_path, tiny_clip_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    folder = tmp_path / "shards"
    write_shards(folder, "tiny", shards=3, per_shard=8)  # 3 × 8 + 1 good samples: 5 steps of 5, one epoch exactly
    (folder / "tiny-000001.tar").rename(folder / "tiny-000004.tar")  # keep 24, leave a gap at 000001
    with wds.TarWriter(str(folder / "tiny-000003.tar")) as sink:  # the bad ones, then the shard's good one
        for i in range(3):
            sink.write({"__key__": f"bad{i}", "jpg": b"not a jpeg", "txt": f"broken image {i}"})
        for i in range(2):
            sink.write({"__key__": f"latin{i}", "jpg": _jpeg(90 + i), "txt": b"caf\xe9 " + bytes([0xff, i])})
        # a good sample last: the shard's skips are counted by the time the step using it is logged
        sink.write({"__key__": "last", "jpg": _jpeg(99), "txt": "a good one"})
    _cut_end_of_archive(folder / "tiny-000002.tar")
    # no shuffle buffer: samples read ahead would be counted before the step that uses them
    raw = tiny_params(folder, steps=5)
    raw["data"].update(batch_size=5, shuffle_buffer=1, shuffle_initial=1)
    params = from_dict(Params, raw)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train(params, tiny_clip_dir, tmp_path / "out", metrics_dir=tmp_path / "metrics", log=lambda _: None)

    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["data_skipped"] == PLANTED
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = {k.removeprefix("train/data_skipped."): v for k, v in run.data.metrics.items()
              if k.startswith("train/data_skipped.")}
    assert logged == PLANTED and run.data.metrics["train/data_skipped"] == sum(PLANTED.values())
