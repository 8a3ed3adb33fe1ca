import pytest
import torch

from models.inference import merge_proposals, oracle_class_probs, panoptic_inference, semantic_inference
from models.matching import IGNORE, iou_targets


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
    targets = iou_targets(torch.cat([pred, torch.zeros(1, 8, 8, dtype=torch.bool)]), gt, labels, 0.5)
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


def _reference_panoptic(probs, masks, obj, is_thing, object_threshold, overlap_threshold):
    """Mask2Former's merging loop, one proposal at a time (what the vectorised version must equal)."""
    id_map, segments, stuff_ids = torch.zeros(masks.shape[-2:], dtype=torch.int32), [], {}
    conf, labels = probs.max(-1)
    scores = obj * conf
    keep = scores > object_threshold
    scores, labels, masks = scores[keep], labels[keep], masks[keep].float()
    if len(scores) == 0:
        return id_map, segments
    owner = (scores[:, None, None] * masks).argmax(0)
    for k in range(len(scores)):
        label, mine = int(labels[k]), (owner == k) & (masks[k] >= 0.5)
        area, original = int(mine.sum()), int((masks[k] >= 0.5).sum())
        if area == 0 or original == 0 or area / original < overlap_threshold:
            continue
        if not is_thing[label] and label in stuff_ids:
            id_map[mine] = stuff_ids[label]
            segments[stuff_ids[label] - 1]["area"] += area
            continue
        segments.append({"id": len(segments) + 1, "label": label, "isthing": bool(is_thing[label]),
                         "score": float(scores[k]), "area": area})
        id_map[mine] = len(segments)
        if not is_thing[label]:
            stuff_ids[label] = len(segments)
    return id_map, segments


@pytest.mark.parametrize("binary", [False, True])
def test_panoptic_inference_equals_the_one_proposal_at_a_time_loop(binary):
    g = torch.Generator().manual_seed(int(binary))
    for _ in range(20):
        q, c = int(torch.randint(1, 16, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g))
        probs = torch.rand(q, c, generator=g).softmax(-1)
        masks = torch.rand(q, 17, 23, generator=g)
        masks = (masks > 0.6).float() if binary else masks
        obj, is_thing = torch.rand(q, generator=g) * 3, torch.rand(c, generator=g) > 0.5
        for thresholds in [(0.2, 0.5), (0.0, 0.0), (0.4, 0.8)]:
            got = panoptic_inference(probs, masks, obj, is_thing, *thresholds)
            want = _reference_panoptic(probs, masks, obj, is_thing, *thresholds)
            assert torch.equal(got[0], want[0]) and got[1] == want[1]


def test_semantic_inference_does_not_depend_on_the_chunk_size():
    g = torch.Generator().manual_seed(3)
    probs, masks, obj = torch.rand(7, 11, generator=g), torch.rand(7, 13, 19, generator=g), torch.rand(7, generator=g)
    whole = semantic_inference(probs, masks, obj, chunk_elements=1 << 30)
    for chunk in (1, 11, 50, 11 * 13 * 19 - 1):
        assert torch.equal(semantic_inference(probs, masks, obj, chunk_elements=chunk), whole)


def test_merge_proposals_takes_bool_masks_and_returns_cpu_tensors():
    probs = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4], masks[1, 4:], masks[2, :, :2] = True, True, True
    obj, is_thing = torch.tensor([0.9, 0.9, 0.1]), torch.tensor([True, False])
    semantic, id_map, segs = merge_proposals(probs, masks, obj, is_thing, 0.3, 0.5, void_label=255)
    assert torch.equal(semantic, semantic_inference(probs, masks.float(), obj, void_label=255))
    assert torch.equal(id_map, panoptic_inference(probs, masks.float(), obj, is_thing, 0.3, 0.5)[0])
    assert len(segs) == 1 and semantic.device.type == id_map.device.type == "cpu"
    assert merge_proposals(probs, masks, obj, None, 0.3, 0.5)[1:] == (None, None)  # semantic benchmarks
