"""Per-dataset conversions of the raw files into the detectron2 layout: COCO panoptic to semantic maps,
ADE20K-150 semantic and panoptic, ADE20K-847 and Pascal Context (459 and 59 classes). Each step takes the dataset
root and returns its counts for the download manifest (COCO-Stuff's is :mod:`pipeline.data.coco_stuff`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.archives import safe_extract
from pipeline.data.formats import list_files, read_json, write_json, write_label_map
from pipeline.data.vocab import VOCAB_DIR


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
        for p in list_files(src, (".png",)):
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
        for p in list_files(root / "ADEChallengeData2016/annotations" / split, (".png",)):
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

    records = json.loads((VOCAB_DIR / "ade20k_847.json").read_text())
    lut = np.full(max(r["id"] for r in records) + 1, 65535, np.int64)  # ADE20K-full object id -> train id
    for r in records:
        lut[r["id"]] = r["trainId"]
    base = root / "ADE20K_2021_17_01"
    n = 0
    for split in ("training", "validation"):
        for seg in list_files(base / "images/ADE" / split, ("_seg.png",), recursive=True):
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
