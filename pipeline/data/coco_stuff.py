"""COCO-Stuff-164k (Table III's training set): preparation of the detectron2 layout and class regions.

The raw ``stuffthingmaps_trainval2017.zip`` (COCO-Stuff project) holds one 8-bit PNG per COCO image
with value = category id - 1 for the 182 COCO-Stuff ids (only 171 are used: 80 things, 91 stuff) and
255 unlabeled. :func:`prepare_coco_stuff` maps them to contiguous train ids 0..170 in the order of
``pipeline/data/vocabularies/coco_stuff_171.json`` (every other value -> 255) and writes
``coco/stuffthingmaps_detectron2/{train,val}2017/*.png``: the layout detectron2 / Mask2Former's
``prepare_coco_stuff_164k_sem_seg.py`` leaves, so an already prepared tree is used unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.formats import DatasetError, write_label_map
from pipeline.data.vocab import VOCAB_DIR

RAW_DIR = "coco/stuffthingmaps"  # where the raw zip is extracted (train2017/, val2017/)
PREPARED_DIR = "coco/stuffthingmaps_detectron2"
SPLITS = ("train2017", "val2017")
IGNORE = 255


def raw_to_train_id_lut() -> np.ndarray:
    """(256,) uint8: raw stuffthingmaps value (category id - 1) -> contiguous train id, 255 elsewhere."""
    records = json.loads((VOCAB_DIR / "coco_stuff_171.json").read_text())
    lut = np.full(256, IGNORE, np.uint8)
    for train_id, r in enumerate(records):
        raw = int(r["id"]) - 1
        if not 0 <= raw < IGNORE:
            raise DatasetError(f"coco_stuff_171.json: class {r['name']!r} has id {r['id']} outside 1..255")
        lut[raw] = train_id
    return lut


def convert_map(src: Path, dst: Path, lut: np.ndarray) -> None:
    """One raw stuffthingmap -> a train-id PNG (atomic)."""
    try:
        with Image.open(src) as im:
            raw = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode COCO-Stuff map {src} ({exc}); re-extract "
                           "stuffthingmaps_trainval2017.zip") from None
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise DatasetError(f"COCO-Stuff map {src} is {raw.dtype} with shape {raw.shape}; expected a single-channel "
                           "8-bit PNG from stuffthingmaps_trainval2017.zip")
    write_label_map(dst, lut[raw])


def prepare_coco_stuff(root: Path) -> dict:
    """Write the detectron2-layout train-id maps for every raw map not converted yet; returns counts."""
    root = Path(root)
    lut = raw_to_train_id_lut()
    counts = {}
    for split in SPLITS:
        src_dir = root / RAW_DIR / split
        if not src_dir.is_dir():
            raise DatasetError(f"missing {src_dir}: fetch stuffthingmaps_trainval2017.zip with `python -m "
                               f"stages.download --datasets coco_stuff` or unzip it yourself into {root / RAW_DIR}")
        n = 0
        for src in sorted(src_dir.glob("*.png")):
            dst = root / PREPARED_DIR / split / src.name
            if not dst.exists():
                convert_map(src, dst, lut)
                n += 1
        counts[f"coco_stuff_{split}_maps"] = n
    return counts
