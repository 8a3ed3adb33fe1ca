"""Already-prepared detectron2 layouts are verified in place, never downloaded or converted again.

A tiny prepared layout is written for every benchmark of pipeline/data/registry.py (derived from its Benchmark
fields), then the download stage runs with every networking function and every preparation step made to fail.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.data.conversions as conversions_mod
import pipeline.data.download as download_mod
import pipeline.data.prepare as prepare_mod
import stages.download as download
from pipeline.data.formats import id_to_rgb, write_json, write_label_map
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import BENCHMARKS, benchmark_files, benchmark_vocabulary, get_benchmark
from pipeline.data.verify import verify_benchmark
from pipeline.errors import DatasetError, DownloadError
from pipeline.presets import render_params
from stages.common import run

REAL = [b for b in BENCHMARKS.values() if b.dataset != "toy"]
DATASET_NAMES = sorted({b.dataset for b in REAL})
H, W, N_IMAGES = 12, 16, 2
SEG_IDS = (1, 7 + 256 * 3 + 65536)  # exercises R, G and B of the R + 256 G + 256^2 B encoding


# ----------------------------------------------------------------------------- a prepared layout
def _stem(i: int) -> str:
    return f"{i + 1:012d}"


def _write_images(folder: Path, ext: str) -> None:
    """The same images whichever benchmark writes them (COCO and COCO-Stuff, PC-59 and PC-459 share a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(N_IMAGES):
        rng = np.random.default_rng(zlib.crc32(f"{folder.name}{i}".encode()))
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / f"{_stem(i)}{ext}")


