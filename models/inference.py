"""From classified proposals to a semantic map and panoptic segments (Mask2Former-style merging)."""
from __future__ import annotations

import torch

from models.matching import mask_iou


def proposal_scores(class_probs: torch.Tensor, objectness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-proposal (score, label): score = objectness x top class probability (pass objectness = 1 for
    MaskCLIP/Mask2Former's score, the class probability alone)."""
    conf, labels = class_probs.max(-1)
    return objectness * conf, labels


def semantic_inference(class_probs: torch.Tensor, mask_probs: torch.Tensor, objectness: torch.Tensor,
                       void_label: int = -1, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """(Q,C), (Q,H,W), (Q,) -> (H,W) labels = argmax_c sum_q obj_q p_qc m_q (Mask2Former semantic inference).

    Pixels no proposal covers (every class sums to 0: binary masks, or no proposals) get ``void_label``,
    "no prediction", instead of argmax's class 0: Mask2Former's soft masks give every pixel some score,
    stored binary proposals do not. The metrics count them as misses (``pipeline.metrics.SemanticStat``).
    Runs on the inputs' device; the (pixels, C) scores are formed ``chunk_elements`` at a time, so 847
    classes on a 640x853 image need 16 MB, not 1.8 GB (and the CPU is faster than with one big product).
    """
    h, w = mask_probs.shape[-2:]
    if class_probs.shape[0] == 0:
        return torch.full((h, w), void_label, dtype=torch.long, device=mask_probs.device)
    weights = (class_probs * objectness[:, None]).float()  # (Q, C)
    pixels = mask_probs.reshape(mask_probs.shape[0], h * w).T  # (H*W, Q), a view
    out = torch.empty(h * w, dtype=torch.long, device=mask_probs.device)
    step = max(1, chunk_elements // weights.shape[1])
    for start in range(0, h * w, step):
        best = (pixels[start:start + step].float() @ weights).max(1)  # first maximum on ties
        out[start:start + step] = torch.where(best.values > 0, best.indices, void_label)
    return out.view(h, w)


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
    id_map = torch.zeros(h, w, dtype=torch.int32, device=mask_probs.device)
    segments: list[dict] = []
    if class_probs.shape[0] == 0:
        return id_map, segments
    scores, labels = proposal_scores(class_probs, objectness)
    keep = scores > object_threshold
    if not keep.any():
        return id_map, segments
    scores, labels, probs = scores[keep], labels[keep], mask_probs[keep].float()
    owner = (scores[:, None, None] * probs).max(0).indices  # = argmax(0), faster on CPU
    binary = probs >= 0.5
    owned = binary.gather(0, owner[None])[0]  # the pixel's owner covers it: the owner's surviving area
    areas = torch.bincount(owner[owned], minlength=len(scores)).tolist()
    originals = binary.flatten(1).sum(1).tolist()
    # every pixel has one owner, so the proposals' pixels are disjoint: a segment id per kept proposal (0 =
    # dropped; stuff proposals of one class share one) and a single lookup paint the id map
    ids = [0] * len(scores)
    stuff_ids: dict[int, int] = {}
    for k, (label, score, area, original) in enumerate(zip(labels.tolist(), scores.tolist(), areas, originals)):
        if area == 0 or original == 0 or area / original < overlap_threshold:
            continue
        thing = bool(is_thing[label])
        if not thing and label in stuff_ids:
            ids[k] = stuff_ids[label]
            segments[ids[k] - 1]["area"] += area
            continue
        ids[k] = len(segments) + 1
        segments.append({"id": ids[k], "label": label, "isthing": thing, "score": score, "area": area})
        if not thing:
            stuff_ids[label] = ids[k]
    lookup = torch.tensor(ids, dtype=torch.int32, device=id_map.device)
    return torch.where(owned, lookup[owner], id_map), segments


def merge_proposals(class_probs: torch.Tensor, mask_probs: torch.Tensor, objectness: torch.Tensor,
                    is_thing: torch.Tensor | None, object_threshold: float, overlap_threshold: float, *,
                    void_label: int = -1, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor | None, list[dict] | None]:
    """Semantic map and (when ``is_thing`` is given) panoptic id map + segments of one image, computed on
    ``device`` (the classifier's: on a GPU the merging takes milliseconds where the CPU needs 0.2-1.5 s at
    100 proposals, 640x853 and 150-847 classes) and returned on the CPU. Masks may be bool/uint8 (moved as
    such, converted on the device) or probabilities."""
    device = torch.device(device)
    probs, masks, obj = class_probs.to(device), mask_probs.to(device), objectness.to(device)
    semantic = semantic_inference(probs, masks, obj, void_label=void_label).cpu()
    if is_thing is None:
        return semantic, None, None
    id_map, segments = panoptic_inference(probs, masks, obj, is_thing, object_threshold, overlap_threshold)
    return semantic, id_map.cpu(), segments


def oracle_class_probs(pred_masks: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """Oracle classifier (Fig. 2a): each predicted mask gets its best-IoU ground-truth label (one-hot);
    masks overlapping no ground truth get a uniform distribution, i.e. a low score."""
    probs = torch.full((pred_masks.shape[0], num_classes), 1.0 / num_classes, device=pred_masks.device)
    iou = mask_iou(pred_masks.bool(), gt_masks.bool())
    if iou.numel():
        best, idx = iou.max(1)
        hit = best > 0
        probs[hit] = 0
        probs[hit, gt_labels[idx[hit]]] = 1.0
    return probs
