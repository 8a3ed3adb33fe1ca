"""Augmentation applied identically to an image, its ground truth and its proposals.

Large-scale jitter (LSJ): resize by a random factor of the crop size in [min_scale, max_scale],
then a fixed-size crop, padding where the image is smaller (image 0, segment ids 0 = void,
proposals 0). Test time: short side ``short``, long side at most ``max_size``.

torchvision is imported by the training transforms only (about 1 s with the parts of torch it pulls in), so
the stages that only need :func:`eval_resize_shape` (proposals) start without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from torchvision.transforms import v2


def lsj_transform(crop_size: int, min_scale: float, max_scale: float) -> v2.Transform:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    fill = {tv_tensors.Image: 0, tv_tensors.Mask: 0, "others": 0}
    return v2.Compose([
        v2.ScaleJitter((crop_size, crop_size), scale_range=(min_scale, max_scale), antialias=True),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill),
        v2.RandomHorizontalFlip(),
    ])


def apply_joint(transform: v2.Transform, image: np.ndarray, id_map: np.ndarray, proposals: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply one random draw of ``transform`` to image (HxWx3 uint8), id map (HxW) and proposals (NxHxW)."""
    from torchvision import tv_tensors

    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    ids = tv_tensors.Mask(torch.from_numpy(id_map.astype(np.int64))[None])
    props = tv_tensors.Mask(torch.from_numpy(proposals.astype(np.uint8)))
    out_img, out_ids, out_props = transform(img, ids, props)
    return out_img.as_subclass(torch.Tensor), out_ids[0].as_subclass(torch.Tensor), \
        out_props.as_subclass(torch.Tensor).bool()


def eval_resize_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) of the test-time resize (detectron2's ResizeShortestEdge)."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(round(height * scale)), int(round(width * scale))

