"""Panoptic quality (COCO panoptic API semantics) and semantic segmentation metrics.

PQ: a predicted and a ground-truth segment of the same class match at IoU > 0.5, where void pixels
are removed from the prediction's area; an unmatched prediction overlapping void plus same-class
crowd by more than half of its area is not a false positive. Per-class PQ is averaged over classes
with at least one TP, FP or FN; SQ, RQ and the thing/stuff splits likewise. A named class group (``groups``:
seen / unseen) with no such class has no ``PQ_<group>`` / ``mIoU_<group>`` key at all: the value does not exist
(toy_val has no unseen class), which is not 0.0. (All / things / stuff keep the COCO panoptic API's 0.0.)

mIoU: detectron2's current formula: IoU_c = TP / (TP + FP + FN) averaged over classes that have
ground-truth pixels; pixels whose ground truth is the ignore label are excluded. (detectron2 v0.6
averaged over every class with a non-zero union, which gives lower numbers on large vocabularies.)
A *prediction* equal to the ignore label means "no prediction" (no proposal covers the pixel): it is a
false negative of the pixel's ground-truth class and a false positive of none. (detectron2's evaluator
has no such value: Mask2Former's soft masks give every pixel a label.)

Speed (see ``python -m pipeline.scripts.bench_metrics``): no sorting. One vectorised comparison splits
the raveled (gt, pred) maps into runs of equal pixel pairs (label maps are piecewise constant); only
each run's first pixel is looked up and counted, weighted by the run's length (exact integer counts;
maps without long runs are counted pixel by pixel). PQ maps segment ids to compact indices (0 = id
absent from segments_info, 1 = void, 2.. = segments), one ``bincount`` over ``gt_index * n_pred +
pred_index`` gives every intersection and, by row and column sums, every area; matching is vectorised
over that (n_gt x n_pred) table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OFFSET = 2**24
_DENSE_LUT_LIMIT = 1 << 25  # ids below this go through a dense lookup table (lazily zeroed memory)


def _lut_dtype(n: int) -> type:
    return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.int32


def _runs(*maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values (in all ``maps`` at once) along the raveled maps."""
    flat = [m.reshape(-1) for m in maps]
    size = flat[0].size
    if size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    change = np.empty(size, bool)
    change[0] = True
    np.not_equal(flat[0][1:], flat[0][:-1], out=change[1:])
    for f in flat[1:]:
        change[1:] |= f[1:] != f[:-1]
    starts = np.flatnonzero(change)
    lengths = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = size - starts[-1]
    return starts, lengths


def _compact_ids(ids: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """Index of each id: 0 = not in ``seg_ids``, 1 = void (id 0), 2 + k = ``seg_ids[k]``."""
    n_bins = len(seg_ids) + 2
    if ids.size > 4 * 65536:  # a full map: dense lookup table (calloc'd, only touched pages materialise)
        lo = int(ids.min()) if ids.dtype.kind == "i" else 0
        hi = max(int(ids.max()), int(seg_ids.max()) if len(seg_ids) else 0)
        if lo >= 0 and hi < _DENSE_LUT_LIMIT:
            lut = np.zeros(hi + 1, _lut_dtype(n_bins))
            lut[0] = 1
            lut[seg_ids] = np.arange(2, n_bins)
            return lut[ids]
    keys = np.concatenate([[0], seg_ids]).astype(np.int64)  # run values: binary search over a few keys
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.searchsorted(sorted_keys, ids).clip(0, len(keys) - 1)
    found = sorted_keys[pos] == ids
    return np.where(found, order[pos] + 1, 0).astype(_lut_dtype(n_bins))


def _use_runs(starts: np.ndarray, size: int) -> bool:
    """Count runs instead of pixels when runs are at least 4 pixels long on average (label maps are)."""
    return 4 * len(starts) <= size


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} segment labels {sorted(set(labels.tolist()))[:5]}... outside [0, {num_classes})")


