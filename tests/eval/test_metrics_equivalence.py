"""The fast accumulators in pipeline.eval.metrics give exactly the numbers of the previous implementation
(tests/eval/reference_metrics.py) and of the panopticapi-style reference in the benchmark script."""
import numpy as np
import pytest
import reference_metrics as old  # tests/eval/reference_metrics.py (rootdir-relative import)

from pipeline.eval.metrics import PQStat, SemanticStat
from pipeline.scripts.bench_metrics import ReferencePQ, synthetic_pair, synthetic_semantic

N_CLASSES = 133
IS_THING = [c < 80 for c in range(N_CLASSES)]


def _assert_same_pq(a, b, tol=1e-9):
    assert np.array_equal(a.tp, b.tp) and np.array_equal(a.fp, b.fp) and np.array_equal(a.fn, b.fn)
    np.testing.assert_allclose(a.iou, b.iou, rtol=0, atol=tol)


def _both(pairs, strip_area=True):
    new, ref = PQStat(N_CLASSES), old.PQStat(N_CLASSES)
    for g, gs, p, ps in pairs:
        if strip_area:
            gs = [{k: v for k, v in s.items() if k != "area"} for s in gs]
        new.add(g, gs, p, ps)
        ref.add(g, gs, p, ps)
    return new, ref


def _noisy(rng, g, gs, p, ps):
    """Salt-and-pepper prediction: no long runs, exercises the per-pixel path."""
    p = p.copy()
    ids = np.array([s["id"] for s in ps] + [0])
    flip = rng.random(p.shape) < 0.5
    p[flip] = rng.choice(ids, int(flip.sum()))
    return g, gs, p, ps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_panoptic_identical_to_previous_implementation(seed):
    rng = np.random.default_rng(seed)
    pairs = [synthetic_pair(rng, 96, 128, n_segments=25) for _ in range(12)]
    assert any(s["iscrowd"] for _, gs, _, _ in pairs for s in gs), "the random case must contain crowd"
    assert any((g == 0).any() for g, _, _, _ in pairs), "and void"
    new, ref = _both(pairs)
    _assert_same_pq(new, ref)
    assert new.tp.sum() > 0 and new.fp.sum() > 0 and new.fn.sum() > 0
    sa, sb = new.summary(IS_THING), ref.summary(IS_THING)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert sa[key] == pytest.approx(sb[key], abs=1e-9)
    for x, y in zip(sa["PQ_per_class"], sb["PQ_per_class"]):
        assert (x is None and y is None) or x == pytest.approx(y, abs=1e-9)


def test_per_pixel_path_identical():
    rng = np.random.default_rng(5)
    pairs = [_noisy(rng, *synthetic_pair(rng, 64, 80, n_segments=20)) for _ in range(4)]
    new, ref = _both(pairs)
    _assert_same_pq(new, ref)


def test_identical_to_panopticapi_style_reference_with_json_areas():
    rng = np.random.default_rng(3)
    pairs = [synthetic_pair(rng, 96, 128) for _ in range(8)]
    new, ref = PQStat(N_CLASSES), ReferencePQ(N_CLASSES)
    for g, gs, p, ps in pairs:
        new.add(g, gs, p, ps)
        ref.add(g, gs, p, ps)
    _assert_same_pq(new, ref)


def test_huge_and_int64_ids_take_the_search_path():
    gt = np.zeros((8, 8), np.int64)
    gt[:, :4] = 2**40  # beyond any lookup table
    pred = np.where(gt > 0, -5, 0)  # negative id
    s = PQStat(1)
    s.add(gt, [{"id": 2**40, "label": 0, "iscrowd": 0}], pred, [{"id": -5, "label": 0}])
    assert s.tp.tolist() == [1] and s.iou[0] == pytest.approx(1.0)


def test_unknown_prediction_id_is_a_clear_error():
    gt = np.ones((4, 4), np.uint32)
    pred = np.full((4, 4), 9, np.uint32)
    with pytest.raises(ValueError, match=r"segment ids \[9\] without segments_info"):
        PQStat(1).add(gt, [{"id": 1, "label": 0, "iscrowd": 0}], pred, [])


def test_strict_rejects_segments_missing_from_the_map():
    gt = np.ones((4, 4), np.uint32)
    with pytest.raises(ValueError, match="not in the prediction map"):
        PQStat(1).add(gt, [{"id": 1, "label": 0, "iscrowd": 0}], gt.copy(),
                      [{"id": 1, "label": 0}, {"id": 7, "label": 0}], strict=True)


def test_label_outside_vocabulary_is_rejected():
    gt = np.ones((4, 4), np.uint32)
    with pytest.raises(ValueError, match="outside"):
        PQStat(2).add(gt, [{"id": 1, "label": 5, "iscrowd": 0}], gt.copy(), [{"id": 1, "label": 0}])


@pytest.mark.parametrize("num_classes,ignore", [(150, 255), (847, 65535), (20, 0)])
def test_semantic_identical_to_previous_implementation(num_classes, ignore):
    rng = np.random.default_rng(num_classes)
    new, ref = SemanticStat(num_classes, ignore), old.SemanticStat(num_classes, ignore)
    for k in range(6):
        gt, pred = synthetic_semantic(rng, num_classes, ignore if ignore else num_classes + 7, 64, 96)
        if ignore == 0:  # ignore label 0 inside the class range: classes are 1..n-1
            gt = np.where(gt >= num_classes, 0, np.maximum(gt, 1))
            pred = np.clip(pred, 0, num_classes - 1)
        if k % 2:
            flip = rng.random(gt.shape) < 0.6  # no long runs: per-pixel path
            pred = np.where(flip, rng.integers(0, num_classes, gt.shape), pred)
        new.add(gt, pred)
        ref.add(gt, pred)
    # a prediction equal to the ignore label is "no prediction" now; the old code counted it in the ignore
    # label's column, which only exists (and is never a valid class: no ground truth has it) when 0 <= ignore < n
    conf = new.conf.copy()
    if ignore < num_classes:
        conf[:, ignore] += new.unpredicted
    else:
        assert new.unpredicted.sum() == 0
    assert np.array_equal(conf, ref.conf) and new.conf.sum() > 0
    assert new.summary() == ref.summary()


def test_semantic_prediction_outside_range_only_matters_on_labelled_pixels():
    gt = np.array([[0, 255], [1, 255]])
    pred = np.array([[0, 999], [1, 999]])  # out of range only where gt is ignored: allowed, as before
    s = SemanticStat(2, 255)
    s.add(gt, pred)
    assert s.conf.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="outside"):
        s.add(np.array([[0, 7]]), np.array([[0, 0]]))
    with pytest.raises(ValueError, match="differ in shape"):
        s.add(np.zeros((2, 2), int), np.zeros((2, 3), int))
