"""Download and preparation of the benchmarks (and generation of the toy world).

Fetching is resumable (HTTP Range on ``<file>.part``; the Content-Range of a 206 must start where the
part ends, a 416 must report the part's size, a body must match its Content-Length or, without one,
be confirmed complete by a range probe), verified and atomic (the ``.part`` is renamed only when
complete and verified). Verification: against the sha256 pinned in ``pipeline/checksums/datasets.json``
where one is published; otherwise trust on first use: the sha256 and size of each file are recorded
at its first download in ``<root>/.fovseg-downloads.lock.json`` and every later run checks them. The
download manifest says, per file, which of the two verified it. URLs are https wherever the host
serves it (sceneparsing.csail.mit.edu and host.robots.ox.ac.uk stay on http: not known to serve
https; for those the lock file is what protects every download after the first).
Extraction refuses absolute paths, ``..`` and links leaving the target, extracts into
``<dir>.partial``, then merges into an existing folder without deleting anything the archive did not
contain. Licence-gated datasets print what to fetch and verify what the user placed.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pipeline.data.coco_stuff import prepare_coco_stuff
from pipeline.data.formats import DatasetError, read_json, write_json, write_label_map
from pipeline.errors import DownloadError  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- fetching
LOCK_FILE = ".fovseg-downloads.lock.json"  # under the dataset root: sha256 of every file at its first download


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class DownloadLock:
    """Trust on first use: the sha256 and size of each downloaded file, recorded at its first download in
    ``<root>/.fovseg-downloads.lock.json`` and checked on every later run (a corrupted file on disk or a server
    that now serves different bytes is refused). Files with a published checksum are checked against it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files: dict[str, dict] = read_json(self.path).get("files", {}) if self.path.is_file() else {}

    def get(self, name: str) -> dict | None:
        return self.files.get(name)

    def record(self, name: str, sha256: str, size: int, url: str) -> None:
        self.files[name] = {"sha256": sha256, "size": size, "url": url}
        write_json(self.path, {"_comment": "sha256 of each download at its first fetch (trust on first use); "
                                           "delete an entry only if you know the file changed upstream",
                               "files": self.files})


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``bytes a-b/total`` or ``bytes */total``; None where absent or ``*``."""
    if not header or not header.strip().startswith("bytes"):
        return None, None
    spec, _, total = header.strip()[5:].strip().partition("/")
    first = spec.split("-")[0].strip()
    return (int(first) if first.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _range_probe_confirms(url: str, size: int, timeout: float) -> bool:
    """Ask for the bytes after ``size``: a 416 (nothing there) confirms a body of unknown length is complete."""
    req = urllib.request.Request(url, headers={"Range": f"bytes={size}-"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return False  # 206: more bytes exist; 200: the server ignores ranges and cannot confirm
    except urllib.error.HTTPError as exc:
        total = _content_range(exc.headers.get("Content-Range"))[1]
        return exc.code == 416 and total in (None, size)
    except (OSError, http.client.HTTPException):
        return False


def _download_part(url: str, part: Path, chunk: int, timeout: float, retry_stale: bool = True) -> None:
    """Fill ``part`` with the whole body of ``url`` (resuming it), or raise; sizes and ranges are checked."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    total: int | None = None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if have and resp.status == 206:
                first, total = _content_range(resp.headers.get("Content-Range"))
                if first is None:
                    raise DownloadError(f"{url}: the server answered 206 without a Content-Range; cannot tell where "
                                        f"its bytes belong. Delete {part} and re-run")
                if first == 0:  # the server restarted from the beginning: do so too
                    log.warning("%s: server restarted the download at byte 0; starting over", url)
                    have = 0
                elif first != have:
                    raise DownloadError(f"{url}: asked to resume at byte {have}, the server sent bytes from {first}; "
                                        f"delete {part} and re-run")
            elif have:  # 200: the server ignored Range, start over
                have = 0
            length = resp.headers.get("Content-Length")
            if total is None and length is not None:
                total = have + int(length)
            chunked = bool(getattr(resp, "chunked", False))
            with part.open("ab" if have else "wb") as fh:
                while block := resp.read(chunk):
                    fh.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            server_size = _content_range(exc.headers.get("Content-Range"))[1]
            if server_size == have:
                return  # the part already holds the whole file
            if not retry_stale:
                raise DownloadError(f"{url}: HTTP 416 for {part} ({have} bytes, server size {server_size}); delete "
                                    "it and re-run") from None
            log.warning("%s: %s holds %d bytes but the server's file has %s; downloading it again", url, part, have,
                        server_size if server_size is not None else "an unknown size")
            part.unlink()
            return _download_part(url, part, chunk, timeout, retry_stale=False)
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL or your access to it "
                            f"(partial data kept in {part} if any)") from None
    except (OSError, http.client.HTTPException) as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC:
            free = shutil.disk_usage(part.parent).free / 2**30
            raise DownloadError(f"disk full while writing {part} ({free:.1f} GiB free); free space or set "
                                "$DETECTRON2_DATASETS to a larger disk, then re-run to resume") from None
        raise DownloadError(f"{url}: connection failed ({exc}); re-run to resume from {part} "
                            f"({part.stat().st_size if part.exists() else 0} bytes so far)") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: connection dropped after {size} of {total} bytes; re-run to resume from {part}")
    if total is None and not chunked and not _range_probe_confirms(url, size, timeout):
        raise DownloadError(f"{url}: the server declared no size and the connection ended after {size} bytes; "
                            f"cannot confirm the file is complete: re-run to resume from {part}")


