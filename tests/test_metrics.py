"""ConfusionMatrix / mIoU / mF1 against confusion matrices worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from autonad_edge.metrics import ConfusionMatrix, metrics_from_matrix, segmentation_metrics

# target (rows) vs prediction, 255 = ignore. The ignored pixel's prediction (2) must not count.
TARGET = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
PRED = np.array([[0, 1, 1, 1], [0, 2, 0, 2]])
# By hand, over the 7 labelled pixels:
#   class 0: target at (0,0) (0,1) (1,0), predicted 0 at (0,0) (1,0) (1,2)
#            TP 2, FP 1 (the 2 at (1,2)), FN 1 ((0,1) -> 1)
#   class 1: TP 2, FP 1 ((0,1)), FN 0
#   class 2: TP 1, FP 0, FN 1 ((1,2) -> 0)
EXPECTED_MATRIX = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 1]])
EXPECTED_IOU = [2 / 4, 2 / 3, 1 / 2]
EXPECTED_F1 = [4 / 6, 4 / 5, 2 / 3]


def test_hand_computed_case_with_ignore() -> None:
    confusion = ConfusionMatrix(3, ignore_index=255)
    confusion.update(PRED, TARGET)
    np.testing.assert_array_equal(confusion.matrix, EXPECTED_MATRIX)
    result = confusion.compute()
    np.testing.assert_allclose(result.iou, EXPECTED_IOU)
    np.testing.assert_allclose(result.f1, EXPECTED_F1)
    assert result.miou == pytest.approx(np.mean(EXPECTED_IOU))
    assert result.mf1 == pytest.approx(np.mean(EXPECTED_F1))
    assert result.pixel_accuracy == pytest.approx(5 / 7)
    np.testing.assert_allclose(result.precision, [2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(result.recall, [2 / 3, 1.0, 1 / 2])


def test_torch_tensors_batches_and_logits_agree() -> None:
    batched = ConfusionMatrix(3)
    batched.update(torch.from_numpy(PRED[:1]), torch.from_numpy(TARGET[:1]))
    batched.update(torch.from_numpy(PRED[1:]), torch.from_numpy(TARGET[1:]))
    np.testing.assert_array_equal(batched.matrix, EXPECTED_MATRIX)

    logits = torch.nn.functional.one_hot(torch.from_numpy(PRED), 3).permute(2, 0, 1).float()
    from_logits = ConfusionMatrix(3)
    from_logits.update(logits[None], torch.from_numpy(TARGET)[None])  # [N,C,H,W] vs [N,H,W]
    np.testing.assert_array_equal(from_logits.matrix, EXPECTED_MATRIX)
    unbatched = ConfusionMatrix(3)
    unbatched.update(logits, TARGET)  # [C,H,W] vs [H,W]
    np.testing.assert_array_equal(unbatched.matrix, EXPECTED_MATRIX)

    merged = ConfusionMatrix(3)
    merged.merge(batched)
    merged.merge(from_logits)
    np.testing.assert_array_equal(merged.matrix, 2 * EXPECTED_MATRIX)
    merged.reset()
    assert merged.matrix.sum() == 0


def test_absent_class_is_nan_and_excluded_from_means() -> None:
    # Class 3 appears in neither prediction nor target: NaN, not in the means.
    result = segmentation_metrics(PRED, TARGET, num_classes=4)
    assert math.isnan(result.iou[3]) and math.isnan(result.f1[3])
    assert list(result.present) == [True, True, True, False]
    assert result.miou == pytest.approx(np.mean(EXPECTED_IOU))
    assert result.mf1 == pytest.approx(np.mean(EXPECTED_F1))
    # Predicted but absent from the target: a real 0, which does lower the mean.
    result = segmentation_metrics(np.array([[3, 0]]), np.array([[0, 0]]), num_classes=4)
    assert result.iou[3] == 0.0 and result.iou[0] == pytest.approx(0.5)
    assert result.miou == pytest.approx(0.25)


def test_perfect_all_ignored_and_background_counts() -> None:
    target = np.array([[0, 1], [2, 0]])
    perfect = segmentation_metrics(target, target, 3)
    assert perfect.miou == 1.0 and perfect.mf1 == 1.0 and perfect.pixel_accuracy == 1.0
    # Background is a class like the others (paper convention): all-background prediction.
    background_only = segmentation_metrics(np.zeros_like(target), target, 3)
    np.testing.assert_allclose(background_only.iou, [0.5, 0.0, 0.0])
    assert background_only.miou == pytest.approx(0.5 / 3)
    ignored = segmentation_metrics(np.array([[1]]), np.array([[255]]), 3)
    assert math.isnan(ignored.miou) and math.isnan(ignored.pixel_accuracy)
    assert ignored.matrix.sum() == 0


def test_as_dict_is_json_safe() -> None:
    result = segmentation_metrics(PRED, TARGET, num_classes=4)
    info = result.as_dict(["bg", "a", "b", "c"])
    assert info["iou"]["c"] is None and info["iou"]["a"] == pytest.approx(2 / 3)
    json.loads(json.dumps(info, allow_nan=False))
    np.testing.assert_array_equal(metrics_from_matrix(result.matrix).iou[:3], result.iou[:3])


def test_invalid_inputs_raise() -> None:
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        confusion.update(np.zeros((2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="target holds label 5"):
        confusion.update(np.zeros((1, 2), int), np.array([[0, 5]]))
    with pytest.raises(ValueError, match="pred holds label 3"):
        confusion.update(np.array([[3, 0]]), np.zeros((1, 2), int))
    with pytest.raises(TypeError, match="integer"):
        confusion.update(np.zeros((1, 2), np.float32), np.zeros((1, 2), int))
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(3, ignore_index=1)
    assert confusion.matrix.sum() == 0  # a rejected batch adds nothing


def test_defect_level_recall_and_precision_on_two_regions_one_found():
    from autonad_edge.metrics import RegionCounter

    target = np.zeros((10, 12), dtype=np.int64)
    target[1:4, 1:4] = 1  # region A, 9 px
    target[6:9, 8:11] = 1  # region B, 9 px
    pred = np.zeros_like(target)
    pred[2:4, 2:4] = 1  # 4 of A's 9 pixels: found
    pred[6:8, 1:3] = 1  # a false alarm far from B
    pred[8, 8] = 2  # one pixel of B called class 2: B is not found as class 1
    counter = RegionCounter(3, min_overlap=0.3)
    counter.update(pred, target)
    d = counter.as_dict(["background", "scratch", "pit"])
    scratch = d["per_class"]["scratch"]
    assert (scratch["gt_regions"], scratch["found"], scratch["recall"]) == (2, 1, 0.5)
    assert (scratch["predicted_regions"], scratch["correct"], scratch["precision"]) == (2, 1, 0.5)
    pit = d["per_class"]["pit"]
    assert (pit["gt_regions"], pit["recall"], pit["predicted_regions"], pit["precision"]) == (0, None, 1, 0.0)
    assert d["recall"] == 0.5 and d["precision"] == pytest.approx(1 / 3)
    strict = RegionCounter(3, min_overlap=0.5)  # 4/9 of A is not enough at 50 %
    strict.update(pred, target)
    assert strict.as_dict()["per_class"]["1"]["found"] == 0


def test_ignored_pixels_form_no_region():
    from autonad_edge.metrics import RegionCounter

    target = np.full((4, 4), 255, dtype=np.int64)
    counter = RegionCounter(2)
    counter.update(np.ones((4, 4), dtype=np.int64), target)
    assert counter.as_dict()["per_class"]["1"]["predicted_regions"] == 0
