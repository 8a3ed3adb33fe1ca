"""Checking a dataset's prepared detectron2 layout in place, before anything is downloaded or converted.

What each benchmark reads comes from one place, :func:`pipeline.data.registry.benchmark_files` (its
``Benchmark`` fields). A benchmark is *present* when its image folder holds images, its panoptic json parses,
lists annotations and every PNG and image it names exists, and its label-map folder holds a map for every image
it evaluates; *missing* when none of its paths exists; *partial* otherwise, each problem naming the path. The
files are verified by presence and structure (published sha256 exist for archives only, checked when they are
downloaded: pipeline.data.download). A path that cannot be read, entered or
listed stops the check with one "permission denied: <path>" error: it is neither missing nor partial.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.formats import permission_guard
from pipeline.data.registry import BENCHMARKS, Benchmark, benchmark_files
from pipeline.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SHOWN = 3  # file names shown per problem before "and N more"


@dataclass
class BenchmarkReport:
    """What one benchmark needs under the root and what of it is missing or broken."""

    benchmark: str
    dataset: str
    status: str  # present | partial | missing
    needs: list[str]  # paths relative to the root
    problems: list[str] = field(default_factory=list)  # each names a path and what is wrong with it
    counts: dict[str, int] = field(default_factory=dict)

    def manifest(self) -> dict:
        """The benchmark's entry in the download manifest: counts and how its files were verified."""
        return {**self.counts, "verified": "present and consistent (no published checksum)"}

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "dataset": self.dataset, "status": self.status, "needs": self.needs,
                "missing": self.problems, "counts": self.counts}


def dataset_benchmarks(dataset: str) -> list[Benchmark]:
    """The benchmarks a ``pipeline.data.prepare.DATASETS`` entry provides (registry order)."""
    return [b for b in BENCHMARKS.values() if b.dataset == dataset]


def _names(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """File names in ``folder`` ending in one of ``suffixes`` (case-insensitive); [] when it is no folder."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(suffixes) and not e.name.startswith("."))


def _some(folder: Path, names: list[str], what: str) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{', '.join(str(folder / n) for n in names[:SHOWN])}{more} ({what})"


def _panoptic(bench: Benchmark, root: Path, images: set[str], problems: list[str], counts: dict) -> list[str]:
    """Check the panoptic json and its PNGs; returns the image file names it annotates."""
    path, png_dir = root / bench.panoptic_json, root / bench.panoptic_dir
    if not path.is_file():
        problems.append(f"{path} (missing)")
        return []
    from pipeline.data.loaders import validate_panoptic_json

    try:
        ann = json.loads(path.read_text())
        validate_panoptic_json(ann, path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path} (not valid json: {exc})")
        return []
    except DatasetError as exc:
        problems.append(str(exc))
        return []
    annotations = ann.get("annotations", [])
    counts["annotations"] = len(annotations)
    if not annotations:
        problems.append(f"{path} (lists no annotations)")
    files = {str(im["id"]): im.get("file_name") for im in ann.get("images", [])}
    named = [files.get(str(a["image_id"])) or Path(a["file_name"]).with_suffix(bench.image_ext).name
             for a in annotations]
    if png_dir.is_dir():
        pngs = set(_names(png_dir, (".png",)))
        lost = [a["file_name"] for a in annotations if a["file_name"] not in pngs]
        if lost:
            problems.append(_some(png_dir, lost, f"{len(lost)} of the PNGs {path.name} lists are missing"))
    if images:
        lost = [n for n in named if n not in images]
        if lost:
            problems.append(_some(root / bench.image_dir, lost, f"{len(lost)} of the images {path.name} lists "
                                                                "are missing"))
    return named


def _labels(bench: Benchmark, root: Path, evaluated: list[str], problems: list[str], counts: dict) -> None:
    """Check that the label-map folder holds a map for every evaluated image."""
    folder = root / bench.semantic_dir
    if not folder.is_dir():
        return
    labels = set(_names(folder, (bench.semantic_ext,)))
    counts["label_maps"] = len(labels)
    if not labels:
        problems.append(f"{folder} (no *{bench.semantic_ext} label maps)")
        return
    lost = [Path(n).stem + bench.semantic_ext for n in evaluated if Path(n).stem + bench.semantic_ext not in labels]
    if lost:
        problems.append(_some(folder, lost, f"{len(lost)} label maps of its images are missing"))


def verify_benchmark(bench: Benchmark, root: str | Path) -> BenchmarkReport:
    """Check everything ``bench`` reads under ``root`` (see the module docstring); downloads nothing."""
    with permission_guard(root):
        return _verify_benchmark(bench, Path(root))


def _verify_benchmark(bench: Benchmark, root: Path) -> BenchmarkReport:
    needs = benchmark_files(bench)
    report = BenchmarkReport(bench.name, bench.dataset, "missing", needs)
    absent = [rel for rel in needs if not (root / rel).exists()]
    if len(absent) == len(needs):
        report.problems = [f"{root / rel} (missing)" for rel in needs]
        return report
    problems, counts = report.problems, report.counts
    image_dir = root / bench.image_dir
    images = _names(image_dir, IMAGE_SUFFIXES)
    counts["images"] = len(images)
    if not image_dir.is_dir():
        problems.append(f"{image_dir} (missing)")
    elif not images:
        problems.append(f"{image_dir} (no images)")
    if bench.task == "panoptic":
        if not (root / bench.panoptic_dir).is_dir():
            problems.append(f"{root / bench.panoptic_dir} (missing)")
        evaluated = _panoptic(bench, root, set(images), problems, counts)
    else:
        evaluated = images
    if bench.semantic_dir in needs:
        if not (root / bench.semantic_dir).is_dir():
            problems.append(f"{root / bench.semantic_dir} (missing)")
        _labels(bench, root, evaluated, problems, counts)
    report.status = "partial" if problems else "present"
    return report


def verify_dataset(dataset: str, root: str | Path) -> list[BenchmarkReport]:
    """One report per benchmark ``dataset`` provides."""
    return [verify_benchmark(b, root) for b in dataset_benchmarks(dataset)]


def describe_problems(reports: list[BenchmarkReport]) -> str:
    """One line: each incomplete benchmark and what it misses."""
    return "; ".join(f"{r.benchmark} misses {', '.join(r.problems)}" for r in reports if r.status != "present")
