"""Lazy loaders: a benchmark split as an indexable dataset of :class:`Sample`.

Images and ground truth are read only when an item is requested. Inconsistent ground truth
(segment ids in the PNG missing from the json, or the reverse) raises :class:`DatasetError`
naming the file; :func:`iter_samples` can instead skip such images, warn, and count them.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.data.formats import DatasetError, read_image, read_json, read_label_map, read_panoptic_png
from pipeline.data.registry import Benchmark, benchmark_vocabulary, dataset_root
from pipeline.data.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """A ground-truth panoptic segment; ``label`` is the contiguous vocabulary index."""

    id: int
    category_id: int
    label: int
    iscrowd: bool
    isthing: bool


@dataclass
class Sample:
    image_id: str
    file_name: str
    image: np.ndarray  # HxWx3 uint8
    id_map: np.ndarray | None = None  # HxW segment ids (panoptic); 0 = void
    segments: list[Segment] = field(default_factory=list)
    semantic: np.ndarray | None = None  # HxW contiguous labels, ``ignore_label`` where unlabeled
    ignore_label: int = 255

    def segment_masks(self, include_crowd: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(N,H,W) bool masks and (N,) labels of the panoptic segments."""
        segs = [s for s in self.segments if include_crowd or not s.iscrowd]
        if self.id_map is None or not segs:
            h, w = self.image.shape[:2]
            return np.zeros((0, h, w), bool), np.zeros((0,), np.int64)
        masks = np.stack([self.id_map == s.id for s in segs])
        return masks, np.array([s.label for s in segs], np.int64)


def semantic_from_panoptic(id_map: np.ndarray, segments: list[Segment], ignore_label: int) -> np.ndarray:
    sem = np.full(id_map.shape, ignore_label, np.int64)
    for s in segments:
        sem[id_map == s.id] = s.label
    return sem


def _require(cond: bool, path: Path, where: str, msg: str) -> None:
    if not cond:
        raise DatasetError(f"{path}: {where} {msg}; the annotation file is malformed: re-download or re-prepare "
                           "the dataset")


def validate_panoptic_json(ann: object, path: Path) -> None:
    """A COCO-panoptic json: an object whose ``annotations`` list holds ``image_id``, ``file_name`` and
    ``segments_info`` (each segment with ``id`` and ``category_id``); DatasetError names the file and field."""
    _require(isinstance(ann, dict), path, "top level:", f"expected a json object, got a {type(ann).__name__}")
    _require(isinstance(ann.get("annotations", []), list), path, "annotations:", "expected a list")
    _require(isinstance(ann.get("images", []), list), path, "images:", "expected a list")
    for i, im in enumerate(ann.get("images", [])):
        _require(isinstance(im, dict) and "id" in im, path, f"images[{i}].id", "is missing")
    for i, a in enumerate(ann.get("annotations", [])):
        _require(isinstance(a, dict), path, f"annotations[{i}]:", f"expected an object, got {type(a).__name__}")
        for key in ("image_id", "file_name", "segments_info"):
            _require(key in a, path, f"annotations[{i}].{key}", "is missing")
        _require(isinstance(a["segments_info"], list), path, f"annotations[{i}].segments_info", "is not a list")
        for j, s in enumerate(a["segments_info"]):
            for key in ("id", "category_id"):
                _require(isinstance(s, dict) and key in s, path, f"annotations[{i}].segments_info[{j}].{key}",
                         "is missing")
                _require(isinstance(s[key], int) and not isinstance(s[key], bool), path,
                         f"annotations[{i}].segments_info[{j}].{key}", f"is {s[key]!r}, not an integer")


def check_images_evaluated(benchmark: str, n_evaluated: int, stats: Counter) -> None:
    """Zero evaluated images is an error (not PQ 0.0 with exit 0): every image was skipped or none exist."""
    if n_evaluated == 0:
        raise DatasetError(f"no image of {benchmark} could be evaluated ({stats.get('skipped', 0)} skipped as "
                           "unreadable, see the warnings above); check the dataset (re-download or re-prepare it) "
                           "and evaluate.max_images")


