"""stages/prepare_clip.py's error path: a diverging pretraining (a learning rate far too high) is the stage's one
line naming the fix, exit 2, and no CLIP is written. (Training and the parameter checks:
tests/train/test_clip_pretraining.py, tests/test_params_validation.py.)"""

from __future__ import annotations

from pathlib import Path

from stages.prepare_clip import main
from tests.data.test_stream import write_shards

REPO = Path(__file__).resolve().parents[2]


def test_a_diverging_pretraining_is_one_line_and_writes_no_clip(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TCL_MLFLOW_PARENT_RUN_ID", raising=False)  # no MLflow run (stage_run is disabled)
    write_shards(tmp_path / "shards", "s", shards=1, per_shard=8)
    params = (REPO / "params.yaml").read_text().replace("- data/synthetic/shards", f"- {tmp_path / 'shards'}")
    (tmp_path / "params.yaml").write_text(params)
    status = main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "clip"), "--steps", "4",
                   "-S", "data.batch_size=4", "-S", "data.num_workers=0", "-S", "prepare_clip.lr=1e30",
                   "-S", "prepare_clip.warmup_steps=1"])
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_clip: error: non-finite CLIP loss at step "), err
    assert err[0].endswith(": lower prepare_clip.lr")
    assert not (tmp_path / "clip" / "clip.pt").exists()
