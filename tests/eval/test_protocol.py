"""The whole protocol on tiny datasets in each benchmark's real layout, against hand-computed IoUs."""

from __future__ import annotations

import numpy as np
import pytest

from tcl.eval import evaluate_benchmark, get_benchmark, sweep_bg_thresh

from .conftest import (
    LAYOUTS,
    drawing_and_truth,
    expected_prediction,
    mmseg_classes,
    reference_iou,
    tiny_config,
    write_layout,
)

# benchmark -> layout of its files
CASES = {"voc": "voc", "voc20": "voc", "context": "context", "context59": "context", "coco_stuff": "coco_stuff",
         "coco_object": "coco_object", "cityscapes": "cityscapes", "ade20k": "ade20k", "t_voc20": "voc"}


def test_voc_with_background_by_hand(tmp_path, oracle_for):
    """First image, rows 1..23 valid (736 px). Predicted: cat = left half minus the 12×4 dog block
    (320), dog 48, background 368. Truth: cat 244, dog 32, background 460.
    cat: I 228, U 320+244−228 = 336 → 0.678571; dog: I 32, U 48 → 0.666667; background: I 368,
    U 460 → 0.8. mIoU 71.51, aAcc (228+32+368)/736 = 85.33. The mirrored second image doubles all."""
    layout = write_layout(tmp_path, "voc")
    result = evaluate_benchmark(oracle_for(layout), "voc", tiny_config(), root=tmp_path, print_table=False)
    assert result["miou"] == 71.51
    assert result["aacc"] == 85.33
    assert result["per_class_iou"]["cat"] == 67.86
    assert result["per_class_iou"]["dog"] == 66.67
    assert result["per_class_iou"]["background"] == 80.0
    assert result["per_class_iou"]["aeroplane"] is None  # absent from both: skipped by the nanmean
    assert result["num_images"] == 2
    assert result["settings"]["bg_thresh"] == 0.4 and result["settings"]["with_background"]


def test_voc20_reduce_zero_label_by_hand(tmp_path, oracle_for):
    """Background is ignored: 276 valid pixels (cat 244, dog 32). 16 cat pixels are predicted dog.
    cat: I 228, U 244 → 0.934426; dog: I 32, U 48 → 0.666667; mIoU 80.05, aAcc 260/276 = 94.2."""
    layout = write_layout(tmp_path, "voc")
    result = evaluate_benchmark(oracle_for(layout), "voc20", tiny_config(), root=tmp_path, print_table=False)
    assert (result["miou"], result["aacc"]) == (80.05, 94.2)
    assert "background" not in result["per_class_iou"] and len(result["per_class_iou"]) == 20
    assert result["settings"]["bg_thresh"] is None and result["settings"]["reduce_zero_label"]


@pytest.mark.parametrize("name", list(CASES))
def test_every_benchmark_layout_matches_the_reference_iou(tmp_path, oracle_for, name):
    bench = get_benchmark(name)
    split = "train" if name.startswith("t_") else "val"
    layout = write_layout(tmp_path, CASES[name], split=split)
    classes = mmseg_classes(bench.dataset)
    file_classes = mmseg_classes(layout.classes)
    reduce = len(classes) == len(file_classes) - 1 or name == "ade20k"

    code = {n: file_classes.index(n) + layout.file_offset for n in (layout.x, layout.y, layout.rest)}
    _, file_labels = drawing_and_truth(code[layout.x], code[layout.y], code[layout.rest])
    gt = file_labels.astype(np.int64)
    if reduce:  # mmseg's reduce_zero_label: 0 -> ignored, the rest shifted down
        gt = np.where(gt == 0, 255, np.where(gt == 255, 255, gt - 1))
    pred = expected_prediction(classes.index(layout.x), classes.index(layout.y))
    expected = reference_iou([pred, pred[:, ::-1]], [gt, gt[:, ::-1]], len(classes))

    result = evaluate_benchmark(oracle_for(layout), name, tiny_config(), root=tmp_path, print_table=False)
    assert result["miou"] == expected["miou"]
    assert result["aacc"] == expected["aacc"]
    assert list(result["per_class_iou"]) == list(classes)
    for c, value in enumerate(expected["iou"]):
        got = result["per_class_iou"][classes[c]]
        assert (got is None) if np.isnan(value) else got == round(value * 100, 2)
    assert result["settings"]["with_background"] == (classes[0] == "background")