def _verify(path: Path, name: str, url: str, sha256: str | None, lock: DownloadLock | None,
            downloaded: bool) -> str:
    """Check ``path`` against the published checksum, else the lock file (recording it on first use).
    Returns how it was verified; a freshly downloaded file that fails is removed."""
    got = sha256_of(path)
    if sha256:
        if got != sha256:
            if downloaded:
                path.unlink()
            raise DownloadError(f"{url}: checksum mismatch for {name} (got {got}, expected {sha256}); "
                                + ("the corrupt file was removed, re-run to download it again" if downloaded else
                                   f"delete {path} and re-run to download it again"))
        return "published checksum"
    if lock is None:
        return "unverified"
    entry = lock.get(name)
    if entry is None:
        lock.record(name, got, path.stat().st_size, url)
        return "trust on first use: recorded now"
    if entry["sha256"] != got:
        if downloaded:
            path.unlink()
        raise DownloadError(
            f"{path if not downloaded else url}: {name} does not match the sha256 recorded in {lock.path} at its first "
            f"download (recorded {entry['sha256']}, got {got}). "
            + ("The server now serves different bytes: check the source, and remove the entry from the lock file "
               "only if the change is expected" if downloaded else
               f"The file on disk changed or is corrupt: delete {path} and re-run to download it again"))
    return "trust on first use: matches the recorded sha256"


def fetch_verified(url: str, dest: Path, sha256: str | None = None, lock: DownloadLock | None = None,
                   chunk: int = 1 << 16, timeout: float = 30) -> tuple[Path, str]:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check its size and checksum, then rename.
    Returns the path and how it was verified (published checksum, trust on first use, unverified)."""
    dest = Path(dest)
    if dest.is_file():
        try:
            return dest, _verify(dest, dest.name, url, sha256, lock, downloaded=False)
        except DownloadError as exc:
            if not sha256:
                raise
            log.warning("%s; downloading it again", exc)  # the published checksum says which bytes are right
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download_part(url, part, chunk, timeout)
    how = _verify(part, dest.name, url, sha256, lock, downloaded=True)
    os.replace(part, dest)
    return dest, how


def fetch(url: str, dest: Path, sha256: str | None = None, chunk: int = 1 << 16, timeout: float = 30,
          lock: DownloadLock | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part``; verify, then rename."""
    return fetch_verified(url, dest, sha256, lock, chunk, timeout)[0]


