"""Targets by bipartite matching (MaskCLIP / Mask2Former's HungarianMatcher) and the classification loss."""
import pytest
import torch
import torch.nn.functional as F

from models.matching import IGNORE, classification_loss, hungarian_targets, iou_targets, match_cost, point_sample


def _square(y, x, s, size=32):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y:y + s, x:x + s] = True
    return m


def test_point_sample_reads_bilinearly_at_normalised_coordinates():
    mask = torch.zeros(1, 4, 4)
    mask[0, :, 2:] = 1  # right half on
    got = point_sample(mask, torch.tensor([[0.125, 0.5], [0.875, 0.5], [0.5, 0.5]]))
    assert torch.allclose(got, torch.tensor([[0.0, 1.0, 0.5]]))


def test_at_most_one_proposal_per_segment_the_rest_learn_no_object():
    """Three proposals cover the same segment (IoU 1, 0.8, 0.6): the IoU rule gives all three its label, the
    matcher gives it to one (the best), the others learn no-object (class C)."""
    gt = torch.stack([_square(4, 4, 10)])
    props = torch.stack([_square(4, 4, 10), _square(4, 4, 9), _square(5, 5, 8), _square(20, 20, 6)])
    labels = torch.tensor([2])
    probs = torch.full((4, 6), 1 / 6)
    targets = hungarian_targets(probs, props, gt, labels, num_classes=5, num_points=4096,
                                generator=torch.Generator().manual_seed(0))
    assert targets.tolist() == [2, 5, 5, 5]
    assert iou_targets(props, gt, labels, 0.5).tolist() == [2, 2, 2, IGNORE]  # the old rule: several


def test_class_cost_decides_between_equal_masks():
    """Two identical proposals: the one whose class probability for the segment's label is higher wins."""
    gt = torch.stack([_square(4, 4, 10)])
    props = torch.stack([_square(4, 4, 10), _square(4, 4, 10)])
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])
    targets = hungarian_targets(probs, props, gt, torch.tensor([1]), num_classes=2, num_points=1024)
    assert targets.tolist() == [2, 1]


def test_match_cost_weights_follow_the_config():
    gt = torch.stack([_square(0, 0, 16)]).float()
    props = torch.stack([_square(0, 0, 16), _square(16, 16, 16)]).float()
    points = torch.rand(2048, 2, generator=torch.Generator().manual_seed(1))
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    only_class = match_cost(probs, torch.tensor([0]), props, gt, points, 2.0, 0.0, 0.0)
    assert torch.allclose(only_class, torch.full((2, 1), -1.0))
    dice = match_cost(probs, torch.tensor([0]), props, gt, points, 0.0, 0.0, 1.0)
    assert dice[0, 0] < 0.05 and dice[1, 0] > 0.95  # overlapping vs disjoint


def test_no_object_weight_reaches_the_loss():
    """Weighted mean as F.cross_entropy(weight=...): weight 0 = the matched proposals' mean alone; any other
    weight changes the loss; padding (IGNORE) never counts."""
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 4, requires_grad=True)
    targets = torch.tensor([[1, 3, 3, IGNORE]])  # class 3 = no object
    matched_only = F.cross_entropy(logits[0, :1], targets[0, :1])
    assert torch.allclose(classification_loss(logits, targets, 0.0), matched_only)
    with_weight = classification_loss(logits, targets, 0.1)
    nll = -logits[0, :3].log_softmax(-1)[[0, 1, 2], [1, 3, 3]]
    assert torch.allclose(with_weight, (nll[0] + 0.1 * nll[1] + 0.1 * nll[2]) / 1.2)
    with_weight.backward()
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, 3].abs().sum() == 0


def test_a_batch_without_any_match_gives_zero_loss_not_nan():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    targets = torch.tensor([[3, 3, IGNORE], [IGNORE, IGNORE, IGNORE]])
    loss = classification_loss(logits, targets, 0.0)
    assert loss.item() == 0.0
    loss.backward()  # still a graph


@pytest.mark.parametrize("k", [0, 3])
def test_empty_proposals_or_segments(k):
    props = torch.zeros(0, 8, 8, dtype=torch.bool)
    gt = torch.ones(k, 8, 8, dtype=torch.bool)
    assert hungarian_targets(torch.zeros(0, 4), props, gt, torch.arange(k), 3).numel() == 0
    props = torch.ones(2, 8, 8, dtype=torch.bool)
    out = hungarian_targets(torch.full((2, 4), 0.25), props, gt, torch.arange(k), 3)
    assert (out == 3).sum() == 2 - min(k, 2)
