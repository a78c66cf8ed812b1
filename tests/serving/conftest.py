"""A tiny TCL checkpoint file for the serving tests (the real save path, see tests/inference/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inference.conftest import write_tiny_checkpoint


@pytest.fixture(scope="package")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_tcl"))


# What the evaluate stage records as its threshold (evaluate.py --choose-bg-thresh): 0.55, the best of the sweep.
BG_RECORD = {"benchmark": "t_synthetic_voc", "candidates": {"0.4": 20.0, "0.55": 30.0}, "best": 0.55}


def registered_project(root: Path, score: float = 40.0) -> Path:
    """A project folder as the pipeline leaves it, registered by the real register stage: the final
    checkpoint ``models/tcl/best.pt`` (a tiny TCL), the bg_thresh and report records, and
    ``metrics/registered.json``, in the SQLite store ``root/mlflow.db`` (``MLFLOW_TRACKING_URI`` must
    name it; the caller sets it). Returns ``root``."""
    import json

    from stages.register import main

    checkpoint = write_tiny_checkpoint(root / "models" / "tcl")
    checkpoint.rename(root / "models" / "tcl" / "best.pt")
    for path, record in (("metrics/bg_thresh/tcl.json", BG_RECORD), ("metrics/report/report.json",
                                                                      {"mean": {"miou": score}})):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(record))
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert main(["--params", str(params), "--checkpoint", str(root / "models/tcl/best.pt"),
                 "--report", str(root / "metrics/report/report.json"),
                 "--bg-thresh", str(root / "metrics/bg_thresh/tcl.json"),
                 "--out", str(root / "metrics/registered.json")]) == 0
    return root