# ----------------------------------------------------------------------------- extraction
def _inside(target: Path, name: str) -> bool:
    resolved = (target / name).resolve()
    return resolved == target.resolve() or target.resolve() in resolved.parents


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a zip/tar into ``target``; refuse absolute paths, ``..`` and links that leave it.

    Extraction goes to ``target.partial`` first and is renamed when complete."""
    archive, target = Path(archive), Path(target)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for info in members:
                    if os.path.isabs(info.filename) or not _inside(partial, info.filename):
                        raise DownloadError(f"{archive}: refusing unsafe member {info.filename!r}")
                for info in members:  # validated above; extracted one by one (zip has no extraction filter)
                    zf.extract(info, partial)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    if os.path.isabs(m.name) or not _inside(partial, m.name):
                        raise DownloadError(f"{archive}: refusing unsafe member {m.name!r}")
                    if (m.issym() or m.islnk()) and not _inside(partial / os.path.dirname(m.name), m.linkname):
                        raise DownloadError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r} leaving the target")
                tf.extractall(partial, filter="data")
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive; delete it and re-run")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        try:
            _merge_into(partial, target, archive)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    else:
        os.replace(partial, target)
    return target


def _merge_into(src: Path, dst: Path, archive: Path) -> None:
    """Move the extracted tree ``src`` into the existing ``dst``: folders merge, files the archive holds replace
    their old copy, everything else in ``dst`` (the user's files) stays."""
    for child in sorted(src.iterdir()):
        out = dst / child.name
        if child.is_dir() and not child.is_symlink():
            if out.is_dir() and not out.is_symlink():
                _merge_into(child, out, archive)
                continue
            if out.exists() or out.is_symlink():
                raise DownloadError(f"{archive}: {out} is a file but the archive has a folder there; move it away "
                                    "and re-run")
        elif out.is_dir() and not out.is_symlink():
            raise DownloadError(f"{archive}: {out} is a folder but the archive has a file there; move it away and "
                                "re-run (it is never deleted)")
        os.replace(child, out)


# ----------------------------------------------------------------------------- dataset registry
@dataclass(frozen=True)
class Source:
    url: str
    file: str  # archive name under <root>/downloads
    extract_to: str = ""  # relative to root


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sources: tuple[Source, ...] = ()
    manual: str = ""  # instructions when a licence click or login is needed
    expected: tuple[str, ...] = ()  # paths that must exist (relative to root) after fetch/manual placement
    prepare: Callable[[Path], dict] | None = field(default=None, compare=False)


def pinned_checksums() -> dict[str, str | None]:
    path = resources.files("pipeline") / "checksums" / "datasets.json"
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- preparation steps
def coco_semantic_from_panoptic(root: Path) -> dict:
    """coco/panoptic_semseg_{split}2017/*.png: contiguous 0..132 labels, 255 unlabeled."""
    from pipeline.data.formats import read_panoptic_png
    from pipeline.data.vocab import load_packaged_vocabulary

    id_to_label = load_packaged_vocabulary("coco_panoptic").id_to_label()
    n = 0
    for split in ("train", "val"):
        if not (root / f"coco/annotations/panoptic_{split}2017.json").is_file():
            continue
        ann = read_json(root / f"coco/annotations/panoptic_{split}2017.json")
        out_dir = root / f"coco/panoptic_semseg_{split}2017"
        for a in ann["annotations"]:
            out = out_dir / a["file_name"]
            if out.exists():
                continue
            ids = read_panoptic_png(root / f"coco/panoptic_{split}2017" / a["file_name"])
            sem = np.full(ids.shape, 255, np.uint8)
            for s in a["segments_info"]:
                sem[ids == s["id"]] = id_to_label[s["category_id"]]
            write_label_map(out, sem)
            n += 1
    return {"coco_semantic_maps": n}


def _coco_unpack_panoptic(root: Path) -> None:
    ann_dir = root / "coco" / "annotations"
    for split in ("train", "val"):
        inner = ann_dir / f"panoptic_{split}2017.zip"
        if inner.exists() and not (root / "coco" / f"panoptic_{split}2017").is_dir():
            safe_extract(inner, root / "coco")


def prepare_coco(root: Path) -> dict:
    _coco_unpack_panoptic(root)
    return coco_semantic_from_panoptic(root)


def ade20k_semantic(root: Path) -> dict:
    """ADEChallengeData2016/annotations_detectron2: labels - 1, background 0 -> 255 (as detectron2's script)."""
    n = 0
    for src_split, dst_split in (("training", "training"), ("validation", "validation")):
        src = root / "ADEChallengeData2016/annotations" / src_split
        for p in sorted(src.glob("*.png")):
            out = root / "ADEChallengeData2016/annotations_detectron2" / dst_split / p.name
            if out.exists():
                continue
            lab = np.asarray(Image.open(p)).astype(np.int64) - 1
            write_label_map(out, np.where(lab < 0, 255, lab))
            n += 1
    return {"ade20k_semantic_maps": n}


def ade20k_panoptic(root: Path) -> dict:
    """ADE20K-150 panoptic from the instance annotations (R = class 1..150, G = instance id) for things
    and the semantic annotation for stuff, as Mask2Former's prepare_ade20k_pan_seg.py does."""
    from pipeline.data.formats import bbox_of, write_panoptic_png
    from pipeline.data.vocab import load_packaged_vocabulary

    vocab = load_packaged_vocabulary("ade20k_150")
    thing = {c.id for c in vocab.classes if c.isthing}
    counts = {}
    for split, name in (("training", "train"), ("validation", "val")):
        images, anns = [], []
        for p in sorted((root / "ADEChallengeData2016/annotations" / split).glob("*.png")):
            sem = np.asarray(Image.open(p)).astype(np.int64) - 1
            inst_path = root / "ADEChallengeData2016/annotations_instance" / split / p.name
            inst = np.asarray(Image.open(inst_path).convert("RGB")).astype(np.int64) if inst_path.exists() else None
            ids = np.zeros(sem.shape, np.uint32)
            segs, next_id = [], 1
            for c in np.unique(sem):
                if c < 0 or c in thing:
                    continue
                m = sem == c
                ids[m] = next_id
                segs.append({"id": next_id, "category_id": int(c), "iscrowd": 0, "area": int(m.sum()),
                             "bbox": bbox_of(m)})
                next_id += 1
            if inst is not None:
                for cls, ins in {(int(a), int(b)) for a, b in zip(inst[..., 0].ravel(), inst[..., 1].ravel())}:
                    c = cls - 1
                    if c < 0 or c not in thing or ins == 0:
                        continue
                    m = (inst[..., 0] == cls) & (inst[..., 1] == ins)
                    ids[m] = next_id
                    segs.append({"id": next_id, "category_id": c, "iscrowd": 0, "area": int(m.sum()),
                                 "bbox": bbox_of(m)})
                    next_id += 1
            present = set(np.unique(ids).tolist())
            segs = [s for s in segs if s["id"] in present]
            write_panoptic_png(root / f"ADEChallengeData2016/ade20k_panoptic_{name}" / p.name, ids)
            h, w = sem.shape
            images.append({"id": p.stem, "file_name": p.stem + ".jpg", "height": h, "width": w})
            anns.append({"image_id": p.stem, "file_name": p.name, "segments_info": segs})
        cats = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in vocab.classes]
        write_json(root / f"ADEChallengeData2016/ade20k_panoptic_{name}.json",
                   {"images": images, "annotations": anns, "categories": cats}, indent=None)
        counts[f"ade20k_panoptic_{name}"] = len(anns)
    return counts


