"""On-disk formats shared by the real benchmarks and the toy world.

COCO panoptic: PNG with RGB-encoded segment ids (id = R + 256 G + 256^2 B) + a json with
``segments_info``. Semantic: PNG (uint8, ignore 255) or 16-bit TIFF (ignore 65535).
All writers are atomic: they write a temporary file beside the target and rename it.
A file or folder that exists but cannot be read, entered or listed is reported as "permission denied: <path>"
(:func:`permission_guard`), never as missing, corrupt or empty.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import DatasetError, permission_message  # noqa: F401  (DatasetError re-exported)


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


@contextmanager
def permission_guard(path: str | Path | None = None) -> Iterator[None]:
    """Any PermissionError inside becomes one DatasetError naming the path it was about (else ``path``): a permission
    problem is never reported as a missing file, a corrupt one or an empty folder."""
    try:
        yield
    except PermissionError as exc:
        raise DatasetError(permission_message(exc.filename or path or "a dataset file")) from None


def require_file(path: Path, what: str = "file", hint: str = "") -> None:
    """Raise a DatasetError unless ``path`` is a file: ``missing <what> <path>; <hint>`` when it does not exist, a
    permission problem as such (os.stat, not Path.is_file, which may report it as absent)."""
    try:
        st = os.stat(path)
    except PermissionError:
        raise DatasetError(permission_message(path)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"missing {what} {path}" + (f"; {hint}" if hint else "")) from None
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{what} {path} is not a file" + (" but a folder" if stat.S_ISDIR(st.st_mode) else ""))


def list_files(folder: str | Path, suffixes: tuple[str, ...], recursive: bool = False) -> list[Path]:
    """The files in ``folder`` (and, ``recursive``, its sub-folders) ending in one of ``suffixes``, sorted; [] when
    it does not exist. Unlike Path.glob, which skips what it may not list, a permission problem raises."""
    folder = Path(folder)
    found: list[Path] = []
    with permission_guard(folder):
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for e in entries:
            if recursive and e.is_dir(follow_symlinks=False):
                found.extend(list_files(e.path, suffixes, recursive=True))
            elif e.name.endswith(suffixes) and e.is_file():
                found.append(Path(e.path))
    return sorted(found)


def read_json(path: str | Path, hint: str = "") -> Any:
    path = Path(path)
    require_file(path, "file", hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise DatasetError(permission_message(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid json ({exc}); re-create it" + (f": {hint}" if hint else "")) from None


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


PIXEL_LIMIT_ENV = "FOVSEG_MAX_IMAGE_PIXELS"  # raise Pillow's decompression-bomb limit; 0 = no limit


def _apply_pixel_limit() -> None:
    """Honour $FOVSEG_MAX_IMAGE_PIXELS (Pillow's ``Image.MAX_IMAGE_PIXELS``, ~89 Mpx by default)."""
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


@contextmanager
def pixel_limit_guard(path: str | Path) -> Iterator[None]:
    """Around ``Image.open(path)``: apply the pixel limit, and refuse any image whose header claims more pixels
    than it (Pillow's DecompressionBombWarning, above the limit, and DecompressionBombError, above twice the
    limit) with one DatasetError naming ``path``, before any pixel is decoded."""
    _apply_pixel_limit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(Path(path), exc) from None


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
    require_file(path, "image")
    with pixel_limit_guard(path):  # a bomb: DatasetError naming the file, not caught below
        try:
            with Image.open(path) as im:
                im.load()
                return _to_rgb8(ImageOps.exif_transpose(im))
        except PermissionError:
            raise DatasetError(permission_message(path)) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"cannot decode image {path} ({exc}): the file is truncated, corrupt or not an image "
                               "(a dataset's file: re-download or re-prepare the dataset)") from None


def write_image(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image.astype(np.uint8)).save(tmp, format="PNG" if Path(path).suffix == ".png" else "JPEG")


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Segment-id map (uint32) of a COCO-panoptic PNG."""
    path = Path(path)
    require_file(path, "panoptic png")
    with pixel_limit_guard(path):  # a bomb: DatasetError naming the file, not caught below
        try:
            with Image.open(path) as im:
                return rgb_to_id(np.asarray(im.convert("RGB")))
        except PermissionError:
            raise DatasetError(permission_message(path)) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"cannot decode panoptic png {path} ({exc})") from None


def write_panoptic_png(path: str | Path, id_map: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(id_to_rgb(id_map)).save(tmp, format="PNG")


def read_label_map(path: str | Path) -> np.ndarray:
    """A semantic label map: 8-bit PNG or 16-bit PNG/TIFF, returned as int64."""
    path = Path(path)
    require_file(path, "label map")
    with pixel_limit_guard(path):  # a bomb: DatasetError naming the file, not caught below
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except PermissionError:
            raise DatasetError(permission_message(path)) from None
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
