"""A tiny TCL checkpoint file for the serving tests (the real save path, see tests/inference/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inference.conftest import write_tiny_checkpoint


@pytest.fixture(scope="package")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_tcl"))
