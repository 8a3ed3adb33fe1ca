import json
import shutil
from collections import Counter

import numpy as np
import pytest

from pipeline.data.formats import DatasetError, read_panoptic_png, write_json, write_panoptic_png
from pipeline.data.loaders import BenchmarkDataset, iter_samples
from pipeline.data.registry import BENCHMARKS, dataset_root, get_benchmark


def test_unknown_benchmark_lists_valid_ones():
    with pytest.raises(KeyError, match="coco_panoptic_val"):
        get_benchmark("coco_panoptik")


def test_root_defaults_to_env_then_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert dataset_root(None) == tmp_path
    assert dataset_root("elsewhere").name == "elsewhere"
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert str(dataset_root(None)) == "datasets"


def test_registry_ignore_labels():
    assert BENCHMARKS["ade20k_847"].ignore_label == 65535
    assert BENCHMARKS["pascal_ctx_459"].ignore_label == 65535
    assert BENCHMARKS["ade20k_150"].ignore_label == 255
    assert BENCHMARKS["pascal_ctx_59"].ignore_label == 255


def test_missing_dataset_names_path_and_command(tmp_path):
    with pytest.raises(DatasetError, match=r"panoptic_val2017.json.*stages.download --datasets coco"):
        BenchmarkDataset(get_benchmark("coco_panoptic_val"), tmp_path)


def test_coco_sample_segments(coco_root):
    ds = BenchmarkDataset(get_benchmark("coco_panoptic_val"), coco_root)
    counts = sorted(len(ds[i].segments) for i in range(len(ds)))
    assert counts == [18, 32]
    s = ds[0]
    assert s.image.shape[:2] == s.id_map.shape and s.semantic.shape == s.id_map.shape
    masks, labels = s.segment_masks(include_crowd=True)
    assert masks.shape[0] == len(s.segments) and labels.max() < 133


def test_panoptic_writer_round_trips_bit_identically(coco_root, tmp_path):
    ann_path = coco_root / "coco/annotations/panoptic_val2017.json"
    ann = json.loads(ann_path.read_text())
    for a in ann["annotations"]:
        src = coco_root / "coco/panoptic_val2017" / a["file_name"]
        ids = read_panoptic_png(src)
        write_panoptic_png(tmp_path / a["file_name"], ids)
        from PIL import Image
        assert np.array_equal(np.asarray(Image.open(src).convert("RGB")),
                              np.asarray(Image.open(tmp_path / a["file_name"]).convert("RGB")))
    write_json(tmp_path / "p.json", ann)
    assert json.loads((tmp_path / "p.json").read_text()) == ann


def test_toy_world_reads_back(toy_root):
    for name in ("toy_train", "toy_val", "toy_open", "toy_open_large"):
        ds = BenchmarkDataset(get_benchmark(name), toy_root)
        assert len(ds) > 0
        s = ds[0]
        assert s.image.dtype == np.uint8 and s.semantic is not None
        labelled = s.semantic[s.semantic != 255]
        assert labelled.size > 0 and labelled.max() < len(ds.vocab)


def test_toy_world_is_deterministic(tmp_path):
    from pipeline.data.toy import generate_toy_world

    kw = dict(seed=3, image_size=48, n_train=3, n_val=1, n_open=1, n_captions=4, caption_size=32, max_things=2)
    generate_toy_world(tmp_path / "a", **kw)
    generate_toy_world(tmp_path / "b", **kw)
    for rel in ("toy/images/train/train_000002.png", "toy/panoptic_train/train_000001.png",
                "toy/captions/images.npy", "toy/annotations/panoptic_open.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_train_split_has_only_seen_classes_and_open_has_unseen(toy_root):
    from pipeline.data.toy import toy_vocabulary, unseen_class_names

    unseen = unseen_class_names()
    assert not unseen & set(toy_vocabulary("toy_seen").names)
    assert unseen & set(toy_vocabulary("toy_open").names)
    assert len(toy_vocabulary("toy_all")) > len(toy_vocabulary("toy_open"))


def _copy_toy(toy_root, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(toy_root, dst)
    return dst


def test_corrupt_image_is_error_or_counted_skip(toy_root, tmp_path):
    root = _copy_toy(toy_root, tmp_path)
    path = root / "toy/images/val/val_000000.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = BenchmarkDataset(get_benchmark("toy_val"), root)
    with pytest.raises(DatasetError, match="val_000000.png.*truncated, corrupt or not an image"):
        ds[0]
    stats = Counter()
    got = list(iter_samples(ds, stats=stats))
    assert stats["skipped"] == 1 and len(got) == len(ds) - 1


def test_panoptic_ids_missing_from_json_is_an_error(toy_root, tmp_path):
    root = _copy_toy(toy_root, tmp_path)
    ann_path = root / "toy/annotations/panoptic_val.json"
    ann = json.loads(ann_path.read_text())
    ann["annotations"][0]["segments_info"] = ann["annotations"][0]["segments_info"][1:]
    ann_path.write_text(json.dumps(ann))
    ds = BenchmarkDataset(get_benchmark("toy_val"), root)
    with pytest.raises(DatasetError, match="in the PNG but not in the json"):
        ds[0]


def test_image_with_zero_segments_is_yielded_and_counted(toy_root, tmp_path):
    root = _copy_toy(toy_root, tmp_path)
    ann_path = root / "toy/annotations/panoptic_val.json"
    ann = json.loads(ann_path.read_text())
    first = ann["annotations"][0]
    first["segments_info"] = []
    png = root / "toy/panoptic_val" / first["file_name"]
    write_panoptic_png(png, np.zeros_like(read_panoptic_png(png)))
    ann_path.write_text(json.dumps(ann))
    stats = Counter()
    samples = list(iter_samples(BenchmarkDataset(get_benchmark("toy_val"), root), stats=stats))
    assert stats["empty"] == 1 and samples[0].segments == [] and (samples[0].semantic == 255).all()


def test_panoptic_benchmark_with_label_maps_reads_its_miou_ground_truth_from_them(toy_root, tmp_path):
    """ADE-150 and Mapillary: detectron2 scores mIoU against the label maps (sem_seg_file_name), which differ
    from the panoptic PNGs where the panoptic conversion left pixels void."""
    import dataclasses

    from PIL import Image

    assert {n for n, b in BENCHMARKS.items() if b.semantic_source == "labels"} == {"ade20k_150", "mapillary_vistas"}
    root = _copy_toy(toy_root, tmp_path)
    bench = dataclasses.replace(get_benchmark("toy_val"), semantic_source="labels")
    from_panoptic = BenchmarkDataset(get_benchmark("toy_val"), root)[0]
    label_path = root / bench.semantic_dir / (from_panoptic.file_name.rsplit(".", 1)[0] + ".png")
    labels = from_panoptic.semantic.copy()
    labels[:, :5] = 3  # the label map says class 3 where the panoptic PNG says otherwise
    Image.fromarray(labels.astype(np.uint8)).save(label_path)
    sample = BenchmarkDataset(bench, root)[0]
    assert np.array_equal(sample.semantic, labels) and not np.array_equal(sample.semantic, from_panoptic.semantic)
    assert np.array_equal(sample.id_map, from_panoptic.id_map)  # PQ still reads the panoptic PNG
    label_path.unlink()
    with pytest.raises(DatasetError, match=f"missing label map .*{label_path.name}.*stages.download --datasets toy"):
        BenchmarkDataset(bench, root)[0]
