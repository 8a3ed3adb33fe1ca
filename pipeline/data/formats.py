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
from PIL import Image, ImageOps

from pipeline.errors import DatasetError  # noqa: F401  (re-exported)


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 minus the process umask (0644 typically)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, default_file_mode())  # mkstemp makes 0600; a shared dataset root needs the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """A metrics JSON, written atomically (a failed stage never leaves a half-written file); floats rounded to 6
    decimals, numpy/torch scalars made plain."""
    write_json(path, _jsonable(metrics))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    if hasattr(obj, "tolist"):  # a torch tensor or numpy array
        return _jsonable(obj.tolist())
    return obj


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


PIXEL_LIMIT_ENV = "FOVSEG_MAX_IMAGE_PIXELS"  # raise Pillow's decompression-bomb limit; 0 = no limit


def _apply_pixel_limit() -> None:
    """Honour $FOVSEG_MAX_IMAGE_PIXELS (Pillow refuses images over twice its limit, ~179 Mpx by default)."""
    raw = os.environ.get(PIXEL_LIMIT_ENV)
    if raw is None:
        return
    try:
        limit = int(raw)
    except ValueError:
        raise DatasetError(f"${PIXEL_LIMIT_ENV} must be a whole number of pixels (0 = no limit), got {raw!r}") from None
    Image.MAX_IMAGE_PIXELS = limit if limit > 0 else None


def _bomb_error(path: Path, exc: Exception) -> DatasetError:
    return DatasetError(f"image {path} is too large to open safely ({exc}); if the file is trusted, allow it with "
                        f"{PIXEL_LIMIT_ENV}=<pixels> (0 = no limit) or downscale it")


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8: 16/32-bit integer images are scaled from 0..65535 (not clipped); float images from 0..1."""
    if im.mode.startswith("I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        gray = np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode == "F":
        gray = np.clip(np.rint(np.asarray(im) * 255), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.array(im.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HxWx3, upright (EXIF orientation applied); a missing, truncated, corrupt or oversized file raises
    DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing image {path}")
    _apply_pixel_limit()
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb8(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {path} ({exc}): the file is truncated, corrupt or not an image "
                           "(a dataset's file: re-download or re-prepare the dataset)") from None


def write_image(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image.astype(np.uint8)).save(tmp, format="PNG" if Path(path).suffix == ".png" else "JPEG")


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Segment-id map (uint32) of a COCO-panoptic PNG."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing panoptic png {path}")
    _apply_pixel_limit()
    try:
        with Image.open(path) as im:
            return rgb_to_id(np.asarray(im.convert("RGB")))
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, exc) from None
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
    _apply_pixel_limit()
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path, exc) from None
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
