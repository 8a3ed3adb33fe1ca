"""``fovseg evaluate``: score a folder of predictions against ground truth, without a model.

Panoptic (COCO-panoptic json + PNG folders; panopticapi's underscore flags are aliases, so its scripts switch
unchanged)::

    fovseg evaluate --gt-json-file gt.json --pred-json-file pred.json [--gt-folder gt/] [--pred-folder pred/]

Categories (ids, names, ``isthing``) come from the gt json; folders default to the json path without
``.json``, as in panopticapi. Gt areas are read from the gt json, as panopticapi does. Both jsons are checked
against the COCO-panoptic schema and for consistency (each image once, segment ids unique and matching the
PNG, known category ids, equal PNG sizes); every refusal is one line naming the file, image and segment.
Semantic (label PNG/TIF folders, files paired by name; a label value k is the k-th class of the vocabulary)::

    fovseg evaluate --gt-folder gt/ --pred-folder pred/ --vocab ade20k_150 [--ignore-label 255]

Prints the PQ/SQ/RQ table (All, Things, Stuff) or mIoU/fwIoU/mACC/pACC; ``--per-class FILE.csv`` writes
per-class figures, ``--json FILE`` the summary with the evaluate stage's keys (percent). PNGs are
decoded in ``--workers`` processes (default: all CPUs). Imports stay light (numpy, Pillow, pydantic): no torch.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from pipeline.data.formats import DatasetError, atomic_path, pixel_limit_guard, write_json
from pipeline.data.vocab import load_vocabulary, vocabulary_names
from pipeline.errors import FovsegError
from pipeline.eval.metrics import PQStat, SemanticStat
from pipeline.eval.panoptic_json import (
    PanopticAnnotation,
    PanopticGroundTruthFile,
    PanopticPredictionFile,
    check_annotations,
    check_ground_truth,
    parse_panoptic_json,
)

LABEL_SUFFIXES = (".png", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------ decoding
def read_panoptic_ids(path: Path) -> np.ndarray:
    """Segment ids (uint32, R + 256 G + 256^2 B) of a COCO-panoptic PNG (a decompression bomb is refused)."""
    with pixel_limit_guard(path):  # a bomb: DatasetError naming the file, not caught below
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except FileNotFoundError:
            raise DatasetError(f"missing panoptic png {path}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"cannot decode panoptic png {path} ({exc})") from None
    ids = np.ascontiguousarray(rgba).view("<u4")[..., 0]  # bytes R, G, B, A -> one little-endian word
    return ids & np.uint32(0xFFFFFF)


def read_labels(path: Path) -> np.ndarray:
    """A single-channel label map as stored (uint8 / uint16 / int32); a decompression bomb is refused."""
    with pixel_limit_guard(path):  # a bomb: DatasetError naming the file, not caught below
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except FileNotFoundError:
            raise DatasetError(f"missing label map {path}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"cannot decode label map {path} ({exc})") from None
    if arr.ndim != 2:
        raise DatasetError(f"label map {path} has shape {arr.shape}; expected a single-channel image")
    return arr


# ------------------------------------------------------------------------------------------ panoptic
class PanopticTask(NamedTuple):
    """One image to score: its PNGs, segments (contiguous labels) and where they were listed."""

    image_id: Any
    gt_png: Path
    pred_png: Path
    gt_segments: list[dict]
    pred_segments: list[dict]
    gt_json: Path
    pred_json: Path


def distinct_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a segment-id map (one comparison pass; only run starts are sorted)."""
    flat = ids.reshape(-1)
    if flat.size == 0:
        return flat[:0]
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    return np.unique(flat[starts])


def _more(ids: np.ndarray) -> str:
    return f" ({ids.size - 1} more such id(s))" if ids.size > 1 else ""


def check_png_ids(png: Path, ids: np.ndarray, segments: list[dict], source: Path, image_id: Any) -> None:
    """Every non-void id of the PNG is in segments_info and every segments_info id is in the PNG."""
    present = distinct_ids(ids).astype(np.int64)
    present = present[present != 0]
    listed = np.array([s["id"] for s in segments], np.int64)
    extra = np.setdiff1d(present, listed)
    if extra.size:
        raise DatasetError(f"{png}: segment id {int(extra[0])} is in the PNG without segments_info (image_id "
                           f"{image_id!r} in {source} does not list it){_more(extra)}")
    absent = np.setdiff1d(listed, present)
    if absent.size:
        raise DatasetError(f"{source}: image_id {image_id!r} lists segment id {int(absent[0])} in segments_info but "
                           f"{png} has no pixel with that id{_more(absent)}")


