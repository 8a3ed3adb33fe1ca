"""Preparation steps on fabricated (and, for COCO, real sample) files in the official source layouts."""
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.data.conversions import (
    ade20k_panoptic,
    ade20k_semantic,
    coco_semantic_from_panoptic,
    prepare_ade20k_full,
    prepare_pascal_context,
)
from pipeline.data.formats import read_label_map
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark


def test_coco_semantic_maps_match_the_panoptic_ground_truth(coco_root):
    coco_semantic_from_panoptic(coco_root)
    ds = BenchmarkDataset(get_benchmark("coco_panoptic_val"), coco_root)
    for i in range(len(ds)):
        s = ds[i]
        sem = read_label_map(coco_root / "coco/panoptic_semseg_val2017" / ds._annotations[i]["file_name"])
        assert np.array_equal(sem, s.semantic)


def test_ade20k_150_semantic_and_panoptic_from_instances(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "annotations" / split).mkdir(parents=True)
        (base / "annotations_instance" / split).mkdir(parents=True)
        sem = np.zeros((8, 8), np.uint8)
        sem[:4] = 1  # class id 0 "wall" (stuff), 1-based on disk
        sem[4:, :4] = 13  # class 12 "person" (thing)
        inst = np.zeros((8, 8, 3), np.uint8)
        inst[4:, :2, 0], inst[4:, :2, 1] = 13, 1
        inst[4:, 2:4, 0], inst[4:, 2:4, 1] = 13, 2
        Image.fromarray(sem).save(base / "annotations" / split / "ADE_x_1.png")
        Image.fromarray(inst).save(base / "annotations_instance" / split / "ADE_x_1.png")
    ade20k_semantic(tmp_path)
    lab = read_label_map(base / "annotations_detectron2/validation/ADE_x_1.png")
    assert lab[0, 0] == 0 and lab[7, 0] == 12 and lab[7, 7] == 255
    ade20k_panoptic(tmp_path)
    ann = json.loads((base / "ade20k_panoptic_val.json").read_text())
    segs = ann["annotations"][0]["segments_info"]
    assert sorted((s["category_id"], s["area"]) for s in segs) == [(0, 32), (12, 8), (12, 8)]


def test_pascal_context_459_and_59(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    voc = tmp_path / "VOCdevkit/VOC2010"
    (voc / "pascal_context/trainval").mkdir(parents=True)
    (voc / "JPEGImages").mkdir(parents=True)
    label = np.zeros((6, 6), np.uint16)
    label[:3] = 2  # 459-class id 2 (1-based) = "aeroplane"
    label[3:, :3] = 3
    scipy_io.savemat(voc / "pascal_context/trainval/2008_000001.mat", {"LabelMap": label})
    Image.new("RGB", (6, 6)).save(voc / "JPEGImages/2008_000001.jpg")
    (voc / "pascal_context/val.txt").write_text("2008_000001\n")
    prepare_pascal_context(tmp_path)
    l459 = read_label_map(tmp_path / "pascal_ctx_d2/annotations_ctx459/validation/2008_000001.tif")
    l59 = read_label_map(tmp_path / "pascal_ctx_d2/annotations_ctx59/validation/2008_000001.png")
    assert l459[0, 0] == 1 and l459[5, 5] == 65535
    assert l59[0, 0] == 0 and l59[5, 5] == 255  # aeroplane is class 0 of PC-59
    ds = BenchmarkDataset(get_benchmark("pascal_ctx_459"), tmp_path)
    assert ds[0].semantic[0, 0] == 1


def test_ade20k_847_sixteen_bit_maps(tmp_path):
    src = tmp_path / "ADE20K_2021_17_01/images/ADE/validation/scene"
    src.mkdir(parents=True)
    seg = np.zeros((4, 4, 3), np.uint8)
    wall = 2978  # the ADE20K-full id of "wall" -> train id 0
    seg[:2, :, 0], seg[:2, :, 1] = (wall // 256) * 10, wall % 256
    Image.fromarray(seg).save(src / "ADE_val_1_seg.png")
    Image.new("RGB", (4, 4)).save(src / "ADE_val_1.jpg")
    prepare_ade20k_full(tmp_path)
    lab = read_label_map(tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_1.tif")
    assert lab[0, 0] == 0 and lab[3, 3] == 65535
