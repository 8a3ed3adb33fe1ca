"""From classified proposals to a semantic map and panoptic segments (Mask2Former-style merging)."""
from __future__ import annotations

import torch

from models.losses import mask_iou


def proposal_scores(class_probs: torch.Tensor, objectness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-proposal (score, label): score = objectness x top class probability."""
    conf, labels = class_probs.max(-1)
    return objectness * conf, labels


def semantic_inference(class_probs: torch.Tensor, mask_probs: torch.Tensor, objectness: torch.Tensor,
                       void_label: int = -1) -> torch.Tensor:
    """(Q,C), (Q,H,W), (Q,) -> (H,W) labels = argmax_c sum_q obj_q p_qc m_q (Mask2Former semantic inference).

    Pixels no proposal covers (every class sums to 0: binary masks, or no proposals) get ``void_label``,
    "no prediction", instead of argmax's class 0: Mask2Former's soft masks give every pixel some score,
    stored binary proposals do not. The metrics count them as misses (``pipeline.metrics.SemanticStat``).
    """
    if class_probs.shape[0] == 0:
        return torch.full(mask_probs.shape[-2:], void_label, dtype=torch.long)
    seg = torch.einsum("qc,qhw->chw", class_probs * objectness[:, None], mask_probs.float())
    best = seg.max(0)  # indices = argmax(0), first maximum on ties; 1.4-4x faster over the outer dim on CPU
    return torch.where(best.values > 0, best.indices, void_label)


def panoptic_inference(class_probs: torch.Tensor, mask_probs: torch.Tensor, objectness: torch.Tensor,
                       is_thing: torch.Tensor, object_threshold: float = 0.3, overlap_threshold: float = 0.6
                       ) -> tuple[torch.Tensor, list[dict]]:
    """Mask2Former panoptic merging.

    Keep proposals whose score exceeds ``object_threshold``; each pixel goes to the kept proposal
    with the highest score x mask probability; a proposal whose surviving area is under
    ``overlap_threshold`` of its own mask is dropped; stuff proposals of one class merge into one
    segment. Returns an id map (0 = void) and ``segments_info`` with contiguous ``label``s.
    """
    h, w = mask_probs.shape[-2:]
    id_map = torch.zeros(h, w, dtype=torch.int32)
    segments: list[dict] = []
    if class_probs.shape[0] == 0:
        return id_map, segments
    scores, labels = proposal_scores(class_probs, objectness)
    keep = scores > object_threshold
    if not keep.any():
        return id_map, segments
    scores, labels, probs = scores[keep], labels[keep], mask_probs[keep].float()
    owner = (scores[:, None, None] * probs).max(0).indices  # = argmax(0), faster on CPU
    stuff_ids: dict[int, int] = {}
    for k in range(len(scores)):
        label = int(labels[k])
        mine = (owner == k) & (probs[k] >= 0.5)
        area, original = int(mine.sum()), int((probs[k] >= 0.5).sum())
        if area == 0 or original == 0 or area / original < overlap_threshold:
            continue
        thing = bool(is_thing[label])
        if not thing and label in stuff_ids:
            id_map[mine] = stuff_ids[label]
            seg = next(s for s in segments if s["id"] == stuff_ids[label])
            seg["area"] += area
            continue
        sid = len(segments) + 1
        id_map[mine] = sid
        segments.append({"id": sid, "label": label, "isthing": thing, "score": float(scores[k]), "area": area})
        if not thing:
            stuff_ids[label] = sid
    return id_map, segments


def oracle_class_probs(pred_masks: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Oracle classifier (Fig. 2a): each predicted mask gets its best-IoU ground-truth label (one-hot);
    masks overlapping no ground truth get a uniform distribution, i.e. a low score."""
    probs = torch.full((pred_masks.shape[0], num_classes), 1.0 / num_classes)
    iou = mask_iou(pred_masks.bool(), gt_masks.bool())
    if iou.numel():
        best, idx = iou.max(1)
        hit = best > 0
        probs[hit] = 0
        probs[hit, gt_labels[idx[hit]]] = 1.0
    return probs
