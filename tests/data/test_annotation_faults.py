"""Fault-campaign defects (issue 10, item 8.5): malformed panoptic json and zero evaluated images."""
import json
import shutil
from collections import Counter

import pytest

from pipeline.data.formats import DatasetError
from pipeline.data.loaders import BenchmarkDataset, check_images_evaluated
from pipeline.data.registry import get_benchmark


@pytest.fixture
def toy_copy(toy_root, tmp_path):
    shutil.copytree(toy_root / "toy", tmp_path / "toy")
    bench = get_benchmark("toy_val")
    return tmp_path, bench, tmp_path / bench.panoptic_json


def _edit(path, fn):
    data = json.loads(path.read_text())
    data = fn(data)
    path.write_text(json.dumps(data))


def test_panoptic_json_that_is_a_list_names_the_file(toy_copy):
    root, bench, js = toy_copy
    js.write_text("[1, 2]")
    with pytest.raises(DatasetError, match=rf"{js.name}.*expected a json object.*list"):
        BenchmarkDataset(bench, root)


def _drop(key, where):
    def fn(d):
        target = d["annotations"][0] if where == "ann" else d["annotations"][0]["segments_info"][0]
        del target[key]
        return d
    return fn


@pytest.mark.parametrize("key,where,field", [
    ("file_name", "ann", r"annotations\[0\]\.file_name"),
    ("image_id", "ann", r"annotations\[0\]\.image_id"),
    ("segments_info", "ann", r"annotations\[0\]\.segments_info"),
    ("category_id", "seg", r"annotations\[0\]\.segments_info\[0\]\.category_id"),
    ("id", "seg", r"annotations\[0\]\.segments_info\[0\]\.id"),
])
def test_missing_field_is_a_dataset_error_naming_file_and_field(toy_copy, key, where, field):
    root, bench, js = toy_copy
    _edit(js, _drop(key, where))
    with pytest.raises(DatasetError, match=rf"{js.name}: {field}"):
        BenchmarkDataset(bench, root)


def test_annotations_not_a_list_is_refused(toy_copy):
    root, bench, js = toy_copy
    _edit(js, lambda d: {**d, "annotations": {"a": 1}})
    with pytest.raises(DatasetError, match=r"annotations: expected a list"):
        BenchmarkDataset(bench, root)


def test_zero_images_evaluated_is_an_error():
    with pytest.raises(DatasetError, match=r"no image of toy_val could be evaluated \(3 skipped"):
        check_images_evaluated("toy_val", 0, Counter(skipped=3))
    check_images_evaluated("toy_val", 2, Counter(skipped=3))  # some images: fine (skips are reported)


def test_evaluate_refuses_a_benchmark_whose_images_all_fail(toy_copy):
    """The hook in pipeline.eval.loop: all images unreadable -> error, not PQ 0 with exit 0."""
    from pipeline.eval.loop import GroundTruthProposals, OracleClassifier, default_evaluators, inference_on_dataset

    root, bench, _ = toy_copy
    for p in (root / bench.image_dir).iterdir():
        p.write_bytes(b"not an image")
    ds = BenchmarkDataset(bench, root)
    with pytest.raises(DatasetError, match=r"no image of toy_val could be evaluated"):
        inference_on_dataset(ds, GroundTruthProposals(), OracleClassifier(len(ds.vocab)), default_evaluators(ds),
                             object_threshold=0.3, overlap_threshold=0.6)
