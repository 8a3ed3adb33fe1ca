"""Geometry shared by an image, its ground truth and its proposals.

Training: large-scale jitter (LSJ; detectron2's ResizeScale + FixedSizeCrop, torchvision's ScaleJitter +
RandomCrop): the image is scaled by ``s * min(crop / H, crop / W)`` with s uniform in [min_scale, max_scale], a
``crop x crop`` window is cut at a uniform offset (padded at the bottom/right where the scaled image is
smaller: image 0, segment ids 0 = void, masks off), and flipped horizontally with probability 1/2. The window
is drawn once (:func:`draw_lsj`) as a rectangle of the *source* image, so every output is one resampling of the
source: the image straight to the classifier's R x R input (antialiased bilinear), label maps and masks straight
to the classifier's mask grid (nearest, at cell centres; :func:`sample_labels`). Test time: short side ``short``,
long side at most ``max_size`` (:func:`eval_resize_shape`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Window:
    """The source rectangle ``[x0, x0 + side) x [y0, y0 + side)`` (source pixels; it may reach past the image)
    that becomes the square output, mirrored when ``flip``."""

    x0: float
    y0: float
    side: float
    flip: bool


def draw_lsj(height: int, width: int, crop: int, min_scale: float, max_scale: float,
             rng: np.random.Generator) -> Window:
    """One LSJ draw for a ``height x width`` source image (see the module docstring)."""
    scale = rng.uniform(min_scale, max_scale) * min(crop / height, crop / width)
    scaled_h, scaled_w = round(height * scale), round(width * scale)
    oy = int(rng.integers(0, max(scaled_h - crop, 0) + 1))
    ox = int(rng.integers(0, max(scaled_w - crop, 0) + 1))
    flip = bool(rng.random() < 0.5)
    return Window(ox / scale, oy / scale, crop / scale, flip)


def crop_image(image: np.ndarray, window: Window, size: int) -> np.ndarray:
    """The window of an HxWx3 uint8 ``image`` resampled to ``size x size`` (antialiased bilinear; 0 outside)."""
    h, w = image.shape[:2]
    x1, y1 = min(window.x0 + window.side, w), min(window.y0 + window.side, h)
    per_px = size / window.side
    out_w = min(size, max(1, round((x1 - window.x0) * per_px)))
    out_h = min(size, max(1, round((y1 - window.y0) * per_px)))
    part = Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR, box=(window.x0, window.y0, x1, y1))
    out = np.zeros((size, size, 3), np.uint8)
    out[:out_h, :out_w] = np.asarray(part)
    return np.ascontiguousarray(out[:, ::-1]) if window.flip else out


def _axis(start: float, side: float, n_out: int, src_size: int, full_size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = start + (np.arange(n_out) + 0.5) * side / n_out  # in full-resolution source pixels
    valid = centres < full_size
    idx = np.clip((centres * src_size / full_size).astype(np.int64), 0, src_size - 1)
    return idx, valid


def sample_labels(labels: np.ndarray, window: Window, grid: int, full_hw: tuple[int, int]) -> np.ndarray:
    """``labels`` (..., h, w): any integer or boolean maps (segment ids, masks) covering a ``full_hw`` source
    image, possibly at a lower resolution, sampled at the centres of a ``grid x grid`` output (nearest neighbour);
    cells outside the image are 0 / False."""
    h, w = labels.shape[-2:]
    ys, vy = _axis(window.y0, window.side, grid, h, full_hw[0])
    xs, vx = _axis(window.x0, window.side, grid, w, full_hw[1])
    if window.flip:
        xs, vx = xs[::-1], vx[::-1]
    out = labels[..., ys[:, None], xs[None, :]]
    if not (vy.all() and vx.all()):
        out = out * (vy[:, None] & vx[None, :])
    return out


def eval_resize_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) of the test-time resize (detectron2's ResizeShortestEdge)."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(round(height * scale)), int(round(width * scale))
