"""Which proposal learns which class: Mask2Former's bipartite matching (as MaskCLIP trains its classifier), or the
earlier IoU assignment.

:func:`hungarian_targets` follows Mask2Former's ``HungarianMatcher`` (the matcher MaskCLIP imports): per image, a
cost ``class_weight * (-p_q[c_k]) + mask_weight * BCE + dice_weight * dice`` between every proposal q and
ground-truth segment k, the two mask terms on ``num_points`` points sampled uniformly at random (the same points
for every mask of the image), then ``scipy.optimize.linear_sum_assignment``: at most one proposal per segment.
Matched proposals learn the segment's class; every other proposal learns the no-object class (index
``num_classes``, MaskCLIP's appended "other"), whose cross-entropy weight is ``no_object_weight``.

The stored proposals are binary; their mask logits are taken as ``+-BINARY_LOGIT`` (probability 0.99 / 0.01), so
the sigmoid-BCE cost is the fraction of sampled points where proposal and segment disagree times
log(0.99 / 0.01), and the dice cost is exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100
BINARY_LOGIT = math.log(0.99 / 0.01)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P,H,W) x (G,H,W) bool -> (P,G) IoU."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0], device=a.device)
    af, bf = a.flatten(1).float(), b.flatten(1).float()
    inter = af @ bf.t()
    union = af.sum(1, keepdim=True) + bf.sum(1)[None] - inter
    return inter / union.clamp_min(1)


def iou_targets(proposals: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """The earlier assignment (``train.assignment: iou``): each proposal takes the label of the segment it overlaps
    most if IoU >= ``iou_threshold``, else IGNORE (no loss); several proposals may take one segment's label."""
    iou = mask_iou(proposals, gt_masks)
    if iou.numel() == 0:
        return torch.full((proposals.shape[0],), IGNORE, dtype=torch.long, device=proposals.device)
    best, idx = iou.max(1)
    return torch.where(best >= iou_threshold, gt_labels[idx], torch.full_like(idx, IGNORE))


def point_sample(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N,H,W) masks sampled bilinearly at (P,2) points in [0,1]^2 (x, y) -> (N,P) (detectron2's point_sample)."""
    grid = (2 * points - 1)[None, None].expand(masks.shape[0], 1, -1, -1)
    return F.grid_sample(masks[:, None].float(), grid.to(masks.device), align_corners=False)[:, 0, 0]


def match_cost(class_prob: torch.Tensor, labels: torch.Tensor, proposals: torch.Tensor, gt_masks: torch.Tensor,
               points: torch.Tensor, class_weight: float, mask_weight: float, dice_weight: float) -> torch.Tensor:
    """(Q,K) matching cost of Q proposals against K segments (Mask2Former's, see the module docstring)."""
    cost_class = -class_prob[:, labels]
    logits = (point_sample(proposals, points) * 2 - 1) * BINARY_LOGIT  # bilinear at a mask edge: in between
    target = point_sample(gt_masks, points)
    n = points.shape[0]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost_bce = (pos @ target.t() + neg @ (1 - target).t()) / n
    prob = logits.sigmoid()
    cost_dice = 1 - (2 * prob @ target.t() + 1) / (prob.sum(-1)[:, None] + target.sum(-1)[None, :] + 1)
    return class_weight * cost_class + mask_weight * cost_bce + dice_weight * cost_dice


@torch.no_grad()
def hungarian_targets(class_prob: torch.Tensor, proposals: torch.Tensor, gt_masks: torch.Tensor,
                      gt_labels: torch.Tensor, num_classes: int, *, class_weight: float = 2.0,
                      mask_weight: float = 5.0, dice_weight: float = 5.0, num_points: int = 12544,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(Q,) targets of one image's Q proposals: the matched segment's label, else ``num_classes`` (no object).

    ``class_prob``: (Q, C') softmax of the classifier's logits (C' >= num_classes); ``proposals`` (Q,H,W) and
    ``gt_masks`` (K,H,W) binary at the same resolution; ``generator`` draws the sampled points."""
    q, k = proposals.shape[0], gt_masks.shape[0]
    targets = torch.full((q,), num_classes, dtype=torch.long, device=proposals.device)
    if q == 0 or k == 0:
        return targets
    points = torch.rand(num_points, 2, generator=generator).to(proposals.device)
    cost = match_cost(class_prob.float(), gt_labels, proposals, gt_masks, points, class_weight, mask_weight,
                      dice_weight)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    targets[torch.as_tensor(rows, device=targets.device)] = gt_labels[torch.as_tensor(cols, device=targets.device)]
    return targets


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, no_object_weight: float | None = None
                        ) -> torch.Tensor:
    """Cross-entropy of (B,Q,C') logits against (B,Q) targets (IGNORE = padding, no loss).

    ``no_object_weight`` (Hungarian targets): the last class is no-object and its terms weigh that much, the
    others 1; the mean is weighted, as ``F.cross_entropy(weight=...)`` and Mask2Former's criterion compute it. A
    batch whose terms all weigh 0 (nothing matched, no-object weight 0) gives 0, with a gradient graph."""
    flat, t = logits.flatten(0, 1), targets.flatten()
    weight = None
    if no_object_weight is not None:
        weight = torch.ones(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        weight[-1] = no_object_weight
    keep = t != IGNORE
    total = weight[t[keep]].sum() if weight is not None else keep.sum()
    if float(total) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(flat, t, weight=weight, ignore_index=IGNORE)


def matched_counts(targets: torch.Tensor, num_classes: int) -> tuple[int, int]:
    """(proposals with a real class target, proposals with any target) of a (B,Q) target tensor."""
    t = targets[targets != IGNORE]
    return int((t < num_classes).sum()), int(t.numel())
