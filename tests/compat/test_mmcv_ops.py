from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tcl.compat import mmcv_ops


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.skipif(mmcv_ops.has_compiled_mmcv_ops(), reason="full mmcv installed: the shim is inactive")
def test_mmseg_modules_import_on_mmcv_lite():
    out = _run("""
        import warnings; warnings.simplefilter("ignore")
        from tcl.compat.mmcv_ops import ensure_mmseg_importable
        print(ensure_mmseg_importable(), ensure_mmseg_importable())
        import mmseg.datasets, mmseg.evaluation, mmseg.models.segmentors, mmseg.utils
        print(mmseg.datasets.PascalVOCDataset.__name__)
    """)
    assert out.splitlines() == ["True True", "PascalVOCDataset"]


@pytest.mark.skipif(mmcv_ops.has_compiled_mmcv_ops(), reason="full mmcv installed: the shim is inactive")
def test_point_sample_is_mmcv_pure_pytorch_op_and_compiled_ops_fail_clearly():
    mmcv_ops.ensure_mmseg_importable()
    from mmcv.ops import point_sample, sigmoid_focal_loss

    features = torch.arange(16.0).view(1, 1, 4, 4)
    points = torch.tensor([[[0.125, 0.125], [0.875, 0.625]]])  # pixel centres (0,0) and (3,2)
    assert point_sample(features, points, align_corners=False).flatten().tolist() == [0.0, 11.0]
    with pytest.raises(RuntimeError, match="needs the compiled mmcv"):
        sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))


def test_does_nothing_with_full_mmcv():
    out = _run("""
        import sys
        from tcl.compat import mmcv_ops
        mmcv_ops.has_compiled_mmcv_ops = lambda: True  # what a full mmcv install reports
        print(mmcv_ops.ensure_mmseg_importable(), "mmcv.ops" in sys.modules)
    """)
    assert out == "False False"
