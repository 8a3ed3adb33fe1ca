"""On-disk formats shared by the real benchmarks and the toy world.

COCO panoptic: PNG with RGB-encoded segment ids (id = R + 256 G + 256^2 B) + a json with
``segments_info``. Semantic: PNG (uint8, ignore 255) or 16-bit TIFF (ignore 65535).
All writers are atomic: they write a temporary file beside the target and rename it.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from pipeline.errors import DatasetError  # noqa: F401  (re-exported)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json(path: str | Path, hint: str = "") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing file {path}" + (f"; {hint}" if hint else ""))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid json ({exc}); re-create it" + (f": {hint}" if hint else "")) from None


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HxWx3; a missing, truncated or corrupt file raises DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing image {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {path} ({exc}); the file is truncated or corrupt: "
                           "re-download or re-prepare the dataset") from None


def write_image(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image.astype(np.uint8)).save(tmp, format="PNG" if Path(path).suffix == ".png" else "JPEG")


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Segment-id map (uint32) of a COCO-panoptic PNG."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing panoptic png {path}")
    try:
        with Image.open(path) as im:
            return rgb_to_id(np.asarray(im.convert("RGB")))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode panoptic png {path} ({exc})") from None


def write_panoptic_png(path: str | Path, id_map: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(id_to_rgb(id_map)).save(tmp, format="PNG")


def read_label_map(path: str | Path) -> np.ndarray:
    """A semantic label map: 8-bit PNG or 16-bit PNG/TIFF, returned as int64."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing label map {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode label map {path} ({exc})") from None
    if arr.ndim != 2:
        raise DatasetError(f"label map {path} has shape {arr.shape}; expected a single-channel image")
    return arr.astype(np.int64)


def write_label_map(path: str | Path, labels: np.ndarray, sixteen_bit: bool = False) -> None:
    """uint8 PNG (ignore 255) or, for vocabularies over 255 classes, uint16 TIFF (ignore 65535)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if sixteen_bit:
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="TIFF")
        else:
            if labels.max(initial=0) > 255:
                raise ValueError(f"{path}: labels exceed 255; write a 16-bit map")
            Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")


def bbox_of(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
