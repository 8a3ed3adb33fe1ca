"""Item 7: the generator sees an aspect-preserving, padded input and its masks map back undistorted."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.generators import Mask2FormerGenerator, build_mask2former, resize_shape


class BrightBlobStub(nn.Module):
    """A stand-in Mask2Former: one query whose mask is 'bright pixels' at 1/4 resolution (as Mask2Former's
    mask logits are), plus one empty query; it records the pixel batch it was given."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, pixel_values):
        self.seen.append(pixel_values.detach().clone())
        bright = (pixel_values.mean(1, keepdim=True) > 1.0).float()  # white in ImageNet-normalised units
        low = F.avg_pool2d(bright, 4)
        masks = torch.cat([low * 40 - 20, torch.full_like(low, -20)], 1)
        cls = torch.tensor([[5.0, -5.0], [-5.0, 5.0]]).expand(len(pixel_values), 2, 2)
        return SimpleNamespace(masks_queries_logits=masks, class_queries_logits=cls)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def test_resize_shape_follows_mask2former_test_recipe():
    assert resize_shape(480, 640, 800, 1333) == (800, 1067)
    assert resize_shape(400, 1200, 800, 1333) == (444, 1333)  # long side capped
    assert resize_shape(96, 96, 96, 160) == (96, 96)


def test_square_object_in_wide_image_stays_square_and_in_place():
    image = np.zeros((64, 192, 3), np.uint8)
    image[16:48, 140:172] = 255  # a 32 x 32 square near the right edge
    stub = BrightBlobStub()
    gen = Mask2FormerGenerator(stub, 96, max_proposals=5, mask_threshold=0.5, min_area=0, max_size=160)
    props = gen([image])[0]
    (x,) = stub.seen
    # the model input keeps the aspect ratio: 64x192 -> 53x160, padded to 64x160 (multiples of 32)
    assert tuple(x.shape[-2:]) == (64, 160)
    assert torch.all(x[..., 53:, :] == 0), "padding must be zeros below the resized image"
    y0, y1, x0, x1 = _box((x[0].mean(0) > 1.0).numpy())
    assert abs((y1 - y0) - (x1 - x0)) <= 1, "the square is distorted in the generator's input"
    # the proposal maps back to the original image: same square, same place
    assert props.masks.shape == (1, 64, 192)
    gt = np.zeros((64, 192), bool)
    gt[16:48, 140:172] = True
    iou = (props.masks[0] & gt).sum() / (props.masks[0] | gt).sum()
    assert iou > 0.85, iou
    y0, y1, x0, x1 = _box(props.masks[0])
    assert abs((y1 - y0) - (x1 - x0)) <= 2


def test_mixed_sizes_in_one_batch_each_map_back():
    tall = np.zeros((200, 80, 3), np.uint8)
    tall[150:190, 20:60] = 255  # bottom: the crop must remove the padding of the batch's wider image
    wide = np.zeros((80, 200, 3), np.uint8)
    wide[10:50, 150:190] = 255
    gen = Mask2FormerGenerator(BrightBlobStub(), 96, max_size=160)
    props = gen([tall, wide])
    for im, p, (y0, y1, x0, x1) in zip([tall, wide], props, [(150, 190, 20, 60), (10, 50, 150, 190)]):
        gt = np.zeros(im.shape[:2], bool)
        gt[y0:y1, x0:x1] = True
        m = p.masks[0]
        assert m.shape == im.shape[:2]
        assert (m & gt).sum() / (m | gt).sum() > 0.8


def test_max_size_below_short_side_is_an_error():
    with pytest.raises(ValueError, match="max_size"):
        Mask2FormerGenerator(BrightBlobStub(), 96, max_size=64)


def test_tiny_random_mask2former_runs_on_a_non_square_image():
    torch.manual_seed(0)
    gen = Mask2FormerGenerator(build_mask2former("fovseg-tiny", 96, random_init=True), 64, max_proposals=8,
                               mask_threshold=0.5, min_area=0, max_size=107)
    props = gen([np.random.default_rng(0).integers(0, 255, (50, 120, 3), dtype=np.uint8)])[0]
    assert props.masks.shape[1:] == (50, 120) and len(props.masks) <= 8
    assert np.all(np.diff(props.scores) <= 0)
