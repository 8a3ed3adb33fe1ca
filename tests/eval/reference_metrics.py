"""Test-only copy of the previous (np.unique-based) pipeline/metrics.py: the reference the fast
accumulators must reproduce exactly. Panoptic quality (COCO panoptic API semantics) and semantic metrics.

PQ: a predicted and a ground-truth segment of the same class match at IoU > 0.5, where void pixels
are removed from the prediction's area; an unmatched prediction overlapping void plus same-class
crowd by more than half of its area is not a false positive. Per-class PQ is averaged over classes
with at least one TP, FP or FN; SQ, RQ and the thing/stuff splits likewise.

mIoU: detectron2's current formula: IoU_c = TP / (TP + FP + FN) averaged over classes that have
ground-truth pixels; the ignore label is excluded. (detectron2 v0.6 averaged over every class with
a non-zero union, which gives lower numbers on large vocabularies.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OFFSET = 2**24


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

    def add(self, gt_map: np.ndarray, gt_segments: list[dict], pred_map: np.ndarray, pred_segments: list[dict]) -> None:
        """Segments: dicts with ``id``, ``label`` (contiguous) and, for gt, ``iscrowd``. id 0 = void."""
        gt = {s["id"]: s for s in gt_segments}
        pred = {s["id"]: s for s in pred_segments}
        joint = gt_map.astype(np.uint64) * OFFSET + pred_map.astype(np.uint64)
        ids, counts = np.unique(joint, return_counts=True)
        inter = {(int(i // OFFSET), int(i % OFFSET)): int(c) for i, c in zip(ids, counts)}
        gt_area = {k: int(v) for k, v in zip(*np.unique(gt_map, return_counts=True))}
        pred_area = {k: int(v) for k, v in zip(*np.unique(pred_map, return_counts=True))}
        unknown = set(pred_area) - set(pred) - {0}
        if unknown:
            raise ValueError(f"prediction map has segment ids {sorted(unknown)[:5]} without segments_info")
        crowd_by_label = {s["label"]: sid for sid, s in gt.items() if s.get("iscrowd")}
        matched_gt, matched_pred = set(), set()
        for (g, p), n in inter.items():
            if g not in gt or p not in pred or gt[g].get("iscrowd") or gt[g]["label"] != pred[p]["label"]:
                continue
            union = pred_area[p] + gt_area[g] - n - inter.get((0, p), 0)
            iou = n / union
            if iou > 0.5:
                self.tp[gt[g]["label"]] += 1
                self.iou[gt[g]["label"]] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g, s in gt.items():
            if g not in matched_gt and not s.get("iscrowd"):
                self.fn[s["label"]] += 1
        for p, s in pred.items():
            if p in matched_pred or pred_area.get(p, 0) == 0:
                continue
            ignored = inter.get((0, p), 0)
            if s["label"] in crowd_by_label:
                ignored += inter.get((crowd_by_label[s["label"]], p), 0)
            if ignored / pred_area[p] > 0.5:
                continue
            self.fp[s["label"]] += 1

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
            for key, arr in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[f"{key}{suffix}"] = float(100 * arr[m].mean()) if n else 0.0
        out["PQ_per_class"] = [float(100 * v) if ok else None for v, ok in zip(pq, valid)]
        return out


class SemanticStat:
    """Confusion-matrix accumulator for mIoU, fwIoU, mACC, pACC."""

    def __init__(self, num_classes: int, ignore_label: int):
        self.n, self.ignore = num_classes, ignore_label
        self.conf = np.zeros((num_classes, num_classes), np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        keep = gt != self.ignore
        g, p = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
        if g.size and (g.max() >= self.n or p.max() >= self.n or p.min() < 0):
            raise ValueError(f"labels outside [0, {self.n}) (ignore label {self.ignore})")
        self.conf += np.bincount(g * self.n + p, minlength=self.n**2).reshape(self.n, self.n)

    def summary(self, groups: dict[str, list[int]] | None = None) -> dict[str, float]:
        tp = np.diag(self.conf).astype(np.float64)
        pos_gt, pos_pred = self.conf.sum(1).astype(np.float64), self.conf.sum(0).astype(np.float64)
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
            out[f"mIoU_{name}"] = float(100 * iou[m].mean()) if m.any() else 0.0
        out["IoU_per_class"] = [float(100 * v) if ok else None for v, ok in zip(iou, valid)]
        return out
