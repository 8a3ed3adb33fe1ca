"""The evaluation loop's recipe choices: the segment score (evaluate.score), the classifier's input size
(evaluate.classifier_input) and the untrained baseline (MaskCLIP's architecture)."""
import numpy as np
import pytest
import torch

from pipeline.config import EvaluateParams, ModelParams, override
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark
from pipeline.eval.loop import PanopticEvaluator, inference_on_dataset, maskclip_architecture


class _Cls:
    """Every proposal: class 1 with probability 0.9."""

    device = torch.device("cpu")

    def __init__(self, n_classes):
        self.n = n_classes

    def __call__(self, sample, masks):
        p = torch.full((len(masks), self.n), 0.1 / (self.n - 1))
        p[:, 1] = 0.9
        return p


def _low_objectness_proposals(sample):
    masks, _ = sample.segment_masks()
    return masks, np.full(len(masks), 0.05, np.float32)  # the generator is unsure of every mask


@pytest.mark.parametrize("score,kept", [("class", True), ("objectness_x_class", False)])
def test_segment_score_is_the_class_probability_unless_asked(toy_root, score, kept):
    """MaskCLIP / Mask2Former: score = softmax class probability (0.9 here, above object_threshold 0.3); with
    ``objectness_x_class`` the generator's low objectness (0.05) drops every segment."""
    ds = BenchmarkDataset(get_benchmark("toy_val"), toy_root)
    seen = []

    class Record(PanopticEvaluator):
        def process(self, sample, prediction):
            seen.append(len(prediction.segments))

    inference_on_dataset(ds, _low_objectness_proposals, _Cls(len(ds.vocab)), [Record(ds.vocab)],
                         object_threshold=0.3, overlap_threshold=0.5, max_images=2, score=score)
    assert (sum(seen) > 0) == kept


@pytest.mark.parametrize("mode,expect", [("square", (64, 64)), ("aspect", (48, 96))])
def test_classifier_input_is_r_by_r_as_maskclip(mode, expect):
    """MaskCLIP's ``clip_prep`` squashes the image to R x R at test time as in training; ``aspect`` keeps the
    test resize (short side, long side limit) rounded to the patch."""
    from pipeline.build.classifier import classifier_input_size

    ev = EvaluateParams(test_short_side=48, test_max_side=107, classifier_input=mode)
    assert classifier_input_size(100, 200, ev, image_size=64, patch=8) == expect


def test_classify_image_feeds_the_model_at_r_by_r(monkeypatch):
    from pipeline.build import classifier as builder

    calls = []

    class Model(torch.nn.Module):
        image_size = 64

        class visual:  # noqa: N801 - stands in for the mask encoder
            patch_size = 8

        def forward(self, x, masks, text, size=None):
            calls.append(size)
            return {"logits": torch.zeros(1, masks.shape[1], len(text))}

    ready = builder.ReadyClassifier(Model(), None, "w", "m", ("{}",), torch.device("cpu"))
    builder.classify_image(ready, np.zeros((100, 200, 3), np.uint8), np.zeros((2, 100, 200), bool),
                           torch.zeros(3, 4), EvaluateParams())
    assert calls == [(64, 64)]


def test_untrained_baseline_is_maskclip_without_the_papers_modules():
    arch = maskclip_architecture(ModelParams())
    assert not arch.teva.target_attention and arch.adapter_layers == 0 and not arch.fiser.enabled
    assert arch.trainable == ModelParams().trainable  # nothing else changes
    assert maskclip_architecture(override(ModelParams(), {"adapter_layers": 3})).adapter_layers == 0
