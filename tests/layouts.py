"""Tiny detectron2-layout datasets written by tests: COCO-panoptic from the two real COCO images in
tests/fixtures, ADE20K-150 generated (panoptic json + PNGs, semantic labels), as the preparation scripts leave
them under ``$DETECTRON2_DATASETS``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from pipeline.data.formats import write_image, write_json, write_label_map, write_panoptic_png
from pipeline.data.vocab import load_packaged_vocabulary

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COCO_SAMPLE = FIXTURES / "coco_panoptic_sample"  # two COCO val2017 images, see its LICENSE.md


def write_coco_panoptic(root: Path, split: str) -> list[str]:
    """``coco/{split}2017`` + ``coco/panoptic_{split}2017`` + ``coco/annotations/panoptic_{split}2017.json`` with the
    two sample images (the same two for every split); returns their ids."""
    (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    shutil.copytree(COCO_SAMPLE / "images", root / "coco" / f"{split}2017", dirs_exist_ok=True)
    shutil.copytree(COCO_SAMPLE / "panoptic", root / "coco" / f"panoptic_{split}2017", dirs_exist_ok=True)
    shutil.copy(COCO_SAMPLE / "panoptic.json", root / "coco" / "annotations" / f"panoptic_{split}2017.json")
    return [str(im["id"]) for im in json.loads((COCO_SAMPLE / "panoptic.json").read_text())["images"]]


def write_ade20k_150(root: Path, n: int = 2, size: tuple[int, int] = (96, 128), seed: int = 0) -> list[str]:
    """ADE20K-150 validation in the detectron2 layout: ``ADEChallengeData2016/images/validation/*.jpg``, the
    panoptic PNGs + json, and the semantic label maps (0-149, 255 ignore). Each image: a stuff background (wall)
    and two thing rectangles (person, car), textured noise so images differ."""
    vocab = load_packaged_vocabulary("ade20k_150")
    by_name = {c.name: (k, c) for k, c in enumerate(vocab.classes)}
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    annotations, images, ids = [], [], []
    h, w = size
    for i in range(n):
        stem = f"ADE_val_{i + 1:08d}"
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        seg_ids = np.full((h, w), 1, np.int64)
        labels = np.full((h, w), by_name["wall"][0], np.int64)
        segments = [{"id": 1, "category_id": by_name["wall"][1].id, "iscrowd": 0}]
        for sid, (name, (y, x)) in enumerate((("person", (10, 10)), ("car", (40, 60))), start=2):
            seg_ids[y:y + 30, x:x + 40] = sid
            labels[y:y + 30, x:x + 40] = by_name[name][0]
            segments.append({"id": sid, "category_id": by_name[name][1].id, "iscrowd": 0})
        write_image(base / "images" / "validation" / f"{stem}.jpg", image)
        write_panoptic_png(base / "ade20k_panoptic_val" / f"{stem}.png", seg_ids)
        write_label_map(base / "annotations_detectron2" / "validation" / f"{stem}.png", labels)
        for s in segments:
            s["area"] = int((seg_ids == s["id"]).sum())
        annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments})
        images.append({"id": stem, "file_name": f"{stem}.jpg", "height": h, "width": w})
        ids.append(stem)
    categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in vocab.classes]
    write_json(base / "ade20k_panoptic_val.json", {"images": images, "annotations": annotations,
                                                   "categories": categories})
    return ids
