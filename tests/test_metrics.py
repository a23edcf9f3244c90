import math

import numpy as np
import pytest
import torch

from segbench.metrics import confusion_matrix, scores


def brute_confusion(pred, target, c, ignore=255):
    cm = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t != ignore:
            cm[t, p] += 1
    return cm


def test_confusion_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 5, (3, 17, 23), generator=g)
    cm = confusion_matrix(pred, target, 5)
    assert cm.dtype == torch.int64 and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm.numpy(), brute_confusion(pred.numpy(), target.numpy(), 5))
    assert int(cm.sum()) == int((target != 255).sum())


def test_scores_hand_computed():
    # rows = ground truth, columns = prediction
    cm = torch.tensor([[3, 1, 0, 0],
                       [2, 4, 0, 0],
                       [0, 0, 0, 0],   # class 2 absent from gt and prediction -> NaN
                       [0, 0, 0, 0]])  # class 3 absent from gt but ...
    cm[0, 3] = 0
    s = scores(cm)
    iou0 = 3 / (4 + 5 - 3)
    iou1 = 4 / (6 + 5 - 4)
    assert s["IoU"][0] == pytest.approx(iou0)
    assert s["IoU"][1] == pytest.approx(iou1)
    assert math.isnan(s["IoU"][2]) and math.isnan(s["IoU"][3])
    assert s["mIoU"] == pytest.approx((iou0 + iou1) / 2)
    assert s["aAcc"] == pytest.approx(7 / 10)
    assert s["mAcc"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert s["mDice"] == pytest.approx((6 / 9 + 8 / 11) / 2)


def test_false_positive_class_counts_as_zero_iou():
    # class 2 never in the ground truth but predicted once: IoU 0, not NaN
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    s = scores(confusion_matrix(pred, target, 3))
    assert s["IoU"][2] == 0.0
    assert s["mIoU"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="target holds value 7"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 7, 255]), 3)
    with pytest.raises(TypeError):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), 3)
