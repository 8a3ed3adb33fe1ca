import torch

from models.inference import oracle_class_probs, panoptic_inference, semantic_inference
from models.losses import IGNORE, assign_targets


def _two_masks():
    m = torch.zeros(2, 8, 8)
    m[0, :, :4] = 1
    m[1, :, 4:] = 1
    return m


def test_semantic_inference_takes_the_confident_class():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    sem = semantic_inference(probs, _two_masks(), torch.ones(2))
    assert (sem[:, :4] == 0).all() and (sem[:, 4:] == 2).all()


def test_semantic_inference_leaves_uncovered_pixels_void():
    """Binary proposals that cover part of the image: the rest is "no prediction", not class 0."""
    probs = torch.tensor([[0.1, 0.9]])
    masks = torch.zeros(1, 4, 4)
    masks[0, :2] = 1
    sem = semantic_inference(probs, masks, torch.ones(1), void_label=255)
    assert (sem[:2] == 1).all() and (sem[2:] == 255).all()
    assert (semantic_inference(probs, masks, torch.zeros(1)) == -1).all()  # objectness 0 covers nothing
    assert (semantic_inference(probs[:0], masks[:0], torch.zeros(0), void_label=7) == 7).all()


def test_panoptic_merges_stuff_and_drops_low_scores():
    masks = torch.zeros(3, 8, 8)
    masks[0, :4] = 1
    masks[1, 4:] = 1
    masks[2, :, :2] = 1
    probs = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # class 1 = stuff, class 0 = thing
    id_map, segs = panoptic_inference(probs, masks, torch.tensor([0.9, 0.9, 0.1]), torch.tensor([True, False]),
                                      object_threshold=0.3, overlap_threshold=0.5)
    assert len(segs) == 1 and segs[0]["label"] == 1 and segs[0]["area"] == 64
    id_map, segs = panoptic_inference(probs[:0], masks[:0], torch.zeros(0), torch.tensor([True, False]))
    assert segs == [] and (id_map == 0).all()


def test_oracle_classifier_and_assignment():
    pred = _two_masks().bool()
    gt = pred.clone()
    labels = torch.tensor([5, 2])
    probs = oracle_class_probs(pred, gt, labels, 7)
    assert probs.argmax(1).tolist() == [5, 2]
    targets = assign_targets(torch.cat([pred, torch.zeros(1, 8, 8, dtype=torch.bool)]), gt, labels, 0.5)
    assert targets.tolist() == [5, 2, IGNORE]


def test_semantic_inference_is_the_argmax_of_the_weighted_sum_first_class_on_ties():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 5, generator=g)
    masks = (torch.rand(6, 12, 12, generator=g) > 0.5).float()
    obj = torch.rand(6, generator=g)
    seg = torch.einsum("qc,qhw->chw", probs * obj[:, None], masks)
    ref = torch.where(seg.amax(0) > 0, seg.argmax(0), -1)
    assert (ref == -1).any() and torch.equal(semantic_inference(probs, masks, obj), ref)
    tied = torch.tensor([[0.5, 0.5, 0.0]])  # classes 0 and 1 tie everywhere the mask is on
    labels = semantic_inference(tied, torch.ones(1, 4, 4), torch.ones(1))
    assert torch.equal(labels, torch.zeros(4, 4, dtype=torch.long))
