"""Mask-classification loss and the proposal-to-ground-truth assignment."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P,H,W) x (G,H,W) bool -> (P,G) IoU."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0], device=a.device)
    af, bf = a.flatten(1).float(), b.flatten(1).float()
    inter = af @ bf.t()
    union = af.sum(1, keepdim=True) + bf.sum(1)[None] - inter
    return inter / union.clamp_min(1)


def assign_targets(proposals: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor,
                   iou_threshold: float) -> torch.Tensor:
    """Each proposal takes the label of the gt segment it overlaps most if IoU >= threshold, else IGNORE.

    (The paper is silent; this is MaskCLIP's IoU-based assignment. Unassigned proposals get no
    classification loss rather than a background label, since the classifier has no void class.)"""
    iou = mask_iou(proposals, gt_masks)
    if iou.numel() == 0:
        return torch.full((proposals.shape[0],), IGNORE, dtype=torch.long, device=proposals.device)
    best, idx = iou.max(1)
    return torch.where(best >= iou_threshold, gt_labels[idx], torch.full_like(idx, IGNORE))


def mask_classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over assigned proposals; logits (B,Q,C), targets (B,Q) with IGNORE; 0 if none."""
    if (targets != IGNORE).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
