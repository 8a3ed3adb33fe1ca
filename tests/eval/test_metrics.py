import numpy as np
import pytest

from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark
from pipeline.eval.loop import (
    GroundTruthProposals,
    OracleClassifier,
    default_evaluators,
    inference_on_dataset,
)
from pipeline.eval.metrics import PQStat, SemanticStat


def _maps():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1  # class 0 (thing), 50 px
    gt[:, 5:] = 2  # class 1 (stuff), 50 px
    segs = [{"id": 1, "label": 0, "iscrowd": 0}, {"id": 2, "label": 1, "iscrowd": 0}]
    return gt, segs


def test_perfect_prediction_is_pq_100():
    gt, segs = _maps()
    s = PQStat(2)
    s.add(gt, segs, gt.copy(), [dict(x) for x in segs])
    out = s.summary([True, False])
    assert out["PQ"] == pytest.approx(100) and out["SQ"] == pytest.approx(100) and out["RQ"] == pytest.approx(100)


def test_one_missed_segment():
    gt, segs = _maps()
    pred = np.where(gt == 1, 1, 0)
    s = PQStat(2)
    s.add(gt, segs, pred, [{"id": 1, "label": 0}])
    out = s.summary([True, False])
    # class 0: TP=1 IoU=1 -> PQ 100; class 1: FN=1 -> PQ 0; mean 50
    assert out["PQ"] == pytest.approx(50) and out["PQ_th"] == pytest.approx(100) and out["PQ_st"] == 0


def test_one_false_positive():
    gt, segs = _maps()
    pred = gt.copy()
    pred[0, :2] = 3  # tiny extra segment of class 1 inside the thing: FP for class 1, and thing still matches
    s = PQStat(2)
    s.add(gt, segs, pred, [{"id": 1, "label": 0}, {"id": 2, "label": 1}, {"id": 3, "label": 1}])
    out = s.summary([True, False])
    # class 0: TP IoU 48/50; class 1: TP IoU 1, FP 1 -> PQ = 1 / (1 + 0.5)
    assert out["PQ"] == pytest.approx(100 * (0.96 + 1 / 1.5) / 2)


def test_crowd_and_void_overlap_is_not_a_false_positive():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1  # crowd region of class 0
    segs = [{"id": 1, "label": 0, "iscrowd": 1}]
    pred = np.zeros((10, 10), np.int64)
    pred[:, :6] = 7  # 50 px on crowd, 10 px on void
    s = PQStat(1)
    s.add(gt, segs, pred, [{"id": 7, "label": 0}])
    assert s.fp.sum() == 0 and s.fn.sum() == 0 and s.tp.sum() == 0
    s2 = PQStat(1)
    far = np.zeros((10, 10), np.int64)
    far[:, 5:] = 7  # on void only... counted as void -> not FP either
    s2.add(np.ones((10, 10), np.int64) * 0, [], far, [{"id": 7, "label": 0}])
    assert s2.fp.sum() == 0


def test_void_pixels_leave_iou_unaffected():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :4] = 1
    pred = np.zeros((10, 10), np.int64)
    pred[:, :5] = 1  # one column over void
    s = PQStat(1)
    s.add(gt, [{"id": 1, "label": 0, "iscrowd": 0}], pred, [{"id": 1, "label": 0}])
    assert s.summary([True])["SQ"] == pytest.approx(100)


def test_semantic_metrics_known_case():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    s = SemanticStat(3, 255)
    s.add(gt, pred)
    out = s.summary()
    # class 0: tp 4, fp 1, fn 0 -> 0.8 ; class 1: tp 2, fp 0, fn 1 -> 2/3 ; class 2 absent from gt -> excluded
    assert out["mIoU"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert out["pACC"] == pytest.approx(100 * 6 / 7)


def test_semantic_no_prediction_is_a_miss_and_no_false_positive():
    """A prediction equal to the ignore label (no proposal covers the pixel) is a false negative of the
    ground-truth class and a false positive of no class (predicting class 0 there was both)."""
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 0, 255, 1], [0, 255, 1, 255]])
    s = SemanticStat(2, 255)
    s.add(gt, pred)
    out = s.summary()
    # class 0: tp 3, fp 0, fn 1 -> 0.75 ; class 1: tp 2, fp 0, fn 1 -> 2/3
    assert out["mIoU"] == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    assert out["pACC"] == pytest.approx(100 * 5 / 7)
    assert s.unpredicted.tolist() == [1, 1]
    wide = SemanticStat(2, 255)  # the same counts through the run-length path
    wide.add(np.repeat(gt, 50, axis=1), np.repeat(pred, 50, axis=1))
    assert wide.unpredicted.tolist() == [50, 50] and wide.summary()["mIoU"] == pytest.approx(out["mIoU"])


def test_coco_sample_ground_truth_against_itself(coco_root):
    """The COCO sample fixture scored against its own ground truth gives PQ 100 and mIoU 100."""
    ds = BenchmarkDataset(get_benchmark("coco_panoptic_val"), coco_root)
    out = inference_on_dataset(ds, GroundTruthProposals(), OracleClassifier(len(ds.vocab)), default_evaluators(ds),
                               object_threshold=0.5, overlap_threshold=0.8)
    assert out["images"] == 2
    assert out["PQ"] == pytest.approx(100) and out["mIoU"] == pytest.approx(100)