def prepare_ade20k(root: Path) -> dict:
    return {**ade20k_semantic(root), **ade20k_panoptic(root)}


def _resize_short(img: Image.Image, short: int, resample) -> Image.Image:
    w, h = img.size
    s = short / min(w, h)
    return img.resize((round(w * s), round(h * s)), resample) if s < 1 else img


def prepare_ade20k_full(root: Path) -> dict:
    """ADE20K-847: *_seg.png class = R/10*256 + G (ADE20K toolkit) mapped to train ids via the vocabulary's
    ids, 65535 elsewhere; images and labels resized to short side 512; labels written as uint16 TIFF."""

    records = json.loads((resources.files("pipeline") / "vocab" / "ade20k_847.json").read_text())
    lut = np.full(max(r["id"] for r in records) + 1, 65535, np.int64)  # ADE20K-full object id -> train id
    for r in records:
        lut[r["id"]] = r["trainId"]
    base = root / "ADE20K_2021_17_01"
    n = 0
    for split in ("training", "validation"):
        for seg in sorted((base / "images/ADE" / split).rglob("*_seg.png")):
            stem = seg.name[: -len("_seg.png")]
            out = base / "annotations_detectron2" / split / f"{stem}.tif"
            if out.exists():
                continue
            rgb = np.asarray(Image.open(seg).convert("RGB")).astype(np.int64)
            cls = rgb[..., 0] // 10 * 256 + rgb[..., 1]
            label = Image.fromarray(np.where(cls < len(lut), lut[np.minimum(cls, len(lut) - 1)], 65535)
                                    .astype(np.uint16))
            img = Image.open(seg.with_name(f"{stem}.jpg")).convert("RGB")
            img = _resize_short(img, 512, Image.BILINEAR)
            label = label.resize(img.size, Image.NEAREST)
            (base / "images_detectron2" / split).mkdir(parents=True, exist_ok=True)
            img.save(base / "images_detectron2" / split / f"{stem}.jpg", quality=95)
            write_label_map(out, np.asarray(label), sixteen_bit=True)
            n += 1
    return {"ade20k_847_maps": n}