def test_windows_of_several_images_are_batched(tmp_path, oracle_for):
    layout = write_layout(tmp_path, "voc", images=3)
    oracle = oracle_for(layout)
    result = evaluate_benchmark(oracle, "voc", tiny_config(image_batch=2, window_batch=8), root=tmp_path,
                                print_table=False)
    # 6 windows per image: images 0+1 give 12 windows (8 + 4), image 2 alone 6
    assert oracle.window_batches == [8, 4, 6]
    assert result["num_images"] == 3 and result["images_per_s"] > 0
    # the throughput fields count what was scored: 18 windows, 6 per image
    assert result["num_windows"] == 18 and result["seconds"] > 0
    assert result["windows_per_s"] == pytest.approx(6 * result["images_per_s"], rel=1e-3)
    assert (result["precision"], result["device"]) == ("fp32", "cpu")
    assert result["text_embedding"]["cache"] == "off"  # the colour predictor has no CLIP text tower to hash


def test_data_loader_workers_give_the_same_numbers(tmp_path, oracle_for):
    layout = write_layout(tmp_path, "coco_object")
    base = evaluate_benchmark(oracle_for(layout), "coco_object", tiny_config(), root=tmp_path, print_table=False)
    workers = evaluate_benchmark(oracle_for(layout), "coco_object", tiny_config(num_workers=1), root=tmp_path,
                                 print_table=False)
    assert workers["per_class_iou"] == base["per_class_iou"] and workers["miou"] == base["miou"]


def test_background_threshold_sweep_uses_one_scoring_pass(tmp_path, oracle_for):
    """The predictor scores 0.9 on its colours and 0.1 elsewhere: a threshold below 0.1 never
    predicts background, one above 0.9 predicts nothing else, anything in between is exact."""
    layout = write_layout(tmp_path, "voc")
    oracle = oracle_for(layout)
    sweep = sweep_bg_thresh(oracle, "voc", tiny_config(), [0.95, 0.05, 0.5], root=tmp_path)
    assert len(oracle.window_batches) == 3  # 12 windows in batches of 4, scored once for 3 thresholds
    assert sweep["best"] == 0.5 and sweep["best_miou"] == 71.51
    assert sweep["candidates"][0.05] < 71.51 and sweep["candidates"][0.95] < 71.51
    with pytest.raises(ValueError, match="no background"):
        sweep_bg_thresh(oracle, "voc20", tiny_config(), root=tmp_path)


def test_overlays_are_written(tmp_path, oracle_for):
    layout = write_layout(tmp_path, "voc", images=3)
    result = evaluate_benchmark(oracle_for(layout), "voc", tiny_config(overlays=2), root=tmp_path,
                                overlay_dir=tmp_path / "overlays", print_table=False)
    assert len(result["overlays"]) == 2
    from PIL import Image

    with Image.open(result["overlays"][0]) as panel:
        assert panel.width > 3 * 32 and panel.height > 24  # image | truth | prediction, with legends


def test_per_class_table_is_printed(tmp_path, oracle_for):
    import logging

    from mmengine.logging import MMLogger

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        layout = write_layout(tmp_path, "voc")
        evaluate_benchmark(oracle_for(layout), "voc", tiny_config(), root=tmp_path)
    finally:
        logger.removeHandler(handler)
    table = "\n".join(records)
    assert "per class results" in table and "diningtable" in table and "67.86" in table


def test_layouts_cover_every_real_benchmark():
    assert set(LAYOUTS) == {"voc", "context", "coco_stuff", "coco_object", "cityscapes", "ade20k"}


def test_the_gpu_loaders_tensors_give_the_same_input_as_the_cpu_loaders_arrays(tmp_path, oracle_for):
    """On a GPU the workers hand over (pinnable) tensors, on the CPU arrays: the model sees the same input."""
    import torch

    from tcl.eval.datasets import EvalSamples, build_dataset
    from tcl.eval.evaluate import _collate, _to_input

    layout = write_layout(tmp_path, "voc")
    config = tiny_config()
    dataset = build_dataset(get_benchmark("voc"), config.data_roots, config.protocols.paper, tmp_path)
    oracle = oracle_for(layout)
    arrays = _collate([EvalSamples(dataset, [0, 1])[i] for i in range(2)])
    tensors = _collate([EvalSamples(dataset, [0, 1])[i] for i in range(2)], tensors=True)
    for a, t in zip(arrays, tensors, strict=True):
        assert isinstance(a["rgb"], np.ndarray) and isinstance(t["rgb"], torch.Tensor) and "image" not in a
        cpu = torch.device("cpu")
        assert torch.equal(_to_input(oracle, a["rgb"], cpu), _to_input(oracle, t["rgb"], cpu))
        assert torch.equal(torch.as_tensor(a["gt_tensor"]), t["gt_tensor"]) and t["gt_tensor"].dtype == torch.int64
        # the RGB image the original code made from mmcv's BGR decode
        bgr = EvalSamples(dataset, [a["index"]])[0]["image"]
        assert np.array_equal(a["rgb"], bgr[..., ::-1])