@dataclass
class PQStat:
    num_classes: int
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    iou: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tp, self.fp, self.fn = (np.zeros(self.num_classes, np.int64) for _ in range(3))
        self.iou = np.zeros(self.num_classes, np.float64)

    def add(self, gt_map: np.ndarray, gt_segments: list[dict], pred_map: np.ndarray, pred_segments: list[dict],
            strict: bool = False) -> None:
        """Segments: dicts with ``id``, ``label`` (contiguous) and, for gt, ``iscrowd``. id 0 = void.

        A gt segment's ``area`` is used when every gt segment has one (panopticapi reads gt areas from the
        json), else areas are counted on ``gt_map``. ``strict``: a predicted segment absent from
        ``pred_map`` is an error (as in panopticapi) instead of being ignored.
        """
        if gt_map.shape != pred_map.shape:
            raise ValueError(f"ground truth {gt_map.shape} and prediction {pred_map.shape} maps differ in shape")
        gt = {int(s["id"]): s for s in gt_segments}
        pred = {int(s["id"]): s for s in pred_segments}
        if 0 in gt or 0 in pred:
            raise ValueError("segment id 0 is reserved for void; renumber the segments from 1")
        gt_ids = np.fromiter(gt, np.int64, len(gt))
        pred_ids = np.fromiter(pred, np.int64, len(pred))
        gt_label = np.fromiter((s["label"] for s in gt.values()), np.int64, len(gt))
        pred_label = np.fromiter((s["label"] for s in pred.values()), np.int64, len(pred))
        crowd = np.fromiter((bool(s.get("iscrowd")) for s in gt.values()), bool, len(gt))
        _check_labels(gt_label, self.num_classes, "ground-truth")
        _check_labels(pred_label, self.num_classes, "predicted")

        hist = self._histogram(gt_map, gt_ids, pred_map, pred_ids)
        if hist[:, 0].any():
            unknown = np.setdiff1d(np.unique(pred_map), np.concatenate([[0], pred_ids]))
            raise ValueError(f"prediction map has segment ids {unknown[:5].tolist()} without segments_info")
        pred_area = hist[:, 2:].sum(0)
        if strict and (pred_area == 0).any():
            raise ValueError(f"segments {pred_ids[pred_area == 0][:5].tolist()} are in segments_info but not "
                             "in the prediction map")
        if len(gt) and all("area" in s for s in gt.values()):
            gt_area = np.fromiter((s["area"] for s in gt.values()), np.int64, len(gt))
        else:
            gt_area = hist[2:].sum(1)
        void_p = hist[1, 2:]
        inter = hist[2:, 2:]

        cand = (inter > 0) & (gt_label[:, None] == pred_label[None, :]) & ~crowd[:, None]
        g_idx, p_idx = np.nonzero(cand)
        n = inter[g_idx, p_idx]
        iou = n / (pred_area[p_idx] + gt_area[g_idx] - n - void_p[p_idx])
        ok = iou > 0.5
        g_idx, p_idx, iou = g_idx[ok], p_idx[ok], iou[ok]
        labels = gt_label[g_idx]
        self.tp += np.bincount(labels, minlength=self.num_classes)
        self.iou += np.bincount(labels, weights=iou, minlength=self.num_classes)

        matched_gt = np.zeros(len(gt), bool)
        matched_gt[g_idx] = True
        self.fn += np.bincount(gt_label[~matched_gt & ~crowd], minlength=self.num_classes)

        crowd_row = np.full(self.num_classes, -1, np.int64)
        for row in np.flatnonzero(crowd):  # the last crowd segment of a class wins, as in panopticapi
            crowd_row[gt_label[row]] = row
        rows = crowd_row[pred_label]
        cols = np.arange(len(pred))
        ignored = void_p + np.where(rows >= 0, inter[rows.clip(0), cols] if len(gt) else 0, 0)
        matched_pred = np.zeros(len(pred), bool)
        matched_pred[p_idx] = True
        with np.errstate(divide="ignore", invalid="ignore"):
            mostly_ignored = ignored / pred_area > 0.5
        is_fp = ~matched_pred & (pred_area > 0) & ~mostly_ignored
        self.fp += np.bincount(pred_label[is_fp], minlength=self.num_classes)

    @staticmethod
    def _histogram(gt_map: np.ndarray, gt_ids: np.ndarray, pred_map: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
        """Pixel counts per (gt index, pred index), indices as in ``_compact_ids``."""
        n_g, n_p = len(gt_ids) + 2, len(pred_ids) + 2
        starts, lengths = _runs(gt_map, pred_map)
        if _use_runs(starts, gt_map.size):
            joint = _compact_ids(gt_map.reshape(-1)[starts], gt_ids).astype(np.intp)
            joint *= n_p
            joint += _compact_ids(pred_map.reshape(-1)[starts], pred_ids)
            hist = np.bincount(joint, weights=lengths, minlength=n_g * n_p).astype(np.int64)
        else:
            joint = _compact_ids(gt_map.reshape(-1), gt_ids).astype(np.intp)
            joint *= n_p
            joint += _compact_ids(pred_map.reshape(-1), pred_ids)
            hist = np.bincount(joint, minlength=n_g * n_p)
        return hist.reshape(n_g, n_p)

    def summary(self, is_thing: list[bool], groups: dict[str, list[int]] | None = None) -> dict[str, float]:
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        valid = denom > 0
        pq = np.where(valid, self.iou / np.maximum(denom, 1e-9), 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        rq = np.where(valid, self.tp / np.maximum(denom, 1e-9), 0.0)
        thing = np.asarray(is_thing, bool)
        sel = {"": valid, "_th": valid & thing, "_st": valid & ~thing}
        for name, idx in (groups or {}).items():
            m = np.zeros_like(valid)
            m[idx] = True
            sel[f"_{name}"] = valid & m
        out: dict[str, float] = {}
        for suffix, m in sel.items():
            n = int(m.sum())
            if not n and suffix not in ("", "_th", "_st"):
                continue  # a group without classes here (no unseen class in toy_val): no value, not 0.0
            for key, arr in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[f"{key}{suffix}"] = float(100 * arr[m].mean()) if n else 0.0  # all/things/stuff: COCO API's 0
        out["PQ_per_class"] = [float(100 * v) if ok else None for v, ok in zip(pq, valid)]
        return out

    def merge(self, other: "PQStat") -> None:
        """Add another accumulator's counts (e.g. from a worker process)."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou


class SemanticStat:
    """Confusion-matrix accumulator for mIoU, fwIoU, mACC, pACC: ``conf[g, p]`` counts pixels of ground-truth
    class g predicted as p, ``unpredicted[g]`` those of class g predicted as the ignore label (no prediction).
    Label maps are counted run by run (a run = consecutive pixels with the same (gt, pred) pair), falling
    back to a per-pixel ``bincount`` for maps without long runs."""

    def __init__(self, num_classes: int, ignore_label: int):
        self.n, self.ignore = num_classes, ignore_label
        self.conf = np.zeros((num_classes, num_classes), np.int64)
        self.unpredicted = np.zeros(num_classes, np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} label maps differ in shape")
        if gt.size == 0:
            return
        starts, lengths = _runs(gt, pred)
        runs = _use_runs(starts, gt.size)
        g, p = (gt.reshape(-1)[starts], pred.reshape(-1)[starts]) if runs else (gt.reshape(-1), pred.reshape(-1))
        keep = g != self.ignore
        if not keep.all():
            g, p = g[keep], p[keep]
            lengths = lengths[keep] if runs else lengths
        if g.size and (g.min() < 0 or g.max() >= self.n):
            raise ValueError(f"ground-truth labels outside [0, {self.n}) (ignore label {self.ignore})")
        none = p == self.ignore
        if none.any():
            self.unpredicted += np.bincount(g[none], weights=lengths[none] if runs else None,
                                            minlength=self.n).astype(np.int64)
            keep = ~none
            g, p = g[keep], p[keep]
            lengths = lengths[keep] if runs else lengths
        if g.size and (p.min() < 0 or p.max() >= self.n):
            raise ValueError(f"predicted labels outside [0, {self.n}) (the ignore label {self.ignore} means "
                             "no prediction)")
        flat = g.astype(np.intp)
        flat *= self.n
        flat += p
        if runs:
            np.add.at(self.conf.reshape(-1), flat, lengths)
        else:
            self.conf += np.bincount(flat, minlength=self.n * self.n).reshape(self.n, self.n)

    def merge(self, other: "SemanticStat") -> None:
        """Add another accumulator's confusion matrix (e.g. from a worker process)."""
        self.conf += other.conf
        self.unpredicted += other.unpredicted

    def summary(self, groups: dict[str, list[int]] | None = None) -> dict[str, float]:
        conf = self.conf
        tp = np.diag(conf).astype(np.float64)
        pos_gt = (conf.sum(1) + self.unpredicted).astype(np.float64)
        pos_pred = conf.sum(0).astype(np.float64)
        valid = pos_gt > 0
        iou = np.where(valid, tp / np.maximum(pos_gt + pos_pred - tp, 1), 0.0)
        acc = np.where(valid, tp / np.maximum(pos_gt, 1), 0.0)
        weights = pos_gt / max(pos_gt.sum(), 1)
        out = {"mIoU": float(100 * iou[valid].mean()) if valid.any() else 0.0,
               "fwIoU": float(100 * (iou[valid] * weights[valid]).sum()),
               "mACC": float(100 * acc[valid].mean()) if valid.any() else 0.0,
               "pACC": float(100 * tp.sum() / max(pos_gt.sum(), 1))}
        for name, idx in (groups or {}).items():
            m = np.zeros_like(valid)
            m[idx] = True
            m &= valid
            if m.any():  # a group without classes with ground truth here has no mIoU (absent, not 0.0)
                out[f"mIoU_{name}"] = float(100 * iou[m].mean())
        out["IoU_per_class"] = [float(100 * v) if ok else None for v, ok in zip(iou, valid)]
        return out
