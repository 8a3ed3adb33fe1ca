"""Per-split store of class-agnostic proposals: RLE masks (pycocotools) + objectness scores.

Layout of a store directory::

    proposals.jsonl   one json object per image, appended as images are processed
    index.json        image_id -> byte offset in proposals.jsonl (written on close)
    meta.json         generator, thresholds, counts (written on close)

A store is written into ``<dir>.partial`` and renamed onto ``<dir>`` only when closed cleanly, so
a failed run never leaves a store that looks finished. Reading is lazy (seek to one line).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.data.formats import DatasetError, write_json


def encode_masks(masks: np.ndarray) -> list[dict]:
    """(N,H,W) bool -> list of COCO RLEs with str counts."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in rles]


def decode_masks(rles: list[dict], height: int, width: int) -> np.ndarray:
    if not rles:
        return np.zeros((0, height, width), bool)
    coded = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    return mask_utils.decode(coded).transpose(2, 0, 1).astype(bool)


class ProposalWriter:
    """Append proposals image by image; ``close()`` publishes the store atomically."""

    def __init__(self, directory: str | Path, meta: dict | None = None):
        self.final = Path(directory)
        self.partial = self.final.with_name(self.final.name + ".partial")
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self._fh = (self.partial / "proposals.jsonl").open("w")
        self._index: dict[str, int] = {}
        self._meta = dict(meta or {})
        self._n_masks = 0

    def add(self, image_id: str, masks: np.ndarray, scores: np.ndarray) -> None:
        if len(masks) != len(scores):
            raise ValueError(f"image {image_id}: {len(masks)} masks but {len(scores)} scores")
        if image_id in self._index:
            raise ValueError(f"image {image_id} written twice")
        h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
        record = {"image_id": image_id, "height": int(h), "width": int(w),
                  "scores": [round(float(s), 5) for s in scores], "rles": encode_masks(masks)}
        self._index[image_id] = self._fh.tell()
        self._fh.write(json.dumps(record) + "\n")
        self._n_masks += len(masks)

    def close(self) -> dict:
        self._fh.close()
        meta = {**self._meta, "images": len(self._index), "masks": self._n_masks}
        write_json(self.partial / "index.json", self._index, indent=None)
        write_json(self.partial / "meta.json", meta)
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        return meta

    def abort(self) -> None:
        self._fh.close()
        shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self) -> "ProposalWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ProposalStore:
    """Lazy reader: ``store[image_id] -> (masks (N,H,W) bool, scores (N,) float32)``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / "index.json"
        if not index.is_file():
            raise DatasetError(f"no finished proposal store at {self.directory} (missing index.json); "
                               "run `dvc repro proposals` (or `python -m stages.proposals`) first")
        self.index: dict[str, int] = json.loads(index.read_text())
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self._path = self.directory / "proposals.jsonl"

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def record(self, image_id: str) -> dict:
        if image_id not in self.index:
            raise KeyError(f"image {image_id!r} has no proposals in {self.directory}")
        with self._path.open() as fh:
            fh.seek(self.index[image_id])
            return json.loads(fh.readline())

    def __getitem__(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        r = self.record(image_id)
        return decode_masks(r["rles"], r["height"], r["width"]), np.asarray(r["scores"], np.float32)