def prepare_pascal_context(root: Path) -> dict:
    """PC-459 (uint16 TIFF, label-1, 65535 ignore) and PC-59 (uint8 PNG via class names, 255 ignore) from the
    459-class .mat files; images copied from VOC2010 for the val list."""
    from scipy.io import loadmat

    from pipeline.data.vocab import load_packaged_vocabulary

    v459, v59 = load_packaged_vocabulary("pascal_ctx_459"), load_packaged_vocabulary("pascal_ctx_59")
    name59 = {n: i for i, n in enumerate(v59.names)}
    lut59 = np.full(65536, 255, np.int64)
    for i, n in enumerate(v459.names):
        if n in name59:
            lut59[i] = name59[n]
    base, n = root / "pascal_ctx_d2", 0
    for split, list_name in (("training", "train.txt"), ("validation", "val.txt")):
        ids_file = root / "VOCdevkit/VOC2010/pascal_context" / list_name
        if not ids_file.exists():
            continue
        for stem in ids_file.read_text().split():
            mat = root / "VOCdevkit/VOC2010/pascal_context/trainval" / f"{stem}.mat"
            lab = loadmat(mat)["LabelMap"].astype(np.int64) - 1
            lab459 = np.where(lab < 0, 65535, lab)
            write_label_map(base / "annotations_ctx459" / split / f"{stem}.tif", lab459, sixteen_bit=True)
            write_label_map(base / "annotations_ctx59" / split / f"{stem}.png",
                            np.where(lab459 == 65535, 255, lut59[np.clip(lab459, 0, 65535)]))
            img_dst = base / "images" / split / f"{stem}.jpg"
            img_dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "VOCdevkit/VOC2010/JPEGImages" / f"{stem}.jpg", img_dst)
            n += 1
    return {"pascal_context_maps": n}