def score_panoptic_image(stat: PQStat, task: PanopticTask) -> None:
    """Decode one image pair, check it against its json records and add it to ``stat``."""
    gt, pred = read_panoptic_ids(task.gt_png), read_panoptic_ids(task.pred_png)
    if gt.shape != pred.shape:
        raise DatasetError(f"{task.pred_png} is {pred.shape[1]}x{pred.shape[0]} but {task.gt_png} is "
                           f"{gt.shape[1]}x{gt.shape[0]} (image_id {task.image_id!r}); predictions must have the "
                           "ground truth's size")
    check_png_ids(task.gt_png, gt, task.gt_segments, task.gt_json, task.image_id)
    check_png_ids(task.pred_png, pred, task.pred_segments, task.pred_json, task.image_id)
    try:
        stat.add(gt, task.gt_segments, pred, task.pred_segments, strict=True)
    except ValueError as exc:
        raise DatasetError(f"{task.pred_png} (image_id {task.image_id!r}): {exc}") from None


def _panoptic_chunk(args: tuple[int, list[PanopticTask]]) -> PQStat:
    num_classes, tasks = args
    stat = PQStat(num_classes)
    for task in tasks:
        score_panoptic_image(stat, task)
    return stat


def _segments(ann: PanopticAnnotation, label_of: dict[int, int], source: Path, gt: bool) -> list[dict]:
    """segments_info as PQStat segments (contiguous labels); an unknown category id is an error."""
    out = []
    for s in ann.segments_info:
        if s.category_id not in label_of:
            raise DatasetError(f"{source}: image_id {ann.image_id!r}, segment id {s.id} has category_id "
                               f"{s.category_id!r}, which is not among the gt json's categories")
        seg = {"id": s.id, "label": label_of[s.category_id]}
        if gt:
            seg["iscrowd"] = s.iscrowd
            if s.area is not None:
                seg["area"] = s.area
        out.append(seg)
    return out


def panoptic_tasks(gt_json: Path, pred_json: Path, gt_folder: Path,
                   pred_folder: Path) -> tuple[list[dict], list[PanopticTask]]:
    """(categories, per-image tasks) from COCO-panoptic jsons; every inconsistency is an error naming it."""
    gt = parse_panoptic_json(gt_json, PanopticGroundTruthFile, "pass the COCO-panoptic ground-truth json with "
                                                               "--gt-json-file")
    pred = parse_panoptic_json(pred_json, PanopticPredictionFile, "pass the prediction json with --pred-json-file")
    check_ground_truth(gt_json, gt)
    check_annotations(pred_json, pred.annotations)
    categories = [c.model_dump() for c in gt.categories]
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    gt_ids = {a.image_id for a in gt.annotations}
    stray = next((a for a in pred.annotations if a.image_id not in gt_ids), None)
    if stray is not None:
        raise DatasetError(f"{pred_json}: image_id {stray.image_id!r} (file {stray.file_name}) is not in the ground "
                           f"truth {gt_json} (its image ids are e.g. {[a.image_id for a in gt.annotations[:3]]})")
    preds = {a.image_id: a for a in pred.annotations}
    tasks, missing_files = [], []
    for ga in gt.annotations:
        pa = preds.get(ga.image_id)
        if pa is None:
            raise DatasetError(f"{pred_json} has no prediction for image_id {ga.image_id!r} "
                               f"(file {ga.file_name} in {gt_json})")
        gt_png, pred_png = gt_folder / ga.file_name, pred_folder / pa.file_name
        missing_files += [str(p) for p in (gt_png, pred_png) if not p.is_file()]
        tasks.append(PanopticTask(ga.image_id, gt_png, pred_png, _segments(ga, label_of, gt_json, True),
                                  _segments(pa, label_of, pred_json, False), gt_json, pred_json))
    if missing_files:
        raise DatasetError(f"{len(missing_files)} PNG(s) listed in the jsons are not in the folders, e.g. "
                           f"{missing_files[:3]}; check --gt-folder / --pred-folder")
    return categories, tasks