def _labels(bench) -> np.ndarray:
    """A label map using two classes of the benchmark's vocabulary and its ignore label."""
    lab = np.zeros((H, W), np.int64)
    lab[:, W // 2:] = len(benchmark_vocabulary(bench)) - 1
    lab[0, 0] = bench.ignore_label
    return lab


def _write_panoptic(bench, root: Path) -> None:
    vocab = benchmark_vocabulary(bench)
    stuff = next(c for c in vocab.classes if not c.isthing)
    thing = next((c for c in vocab.classes if c.isthing), stuff)
    ids = np.zeros((H, W), np.uint32)
    ids[:, : W // 2], ids[:, W // 2:] = SEG_IDS
    images, annotations = [], []
    for i in range(N_IMAGES):
        stem = _stem(i)
        Image.fromarray(id_to_rgb(ids)).save(_mkdir(root / bench.panoptic_dir) / f"{stem}.png")
        segs = [{"id": SEG_IDS[0], "category_id": stuff.id, "iscrowd": 0, "area": H * W // 2, "bbox": [0, 0, 8, 12]},
                {"id": SEG_IDS[1], "category_id": thing.id, "iscrowd": 0, "area": H * W // 2, "bbox": [8, 0, 8, 12]}]
        images.append({"id": stem, "file_name": f"{stem}{bench.image_ext}", "height": H, "width": W})
        annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segs})
    cats = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in vocab.classes]
    write_json(root / bench.panoptic_json, {"images": images, "annotations": annotations, "categories": cats})


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_prepared(root: Path, benches=REAL) -> None:
    """A two-image prepared detectron2 layout of ``benches`` from the files each reads (benchmark_files)."""
    for bench in benches:
        _write_images(root / bench.image_dir, bench.image_ext)
        if bench.task == "panoptic":
            _write_panoptic(bench, root)
        if bench.semantic_dir in benchmark_files(bench):
            for i in range(N_IMAGES):
                write_label_map(root / bench.semantic_dir / f"{_stem(i)}{bench.semantic_ext}", _labels(bench),
                                sixteen_bit=bench.semantic_ext == ".tif")


# ----------------------------------------------------------------------------- no network, no conversion
@pytest.fixture
def offline(monkeypatch):
    """Every networking function, archive step and preparation step fails the test if called."""
    calls: list[str] = []

    def refuse(what):
        def fail(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"{what} was called: a prepared layout must not be downloaded or converted")
        return fail

    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(download_mod, "_download_part", refuse("_download_part"))
    monkeypatch.setattr(download_mod, "fetch_verified", refuse("fetch_verified"))
    monkeypatch.setattr(prepare_mod, "fetch_verified", refuse("fetch_verified"))
    monkeypatch.setattr(prepare_mod, "safe_extract", refuse("safe_extract"))
    monkeypatch.setattr(conversions_mod, "safe_extract", refuse("safe_extract"))
    for name, spec in list(prepare_mod.DATASETS.items()):
        monkeypatch.setitem(prepare_mod.DATASETS, name, dataclasses.replace(spec, prepare=refuse(f"prepare {name}")))
    monkeypatch.setattr(download, "tracker", lambda *a, **k: contextlib.nullcontext(_NullTracker()))
    return calls


class _NullTracker:
    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def log_artifact(self, *args, **kwargs) -> None:
        pass


def _stage(tmp_path: Path, root: Path, *extra: str) -> dict:
    params = tmp_path / "params.yaml"
    if not params.exists():
        params.write_text(render_params("paper"))
    return run(download.main, download.build_parser(), [
        "--params", str(params), "--root", str(root), "--manifest", str(tmp_path / "datasets.json"),
        "--datasets", *DATASET_NAMES, *extra])


# ----------------------------------------------------------------------------- tests
def test_registry_lists_what_each_benchmark_reads():
    coco = get_benchmark("coco_panoptic_val")  # semantic ground truth from the panoptic PNGs: no label folder
    assert benchmark_files(coco) == ["coco/val2017", "coco/annotations/panoptic_val2017.json", "coco/panoptic_val2017"]
    ade = get_benchmark("ade20k_150")  # its mIoU reads the label maps as well
    assert "ADEChallengeData2016/annotations_detectron2/validation" in benchmark_files(ade)
    assert benchmark_files(get_benchmark("pascal_ctx_459")) == ["pascal_ctx_d2/images/validation",
                                                                "pascal_ctx_d2/annotations_ctx459/validation"]
    assert {b.dataset for b in REAL} <= set(prepare_mod.DATASETS)


def test_every_prepared_benchmark_is_accepted_without_download_or_conversion(tmp_path, offline):
    root = tmp_path / "datasets"
    write_prepared(root)
    summary = _stage(tmp_path, root)
    assert offline == []
    manifest = json.loads((tmp_path / "datasets.json").read_text())
    assert manifest["datasets"] == summary["datasets"] and set(manifest["datasets"]) == set(DATASET_NAMES)
    for name, entry in manifest["datasets"].items():
        assert entry["source"] == "prepared", name
        assert set(entry["benchmarks"]) == {b.name for b in REAL if b.dataset == name}
    for bench in REAL:
        counts = manifest["datasets"][bench.dataset]["benchmarks"][bench.name]
        assert counts["images"] == N_IMAGES, bench.name
        if bench.task == "panoptic":
            assert counts["annotations"] == N_IMAGES
        if bench.semantic_dir in benchmark_files(bench):
            assert counts["label_maps"] == N_IMAGES
        sample = BenchmarkDataset(bench, root)[0]
        assert sample.image.shape == (H, W, 3) and sample.semantic is not None, bench.name
        if bench.task == "panoptic":
            assert sorted(s.id for s in sample.segments) == sorted(SEG_IDS)
        if bench.semantic_ext == ".tif":
            assert sample.semantic[0, -1] == len(benchmark_vocabulary(bench)) - 1 > 255  # 16-bit labels kept
    assert not (root / "downloads").exists()
    # a second run (dvc repro after a params change) accepts it again, same manifest
    _stage(tmp_path, root)
    assert json.loads((tmp_path / "datasets.json").read_text()) == manifest and offline == []


def test_check_reports_each_benchmark_present(tmp_path, offline):
    root = tmp_path / "datasets"
    write_prepared(root)
    rows = _stage(tmp_path, root, "--check")["check"]
    assert all(r["status"] == "present" for r in rows)
    benches = {b["benchmark"]: b for r in rows for b in r["benchmarks"]}
    assert set(benches) == {b.name for b in REAL} and all(b["status"] == "present" for b in benches.values())
    assert benches["ade20k_847"]["counts"]["label_maps"] == N_IMAGES
    assert not (tmp_path / "datasets.json").exists() and offline == []


def _without_ade_json(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "datasets"
    write_prepared(root, [get_benchmark("ade20k_150")])
    missing = root / get_benchmark("ade20k_150").panoptic_json
    missing.unlink()
    return root, missing


def test_check_names_a_missing_panoptic_json(tmp_path, offline, capsys):
    root, missing = _without_ade_json(tmp_path)
    rows = run(download.main, download.build_parser(), [
        "--check", "--params", str(_params(tmp_path)), "--root", str(root), "--manifest",
        str(tmp_path / "datasets.json"), "--datasets", "ade20k", "coco", "mapillary_vistas"])["check"]
    by_name = {r["dataset"]: r for r in rows}
    ade = by_name["ade20k"]
    assert ade["status"] == "partial"
    (bench,) = ade["benchmarks"]
    assert bench["benchmark"] == "ade20k_150" and bench["status"] == "partial"
    assert bench["missing"] == [f"{missing} (missing)"]
    assert "ADEChallengeData2016/ade20k_panoptic_val.json" in bench["needs"]
    assert bench["command"] == "python -m stages.download --datasets ade20k --fetch-missing"  # what completes it
    assert by_name["coco"]["status"] == "missing" and rows[0]["dataset"] == "mapillary_vistas"  # licence first
    out = capsys.readouterr().out
    assert f"missing: {missing} (missing)" in out
    assert "python -m stages.download --datasets ade20k" in out
    assert "mapillary_vistas (do this first)" in out and "trust-on-first-use" in out
    assert "ADEChallengeData2016.zip" in out  # what --fetch-missing would download, unpinned
    assert offline == []


def _params(tmp_path: Path) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(render_params("paper"))
    return params


def test_stage_refuses_a_partial_layout_naming_the_file_and_command(tmp_path, offline, caplog):
    root, missing = _without_ade_json(tmp_path)
    with pytest.raises(SystemExit) as exc:
        run(download.main, download.build_parser(), [
            "--params", str(_params(tmp_path)), "--root", str(root), "--manifest", str(tmp_path / "datasets.json"),
            "--datasets", "ade20k"])
    assert exc.value.code == 1 and offline == []
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "\n" not in line and str(missing) in line
    assert "python -m stages.download --datasets ade20k --fetch-missing" in line
    assert not (tmp_path / "datasets.json").exists() and not (root / "downloads").exists()


def test_partial_layout_error_lists_only_the_archives_it_lacks(tmp_path, offline):
    """COCO prepared by detectron2 but no COCO-Stuff maps: only the stuffthingmaps archive is wanted."""
    root = tmp_path / "datasets"
    write_prepared(root, [get_benchmark("coco_panoptic_train"), get_benchmark("coco_panoptic_val")])
    with pytest.raises(DatasetError) as exc:
        prepare_mod.obtain_dataset(prepare_mod.DATASETS["coco_stuff"], root, {})
    msg = str(exc.value)
    assert "coco/stuffthingmaps_detectron2/val2017" in msg and "stuffthingmaps_trainval2017.zip" in msg
    assert "coco_train2017.zip" not in msg and offline == []


def test_fetch_missing_downloads_only_the_archives_whose_files_are_absent(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    write_prepared(root, [get_benchmark("coco_panoptic_train"), get_benchmark("coco_panoptic_val")])
    asked = []

    def fake_fetch(url, dest, sha256=None, lock=None):
        asked.append(Path(dest).name)
        raise DownloadError(f"{url}: connection failed (test)")

    monkeypatch.setattr(prepare_mod, "fetch_verified", fake_fetch)
    with pytest.raises(DownloadError):
        prepare_mod.obtain_dataset(prepare_mod.DATASETS["coco_stuff"], root, {}, fetch_missing=True)
    assert asked == ["stuffthingmaps_trainval2017.zip"]


def test_partial_layout_with_raw_files_is_converted_without_download(tmp_path, monkeypatch):
    """ADE-150 prepared for semantic segmentation only, raw annotations beside it: the panoptic json is made
    from them (prepare_ade20k) and nothing is downloaded."""
    root, missing = _without_ade_json(tmp_path)
    base = root / "ADEChallengeData2016"
    for i in range(N_IMAGES):
        sem = np.ones((H, W), np.uint8)  # class 0 (wall), 1-based on disk
        inst = np.zeros((H, W, 3), np.uint8)
        Image.fromarray(sem).save(_mkdir(base / "annotations/validation") / f"{_stem(i)}.png")
        Image.fromarray(inst).save(_mkdir(base / "annotations_instance/validation") / f"{_stem(i)}.png")

    def no_download(*args, **kwargs):
        raise AssertionError("nothing should be downloaded")

    monkeypatch.setattr(prepare_mod, "fetch_verified", no_download)
    entry = prepare_mod.obtain_dataset(prepare_mod.DATASETS["ade20k"], root, {})
    assert missing.is_file() and entry["source"] == "converted from the raw files already there"
    assert entry["benchmarks"]["ade20k_150"]["annotations"] == N_IMAGES


def test_verify_names_missing_pngs_and_label_maps(tmp_path):
    root = tmp_path / "datasets"
    bench = get_benchmark("mapillary_vistas")
    write_prepared(root, [bench])
    (root / bench.panoptic_dir / f"{_stem(1)}.png").unlink()
    (root / bench.semantic_dir / f"{_stem(0)}.png").unlink()
    report = verify_benchmark(bench, root)
    assert report.status == "partial"
    assert any(f"{_stem(1)}.png" in p and "PNGs" in p for p in report.problems)
    assert any(f"{_stem(0)}.png" in p and "label maps" in p for p in report.problems)
    (root / bench.panoptic_json).write_text("{not json")
    assert any("not valid json" in p for p in verify_benchmark(bench, root).problems)