class BenchmarkDataset:
    """Indexable, lazy view of one benchmark split under a dataset root."""

    def __init__(self, bench: Benchmark, root: str | Path | None = None, vocab: Vocabulary | None = None):
        self.bench = bench
        self.root = dataset_root(root)
        self.vocab = vocab or benchmark_vocabulary(bench)
        self._id_to_label = self.vocab.id_to_label()
        self._thing = {c.id: c.isthing for c in self.vocab.classes}
        image_dir = self.root / bench.image_dir
        if bench.task == "panoptic":
            json_path = self.root / bench.panoptic_json
            ann = read_json(json_path, hint=f"fetch or prepare it with `{bench.fetch_command}`")
            validate_panoptic_json(ann, json_path)
            self._annotations = sorted(ann.get("annotations", []), key=lambda a: str(a["image_id"]))
            images = {str(im["id"]): im for im in ann.get("images", [])}
            self._files = [images.get(str(a["image_id"]), {}).get("file_name") or
                           Path(a["file_name"]).with_suffix(bench.image_ext).name for a in self._annotations]
        else:
            if not image_dir.is_dir():
                raise DatasetError(f"missing image folder {image_dir}; fetch or prepare it with "
                                   f"`{bench.fetch_command}`")
            self._annotations = []
            self._files = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".png", ".jpeg"))
        self.image_dir = image_dir

    def __len__(self) -> int:
        return len(self._files)

    def image_ids(self) -> list[str]:
        if self._annotations:
            return [str(a["image_id"]) for a in self._annotations]
        return [Path(f).stem for f in self._files]

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    def training_sample(self, index: int) -> Sample:
        """What training reads: the image and its panoptic segments, without the semantic map (the loss
        never uses it); semantic-only benchmarks carry their label map (turned into segments by
        :func:`pipeline.data.semantic.with_class_segments`)."""
        return self.sample(index, semantic=self.bench.task != "panoptic")

    def sample(self, index: int, semantic: bool = True) -> Sample:
        """Image ``index`` with its ground truth; ``semantic=False`` skips the semantic map of a panoptic one."""
        file_name = self._files[index]
        image = read_image(self.image_dir / file_name)
        ignore = self.bench.ignore_label
        if self.bench.task == "panoptic":
            ann = self._annotations[index]
            png = self.root / self.bench.panoptic_dir / ann["file_name"]
            id_map = read_panoptic_png(png)
            segments = self._segments(ann, id_map, png)
            if id_map.shape != image.shape[:2]:
                raise DatasetError(f"{png}: size {id_map.shape} differs from its image {image.shape[:2]}")
            if not semantic:
                sem = None
            elif self.bench.semantic_source == "labels":
                sem = self._label_map(file_name, image.shape[:2])
            else:
                sem = semantic_from_panoptic(id_map, segments, ignore)
            return Sample(str(ann["image_id"]), file_name, image, id_map, segments, sem, ignore)
        labels = self._label_map(file_name, image.shape[:2])
        return Sample(Path(file_name).stem, file_name, image, semantic=labels, ignore_label=ignore)

    def _label_map(self, file_name: str, shape: tuple[int, int]) -> np.ndarray:
        """The image's label map in ``semantic_dir``: contiguous labels or the ignore label, its size."""
        label_path = self.root / self.bench.semantic_dir / (Path(file_name).stem + self.bench.semantic_ext)
        if not label_path.is_file():
            raise DatasetError(f"missing label map {label_path} ({self.bench.name} reads its mIoU ground truth "
                               f"from {self.bench.semantic_dir}); fetch or prepare it with "
                               f"`{self.bench.fetch_command}`")
        labels = read_label_map(label_path)
        if labels.shape != shape:
            raise DatasetError(f"{label_path}: size {labels.shape} differs from its image {shape}")
        ignore = self.bench.ignore_label
        bad = (labels != ignore) & ((labels < 0) | (labels >= len(self.vocab)))
        if bad.any():
            raise DatasetError(f"{label_path}: labels {sorted(set(labels[bad].tolist()))[:5]} are outside the "
                               f"{len(self.vocab)}-class vocabulary and not the ignore label {ignore}")
        return labels

    def _segments(self, ann: dict, id_map: np.ndarray, png: Path) -> list[Segment]:
        segments = []
        for s in ann.get("segments_info", []):
            cid = int(s["category_id"])
            if cid not in self._id_to_label:
                raise DatasetError(f"{png}: segment {s['id']} has category_id {cid}, which is not in the "
                                   f"{self.vocab.name} vocabulary")
            segments.append(Segment(int(s["id"]), cid, self._id_to_label[cid], bool(s.get("iscrowd", 0)),
                                    self._thing[cid]))
        in_png = set(np.unique(id_map).tolist()) - {0}
        in_json = {s.id for s in segments}
        if in_png - in_json:
            raise DatasetError(f"{png}: segment ids {sorted(in_png - in_json)[:5]} are in the PNG but not in the "
                               "json's segments_info; the annotation is inconsistent (re-prepare the dataset)")
        if in_json - in_png:
            raise DatasetError(f"{png}: segment ids {sorted(in_json - in_png)[:5]} are in the json but absent from "
                               "the PNG; the annotation is inconsistent (re-prepare the dataset)")
        return segments


def iter_samples(ds: BenchmarkDataset, limit: int = 0, strict: bool = False,
                 stats: Counter | None = None, indices: list[int] | None = None) -> Iterator[Sample]:
    """Iterate lazily over ``indices`` (default: all, or the first ``limit``). With ``strict=False`` an
    unreadable image is skipped with a warning and counted in ``stats['skipped']``; images without segments are
    yielded and counted in ``stats['empty']``."""
    stats = stats if stats is not None else Counter()
    if indices is None:
        indices = list(range(len(ds) if limit <= 0 else min(limit, len(ds))))
    for i in indices:
        try:
            sample = ds[i]
        except DatasetError as exc:
            if strict:
                raise
            log.warning("skipping: %s", exc)
            stats["skipped"] += 1
            continue
        if sample.id_map is not None and not sample.segments:
            stats["empty"] += 1
        stats["read"] += 1
        yield sample