def _map_chunks(fn, tasks: list, workers: int, payload) -> list:
    """Run ``fn((payload, chunk))`` over interleaved chunks, in worker processes when it pays."""
    workers = max(1, min(workers, len(tasks) // 4 or 1))  # at least 4 images per process
    chunks = [tasks[i::workers] for i in range(workers)]
    if workers == 1:
        return [fn((payload, tasks))]
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(fn, [(payload, c) for c in chunks]))


def evaluate_panoptic(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path, workers: int) -> dict:
    categories, tasks = panoptic_tasks(gt_json, pred_json, gt_folder, pred_folder)
    stat = PQStat(len(categories))
    for part in _map_chunks(_panoptic_chunk, tasks, workers, len(categories)):
        stat.merge(part)
    is_thing = [bool(c["isthing"]) for c in categories]
    out = stat.summary(is_thing)
    valid = (stat.tp + stat.fp + stat.fn) > 0
    thing = np.asarray(is_thing, bool)
    out.update({"n": int(valid.sum()), "n_th": int((valid & thing).sum()), "n_st": int((valid & ~thing).sum()),
                "images": len(tasks), "classes": [c["name"] or str(c["id"]) for c in categories]})
    return {"summary": out, "stat": stat, "categories": categories}


def _panoptic_rows(result: dict) -> list[dict]:
    s = result["stat"]
    rows = []
    for i, c in enumerate(result["categories"]):
        denom = s.tp[i] + 0.5 * s.fp[i] + 0.5 * s.fn[i]
        rows.append({"category_id": c["id"], "name": c["name"], "isthing": c["isthing"],
                     "PQ": 100 * s.iou[i] / denom if denom else "", "SQ": 100 * s.iou[i] / s.tp[i] if s.tp[i] else
                     (0.0 if denom else ""), "RQ": 100 * s.tp[i] / denom if denom else "",
                     "TP": int(s.tp[i]), "FP": int(s.fp[i]), "FN": int(s.fn[i])})
    return rows


def print_panoptic(out: dict) -> None:
    print(f"{'':10}| {'PQ':>6} {'SQ':>6} {'RQ':>6} {'N':>5}")
    print("-" * 38)
    for name, sfx, n in (("All", "", "n"), ("Things", "_th", "n_th"), ("Stuff", "_st", "n_st")):
        print(f"{name:10}| {out['PQ' + sfx]:6.1f} {out['SQ' + sfx]:6.1f} {out['RQ' + sfx]:6.1f} {out[n]:5d}")


# ------------------------------------------------------------------------------------------ semantic
def _semantic_chunk(args: tuple[tuple[int, int], list]) -> SemanticStat:
    (num_classes, ignore), tasks = args
    stat = SemanticStat(num_classes, ignore)
    for gt_path, pred_path in tasks:
        gt, pred = read_labels(gt_path), read_labels(pred_path)
        if gt.shape != pred.shape:
            raise DatasetError(f"{pred_path} has shape {pred.shape} but {gt_path} has {gt.shape}")
        try:
            stat.add(gt, pred)
        except ValueError as exc:
            raise DatasetError(f"{pred_path} / {gt_path}: {exc}") from None
    return stat


def label_maps(folder: Path, flag: str) -> dict[str, Path]:
    """The folder's label maps by file stem; one stem in two files (``a.png`` and ``a.tif``) is an error."""
    if not folder.is_dir():
        raise DatasetError(f"{flag} {folder} is not a folder")
    maps: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in LABEL_SUFFIXES:
            continue
        if p.stem in maps:
            raise DatasetError(f"{flag} {folder}: image {p.stem!r} is listed twice ({maps[p.stem].name} and "
                               f"{p.name}); keep one label map per image")
        maps[p.stem] = p
    return maps


def semantic_tasks(gt_folder: Path, pred_folder: Path) -> list[tuple[Path, Path]]:
    """(gt, prediction) label-map pairs, paired by file stem; every gt map needs a prediction."""
    gt_maps = label_maps(gt_folder, "--gt-folder")
    preds = label_maps(pred_folder, "--pred-folder")
    gts = sorted(gt_maps.values())
    if not gts:
        raise DatasetError(f"no label maps ({', '.join(LABEL_SUFFIXES)}) in {gt_folder}: 0 images, nothing to "
                           "evaluate")
    missing = [g.name for g in gts if g.stem not in preds]
    if missing:
        raise DatasetError(f"{len(missing)} ground-truth map(s) have no prediction in {pred_folder}, e.g. "
                           f"{missing[:3]} (files are paired by name, any of {', '.join(LABEL_SUFFIXES)})")
    return [(g, preds[g.stem]) for g in gts]


def evaluate_semantic(gt_folder: Path, pred_folder: Path, vocab_spec: str, ignore: int | None, workers: int) -> dict:
    vocab = load_vocabulary(vocab_spec)
    n = len(vocab)
    ignore = (255 if n <= 255 else 65535) if ignore is None else ignore
    tasks = semantic_tasks(gt_folder, pred_folder)
    stat = SemanticStat(n, ignore)
    for part in _map_chunks(_semantic_chunk, tasks, workers, (n, ignore)):
        stat.merge(part)
    out = stat.summary()
    out.update({"images": len(tasks), "ignore_label": ignore, "classes": vocab.names})
    return {"summary": out, "stat": stat, "names": vocab.names}


def _semantic_rows(result: dict) -> list[dict]:
    conf, unpredicted = result["stat"].conf, result["stat"].unpredicted
    gt_px, pred_px, tp = conf.sum(1) + unpredicted, conf.sum(0), np.diag(conf)
    rows = []
    for i, name in enumerate(result["names"]):
        valid = gt_px[i] > 0
        rows.append({"label": i, "name": name, "IoU": 100 * tp[i] / (gt_px[i] + pred_px[i] - tp[i]) if valid else "",
                     "ACC": 100 * tp[i] / gt_px[i] if valid else "", "gt_pixels": int(gt_px[i]),
                     "pred_pixels": int(pred_px[i]), "unpredicted_pixels": int(unpredicted[i])})
    return rows


def print_semantic(out: dict) -> None:
    print(f"{'mIoU':>7} {'fwIoU':>7} {'mACC':>7} {'pACC':>7}  images")
    print(f"{out['mIoU']:7.2f} {out['fwIoU']:7.2f} {out['mACC']:7.2f} {out['pACC']:7.2f}  {out['images']}")


# ------------------------------------------------------------------------------------------------ CLI
def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _add_flag(group: argparse._ArgumentGroup, name: str, **kwargs: Any) -> None:
    """``--kebab-case`` with panopticapi's ``--under_score`` spelling as an alias."""
    group.add_argument(f"--{name}", f"--{name.replace('-', '_')}", dest=name.replace("-", "_"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """``fovseg evaluate``'s flags, grouped by mode."""
    ap = argparse.ArgumentParser(prog="fovseg evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    pan = ap.add_argument_group("panoptic mode (COCO-panoptic jsons + PNG folders)")
    _add_flag(pan, "gt-json-file", type=Path, metavar="JSON", help="COCO-panoptic ground truth json")
    _add_flag(pan, "pred-json-file", type=Path, metavar="JSON", help="COCO-panoptic prediction json")
    both = ap.add_argument_group("folders (both modes)")
    _add_flag(both, "gt-folder", type=Path, metavar="DIR", help="ground-truth PNGs (panoptic default: the gt json "
          "path without .json) or label maps (semantic)")
    _add_flag(both, "pred-folder", type=Path, metavar="DIR", help="predicted PNGs (panoptic default: the pred json "
          "path without .json) or label maps (semantic, paired with the gt maps by file name)")
    sem = ap.add_argument_group("semantic mode (label-map folders)")
    sem.add_argument("--vocab", metavar="NAME|FILE", help="vocabulary of the label values: a name (" +
                     ", ".join(vocabulary_names()) + ") or a vocabulary JSON file")
    _add_flag(sem, "ignore-label", type=int, default=None, metavar="K",
          help="ignored gt label (default 255, or 65535 above 255 classes)")
    out = ap.add_argument_group("output")
    out.add_argument("--per-class", type=Path, metavar="CSV", help="write per-class figures to this CSV")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the summary (evaluate-stage keys, percent) "
                     "to this json")
    out.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: CPUs)")
    return ap


def _run_panoptic(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    if not (args.gt_json_file and args.pred_json_file):
        raise DatasetError("panoptic evaluation needs both --gt-json-file and --pred-json-file")
    if args.vocab or args.ignore_label is not None:
        raise DatasetError("--vocab and --ignore-label are semantic-mode flags; panoptic categories come from "
                           "--gt-json-file")
    gt_folder = args.gt_folder or args.gt_json_file.with_suffix("")
    pred_folder = args.pred_folder or args.pred_json_file.with_suffix("")
    result = evaluate_panoptic(args.gt_json_file, args.pred_json_file, gt_folder, pred_folder, args.workers)
    print_panoptic(result["summary"])
    return result, _panoptic_rows(result)


def _run_semantic(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    if not (args.gt_folder and args.pred_folder and args.vocab):
        raise DatasetError("give --gt-json-file and --pred-json-file (panoptic), or --gt-folder, --pred-folder "
                           "and --vocab (semantic)")
    result = evaluate_semantic(args.gt_folder, args.pred_folder, args.vocab, args.ignore_label, args.workers)
    print_semantic(result["summary"])
    return result, _semantic_rows(result)


def run(args: argparse.Namespace) -> dict:
    """Score in the mode the flags select; write ``--per-class`` and ``--json``; the summary."""
    panoptic = args.gt_json_file or args.pred_json_file
    result, rows = _run_panoptic(args) if panoptic else _run_semantic(args)
    if args.per_class:
        write_csv(args.per_class, rows)
    if args.json:
        write_json(args.json, result["summary"])
    return result["summary"]


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FovsegError, OSError, ValueError) as exc:  # DatasetError and VocabularyError are ValueErrors
        print(f"fovseg evaluate: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
