"""Named benchmarks: where each lives under the dataset root, its task, ignore label and vocabulary.

Layouts follow what the detectron2 / Mask2Former preparation scripts leave under
``$DETECTRON2_DATASETS`` so already-prepared datasets work unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.data.vocab import Vocabulary, load_packaged_vocabulary
from pipeline.errors import UnknownBenchmarkError

DEFAULT_ROOT = "datasets"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark split. Paths are relative to the dataset root."""

    name: str
    task: Literal["panoptic", "semantic"]
    vocab: str  # a packaged vocabulary stem (pipeline/data/vocabularies) or a toy vocabulary name
    dataset: str  # key of pipeline.data.prepare.DATASETS that provides it
    image_dir: str
    panoptic_json: str | None = None
    panoptic_dir: str | None = None
    semantic_dir: str | None = None
    semantic_ext: str = ".png"
    # where a panoptic benchmark's mIoU ground truth comes from: its panoptic PNGs, or the label maps in
    # semantic_dir (what detectron2's SemSegEvaluator reads via sem_seg_file_name for ADE-150 and Mapillary:
    # annotations that differ from the panoptic ones where the panoptic conversion left pixels void)
    semantic_source: Literal["panoptic", "labels"] = "panoptic"
    image_ext: str = ".jpg"
    ignore_label: int = 255

    @property
    def fetch_command(self) -> str:
        return f"python -m stages.download --datasets {self.dataset}"


def _coco(split: str) -> Benchmark:
    return Benchmark(
        name=f"coco_panoptic_{split}", task="panoptic", vocab="coco_panoptic", dataset="coco",
        image_dir=f"coco/{split}2017", panoptic_json=f"coco/annotations/panoptic_{split}2017.json",
        panoptic_dir=f"coco/panoptic_{split}2017", semantic_dir=f"coco/panoptic_semseg_{split}2017")


def _coco_stuff(split: str) -> Benchmark:
    """COCO-Stuff-164k, semantic only (171 classes, 255 ignore), prepared by pipeline.data.coco_stuff."""
    return Benchmark(
        name=f"coco_stuff_{split}", task="semantic", vocab="coco_stuff_171", dataset="coco_stuff",
        image_dir=f"coco/{split}2017", semantic_dir=f"coco/stuffthingmaps_detectron2/{split}2017")


def _toy(name: str, split: str, vocab: str, task: Literal["panoptic", "semantic"]) -> Benchmark:
    pan = task == "panoptic"
    return Benchmark(
        name=name, task=task, vocab=vocab, dataset="toy", image_dir=f"toy/images/{split}", image_ext=".png",
        panoptic_json=f"toy/annotations/panoptic_{split}.json" if pan else None,
        panoptic_dir=f"toy/panoptic_{split}" if pan else None, semantic_dir=f"toy/semantic_{split}")


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    _coco("train"),
    _coco("val"),
    _coco_stuff("train"),
    _coco_stuff("val"),
    Benchmark("ade20k_150", "panoptic", "ade20k_150", "ade20k", "ADEChallengeData2016/images/validation",
              panoptic_json="ADEChallengeData2016/ade20k_panoptic_val.json",
              panoptic_dir="ADEChallengeData2016/ade20k_panoptic_val",
              semantic_dir="ADEChallengeData2016/annotations_detectron2/validation", semantic_source="labels"),
    Benchmark("ade20k_847", "semantic", "ade20k_847", "ade20k_full", "ADE20K_2021_17_01/images_detectron2/validation",
              semantic_dir="ADE20K_2021_17_01/annotations_detectron2/validation", semantic_ext=".tif",
              ignore_label=65535),
    Benchmark("pascal_ctx_59", "semantic", "pascal_ctx_59", "pascal_context", "pascal_ctx_d2/images/validation",
              semantic_dir="pascal_ctx_d2/annotations_ctx59/validation"),
    Benchmark("pascal_ctx_459", "semantic", "pascal_ctx_459", "pascal_context", "pascal_ctx_d2/images/validation",
              semantic_dir="pascal_ctx_d2/annotations_ctx459/validation", semantic_ext=".tif", ignore_label=65535),
    Benchmark("mapillary_vistas", "panoptic", "mapillary_vistas", "mapillary_vistas",
              "mapillary_vistas/validation/images",
              panoptic_json="mapillary_vistas/validation/panoptic/panoptic_2018.json",
              panoptic_dir="mapillary_vistas/validation/panoptic",
              semantic_dir="mapillary_vistas/validation/labels", ignore_label=65, semantic_source="labels"),
    _toy("toy_train", "train", "toy_seen", "panoptic"),
    _toy("toy_val", "val", "toy_seen", "panoptic"),
    _toy("toy_open", "open", "toy_open", "panoptic"),
    _toy("toy_open_large", "open_large", "toy_all", "semantic"),
]}

# Dataset keys the download stage understands (see pipeline.data.prepare.DATASETS).
DOWNLOADABLE = ("toy", "coco", "ade20k", "ade20k_full", "pascal_context", "mapillary_vistas", "coco_stuff")


def benchmark_files(bench: Benchmark) -> list[str]:
    """The paths (relative to the dataset root) that :class:`pipeline.data.loaders.BenchmarkDataset` reads for
    ``bench``: its image folder, the panoptic json and PNG folder of a panoptic benchmark, and the label-map folder
    where its semantic ground truth comes from label maps (semantic benchmarks, ``semantic_source: labels``)."""
    paths = [bench.image_dir]
    if bench.task == "panoptic":
        paths += [bench.panoptic_json, bench.panoptic_dir]
    if bench.semantic_dir and (bench.task == "semantic" or bench.semantic_source == "labels"):
        paths.append(bench.semantic_dir)
    return [p for p in paths if p]


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UnknownBenchmarkError(
            f"unknown benchmark {name!r}; valid benchmarks: {', '.join(sorted(BENCHMARKS))}") from None


def dataset_root(root: str | Path | None = None) -> Path:
    """Explicit root, else ``$DETECTRON2_DATASETS``, else ``datasets/``."""
    if root:
        return Path(root)
    return Path(os.environ.get("DETECTRON2_DATASETS") or DEFAULT_ROOT)


def benchmark_vocabulary(bench: Benchmark) -> Vocabulary:
    if bench.vocab.startswith("toy_"):
        from pipeline.data.toy import toy_vocabulary

        return toy_vocabulary(bench.vocab)
    return load_packaged_vocabulary(bench.vocab)