DATASETS: dict[str, DatasetSpec] = {
    "coco": DatasetSpec("coco", (
        Source("https://images.cocodataset.org/zips/train2017.zip", "coco_train2017.zip", "coco"),
        Source("https://images.cocodataset.org/zips/val2017.zip", "coco_val2017.zip", "coco"),
        Source("https://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip",
               "coco_panoptic_annotations_trainval2017.zip", "coco"),
    ), expected=("coco/val2017", "coco/annotations/panoptic_val2017.json"), prepare=prepare_coco),
    "coco_stuff": DatasetSpec("coco_stuff", (  # Table III: COCO images + COCO-Stuff-164k stuffthingmaps
        Source("https://images.cocodataset.org/zips/train2017.zip", "coco_train2017.zip", "coco"),
        Source("https://images.cocodataset.org/zips/val2017.zip", "coco_val2017.zip", "coco"),
        Source("https://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
               "stuffthingmaps_trainval2017.zip", "coco/stuffthingmaps"),
    ), expected=("coco/val2017", "coco/stuffthingmaps/val2017"), prepare=prepare_coco_stuff),
    "ade20k": DatasetSpec("ade20k", (
        Source("https://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip", "ADEChallengeData2016.zip"),
        Source("http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar",
               "ade20k_annotations_instance.tar", "ADEChallengeData2016"),
    ), expected=("ADEChallengeData2016/images/validation",), prepare=prepare_ade20k),
    "ade20k_full": DatasetSpec("ade20k_full", manual=(
        "ADE20K-full needs a free account: register at https://groups.csail.mit.edu/vision/datasets/ADE20K/, "
        "download ADE20K_2021_17_01.zip and unzip it so that <root>/ADE20K_2021_17_01/images/ADE/validation "
        "exists, then re-run this stage to convert it."),
        expected=("ADE20K_2021_17_01/images/ADE/validation",), prepare=prepare_ade20k_full),
    "pascal_context": DatasetSpec("pascal_context", (
        Source("http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar", "VOCtrainval_2010.tar"),
    ), manual=(
        "Pascal Context's 459-class annotations are distributed by the dataset authors "
        "(https://cs.stanford.edu/~roozbeh/pascal-context/): accept their terms, download trainval.tar.gz and "
        "extract it to <root>/VOCdevkit/VOC2010/pascal_context/trainval/*.mat, with train.txt and val.txt "
        "beside it, then re-run this stage."),
        expected=("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/pascal_context/trainval"),
        prepare=prepare_pascal_context),
    "mapillary_vistas": DatasetSpec("mapillary_vistas", manual=(
        "Mapillary Vistas v1.2 needs a login: request it at https://www.mapillary.com/dataset/vistas, unzip it to "
        "<root>/mapillary_vistas so that validation/images, validation/panoptic/panoptic_2018.json and "
        "validation/labels exist, then re-run this stage to verify it."),
        expected=("mapillary_vistas/validation/images", "mapillary_vistas/validation/panoptic/panoptic_2018.json",
                  "mapillary_vistas/validation/labels")),
}


def fetch_dataset(spec: DatasetSpec, root: Path, checksums: dict[str, str | None]) -> dict:
    lock = DownloadLock(root / LOCK_FILE)
    files: dict[str, dict] = {}
    for src in spec.sources:
        archive, how = fetch_verified(src.url, root / "downloads" / src.file, checksums.get(src.file), lock)
        files[src.file] = {"url": src.url, "verified": how}
        marker = root / "downloads" / f".{src.file}.extracted"
        if not marker.exists():
            safe_extract(archive, root / src.extract_to if src.extract_to else root)
            marker.write_text(sha256_of(archive))
    missing = [p for p in spec.expected if not (root / p).exists()]
    if missing:
        raise DatasetError(f"{spec.name}: missing {[str(root / p) for p in missing]}. {spec.manual}".strip())
    result = spec.prepare(root) if spec.prepare else {}
    unpinned = [s.file for s in spec.sources if not checksums.get(s.file)]
    return {"dataset": spec.name, "verified_checksums": not unpinned, "unpinned": unpinned, "files": files,
            "lock_file": str(root / LOCK_FILE), **result}


def prepare_datasets(names: list[str], root: Path, toy_params, caption_size: int) -> dict:
    """Fetch/prepare each named dataset under ``root``; 'toy' generates the shapes world."""
    from pipeline.data.toy import generate_toy_world

    out: dict = {"datasets": {}}
    checksums = pinned_checksums()
    for name in names:
        if name == "toy":
            out["datasets"]["toy"] = manifest = generate_toy_world(
                root, seed=toy_params.seed, image_size=toy_params.image_size, n_train=toy_params.n_train,
                n_val=toy_params.n_val, n_open=toy_params.n_open, n_captions=toy_params.n_captions,
                caption_size=caption_size, max_things=toy_params.max_things)
            log.info("toy world generated in %.1f s", manifest.pop("seconds"))
        elif name in DATASETS:
            out["datasets"][name] = fetch_dataset(DATASETS[name], root, checksums)
        else:
            raise DatasetError(f"unknown dataset {name!r}; valid: toy, {', '.join(DATASETS)}")
    return out
