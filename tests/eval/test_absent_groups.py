"""A value that does not exist is absent from the metrics, never 0.0: a benchmark without unseen classes (toy_val)
has no ``PQ_unseen`` / ``mIoU_unseen`` key, so DVC, MLflow and the report show nothing instead of a fake 0.0."""
import numpy as np
import pytest

from pipeline.eval.loop import seen_unseen_groups
from pipeline.eval.metrics import PQStat, SemanticStat


def _two_classes():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5], gt[:, 5:] = 1, 2
    return gt, [{"id": 1, "label": 0, "iscrowd": 0}, {"id": 2, "label": 1, "iscrowd": 0}]


def test_no_unseen_classes_means_no_unseen_keys():
    groups = seen_unseen_groups(["a", "b"], ["a", "b"])
    assert groups == {"seen": [0, 1], "unseen": []}
    gt, segs = _two_classes()
    pq = PQStat(2)
    pq.add(gt, segs, gt.copy(), [dict(s) for s in segs])
    out = pq.summary([True, False], groups)
    assert out["PQ_seen"] == pytest.approx(100) and out["PQ"] == pytest.approx(100)
    assert not {"PQ_unseen", "SQ_unseen", "RQ_unseen"} & set(out)
    sem = SemanticStat(2, 255)
    sem.add(np.where(gt == 1, 0, 1), np.where(gt == 1, 0, 1))
    out = sem.summary(groups)
    assert out["mIoU_seen"] == pytest.approx(100) and "mIoU_unseen" not in out


def test_an_unseen_class_without_ground_truth_here_is_absent_too_but_a_real_zero_stays():
    gt, segs = _two_classes()
    groups = {"seen": [0, 1], "unseen": [2]}  # class 2 is in the vocabulary but never in these images
    pq = PQStat(3)
    pq.add(gt, segs, gt.copy(), [dict(s) for s in segs])
    assert "PQ_unseen" not in pq.summary([True, False, True], groups)
    pred = np.where(gt == 1, 1, 2)  # class 1 predicted as 2: an unseen-class prediction that is all wrong
    pq = PQStat(3)
    pq.add(gt, segs, pred, [{"id": 1, "label": 0}, {"id": 2, "label": 2}])
    out = pq.summary([True, False, True], groups)
    assert out["PQ_unseen"] == 0.0  # class 2 has a false positive: its PQ exists and is 0
    assert out["PQ_th"] == pytest.approx(50.0) and out["PQ_st"] == 0.0  # things/stuff: the COCO API's values
