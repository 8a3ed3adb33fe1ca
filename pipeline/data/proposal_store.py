"""Per-split store of class-agnostic proposals: RLE masks (pycocotools) + objectness scores.

Layout of a store directory::

    shard-00000.jsonl ...  one json object per image (image_id, size, scores, RLE masks), ``shard_size`` a shard
    index.json             image_id -> [shard, byte offset]
    meta.json              generator and thresholds, counts, the mask ``downsample`` factor, and the size and
                           sha256 of every shard and of index.json (checked when the store is opened)

A store is written into ``<dir>.partial`` and renamed onto ``<dir>`` only when closed cleanly, so a failed run
never leaves a store that looks finished. Shards are committed as they fill (flushed, fsynced, renamed, then
listed in ``<dir>.partial/progress.json``): a stage killed after 100k images starts again from its last committed
shard, and the finished store is byte-identical to one written in one go. Masks may be kept at ``1/downsample``
of the image's resolution (a cell is on when any pixel of its ``downsample x downsample`` block is: what
training needs on the classifier's mask grid, at a sixteenth of the decoding cost); evaluation stores keep
full resolution. Reading is lazy (seek to one line).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.data.download import sha256_of
from pipeline.data.formats import DatasetError, write_json

log = logging.getLogger(__name__)
SHARD_SIZE = 256  # images per shard: what a killed run can lose


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


def downsample_masks(masks: np.ndarray, factor: int) -> np.ndarray:
    """(N,H,W) bool -> (N, ceil(H/f), ceil(W/f)): a cell is on when any pixel of its f x f block is."""
    if factor == 1:
        return masks
    n, h, w = masks.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.zeros((n, hp, wp), bool)
    padded[:, :h, :w] = masks
    return padded.reshape(n, hp // factor, factor, wp // factor, factor).any(axis=(2, 4))



class ProposalWriter:
    """Append proposals image by image; ``close()`` publishes the store atomically. A ``<dir>.partial`` left by
    a killed run with the same ``meta`` is resumed: :meth:`done` says which images it already holds."""

    def __init__(self, directory: str | Path, meta: dict | None = None, downsample: int = 1,
                 shard_size: int = SHARD_SIZE):
        self.final = Path(directory)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self._meta = {**(meta or {}), "downsample": downsample}
        self.downsample, self.shard_size = downsample, shard_size
        self._shards: list[dict] = []  # committed: file, images, bytes, sha256
        self._index: dict[str, list[int]] = {}
        self._resume()
        self._pending: list[str] = []
        self._pending_masks = 0
        self._fh = None

    def _resume(self) -> None:
        progress = self.partial / "progress.json"
        if progress.is_file():
            try:
                state = json.loads(progress.read_text())
            except (OSError, json.JSONDecodeError):
                state = {}
            if state.get("meta") == self._meta and self._committed_intact(state.get("shards", [])):
                self._shards, self._index = state["shards"], state["index"]
                for stray in self.partial.glob("*.tmp"):
                    stray.unlink()
                log.info("resuming the proposal store %s: %d images in %d committed shard(s)", self.final,
                         len(self._index), len(self._shards))
                return
            log.warning("%s was written with other settings or is damaged; starting it again", self.partial)
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)

    def _committed_intact(self, shards: list[dict]) -> bool:
        return all((self.partial / s["file"]).is_file() and (self.partial / s["file"]).stat().st_size == s["bytes"]
                   for s in shards)

    def done(self, image_id: str) -> bool:
        """Whether ``image_id`` is already in a committed shard (a resumed run skips it)."""
        return image_id in self._index

    def add(self, image_id: str, masks: np.ndarray, scores: np.ndarray) -> None:
        if len(masks) != len(scores):
            raise ValueError(f"image {image_id}: {len(masks)} masks but {len(scores)} scores")
        if image_id in self._index or image_id in self._pending:
            raise ValueError(f"image {image_id} written twice")
        h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
        stored = downsample_masks(masks, self.downsample) if len(masks) else masks
        record = {"image_id": image_id, "height": int(h), "width": int(w),
                  "scores": [round(float(s), 5) for s in scores], "rles": encode_masks(stored)}
        if self._fh is None:
            self._fh = (self.partial / f"{self._shard_name()}.tmp").open("w")
        self._index[image_id] = [len(self._shards), self._fh.tell()]
        self._pending.append(image_id)
        self._pending_masks += len(masks)
        self._fh.write(json.dumps(record) + "\n")
        if len(self._pending) >= self.shard_size:
            self._commit()

    def _shard_name(self) -> str:
        return f"shard-{len(self._shards):05d}.jsonl"

    def _commit(self) -> None:
        """Make the open shard durable and list it in progress.json (what a resumed run keeps)."""
        if self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        name = self._shard_name()
        os.replace(self.partial / f"{name}.tmp", self.partial / name)
        path = self.partial / name
        self._shards.append({"file": name, "images": len(self._pending), "masks": self._pending_masks,
                             "bytes": path.stat().st_size, "sha256": sha256_of(path)})
        self._pending, self._pending_masks = [], 0
        write_json(self.partial / "progress.json", {"meta": self._meta, "shards": self._shards,
                                                    "index": self._index}, indent=None)

    def close(self) -> dict:
        self._commit()
        write_json(self.partial / "index.json", self._index, indent=None)
        meta = {**self._meta, "images": len(self._index), "masks": sum(s["masks"] for s in self._shards),
                "shards": self._shards,
                "index_sha256": sha256_of(self.partial / "index.json")}
        write_json(self.partial / "meta.json", meta)
        (self.partial / "progress.json").unlink()
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        return meta

    def abort(self) -> None:
        """Keep what is committed (a re-run resumes from it); drop the open shard."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ProposalWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ProposalStore:
    """Lazy reader: ``store[image_id] -> (masks (N,h,w) bool, scores (N,) float32)``; masks at the stored
    resolution (``downsample``: 1 = the image's). Opening checks index.json's sha256 and every shard's size
    against meta.json; a damaged store is a :class:`DatasetError` naming the file and what to do."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.meta = self._read_json("meta.json")
        index_file = self.directory / "index.json"
        if not isinstance(self.meta, dict) or "shards" not in self.meta:
            raise self._damaged("meta.json", "it is not a proposal store's meta (no shard list)")
        if not index_file.is_file() or sha256_of(index_file) != self.meta.get("index_sha256"):
            raise self._damaged("index.json", "it is missing or fails its sha256 check")
        for shard in self.meta["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                raise self._damaged(shard["file"], f"it is missing or truncated (expected {shard['bytes']} bytes)")
        self.index: dict[str, list[int]] = self._read_json("index.json")
        self.downsample = int(self.meta.get("downsample", 1))

    def _read_json(self, name: str):
        path = self.directory / name
        if not path.is_file():
            raise DatasetError(f"no finished proposal store at {self.directory} (missing {name}); run `dvc repro "
                               "proposals` (or `python -m stages.proposals`) first")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._damaged(name, f"it is not valid json ({exc})") from None

    def _damaged(self, name: str, why: str) -> DatasetError:
        return DatasetError(f"proposal store {self.directory}: {name} is damaged ({why}); delete {self.directory} "
                            "and re-run the proposals stage that writes it (`dvc repro -f proposals...`)")

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index

    def record(self, image_id: str) -> dict:
        if image_id not in self.index:
            raise KeyError(f"image {image_id!r} has no proposals in {self.directory}")
        shard, offset = self.index[image_id]
        path = self.directory / self.meta["shards"][shard]["file"]
        with path.open() as fh:
            fh.seek(offset)
            line = fh.readline()
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise self._damaged(path.name, f"the record of image {image_id!r} at byte {offset} is not valid json") \
                from None
        if record.get("image_id") != image_id:
            raise self._damaged(path.name, f"byte {offset} holds {record.get('image_id')!r}, not {image_id!r}")
        return record

    def __getitem__(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        r = self.record(image_id)
        f = self.downsample
        h, w = -(-r["height"] // f), -(-r["width"] // f)
        return decode_masks(r["rles"], h, w), np.asarray(r["scores"], np.float32)
