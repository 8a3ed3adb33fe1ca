"""``fovseg evaluate``: score a folder of predictions against ground truth, without a model.

Panoptic (COCO-panoptic json + PNG folders; panopticapi's own flags, so its scripts switch unchanged)::

    fovseg evaluate --gt_json_file gt.json --pred_json_file pred.json [--gt_folder gt/] [--pred_folder pred/]

Categories (ids, names, ``isthing``) come from the gt json; folders default to the json path without
``.json``, as in panopticapi. Gt areas are read from the gt json, as panopticapi does. Semantic (label
PNG/TIF folders, files paired by name; a label value k is the k-th class of the vocabulary)::

    fovseg evaluate --gt_folder gt/ --pred_folder pred/ --vocab ade20k_150 [--ignore-label 255]

Prints the PQ/SQ/RQ table (All, Things, Stuff) or mIoU/fwIoU/mACC/pACC; ``--per-class FILE.csv`` writes
per-class figures, ``--json FILE`` the summary with the evaluate stage's keys (percent). PNGs are
decoded in ``--workers`` processes (default: all CPUs). Imports stay light (numpy, Pillow): no torch.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.formats import DatasetError, atomic_path, read_json, write_json
from pipeline.eval.metrics import PQStat, SemanticStat

LABEL_SUFFIXES = (".png", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------ decoding
def read_panoptic_ids(path: Path) -> np.ndarray:
    """Segment ids (uint32, R + 256 G + 256^2 B) of a COCO-panoptic PNG."""
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
    """A single-channel label map as stored (uint8 / uint16 / int32)."""
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
def _panoptic_chunk(args: tuple[int, list]) -> PQStat:
    num_classes, tasks = args
    stat = PQStat(num_classes)
    for gt_png, pred_png, gsegs, psegs in tasks:
        gt, pred = read_panoptic_ids(gt_png), read_panoptic_ids(pred_png)
        if gt.shape != pred.shape:
            raise DatasetError(f"{pred_png} is {pred.shape[1]}x{pred.shape[0]} but {gt_png} is "
                               f"{gt.shape[1]}x{gt.shape[0]}; predictions must have the ground truth's size")
        try:
            stat.add(gt, gsegs, pred, psegs, strict=True)
        except ValueError as exc:
            raise DatasetError(f"{pred_png}: {exc}") from None
    return stat


def panoptic_tasks(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path):
    """(categories, per-image tasks) from COCO-panoptic jsons; every inconsistency is an error naming it."""
    gt = read_json(gt_json, "pass the COCO-panoptic ground-truth json with --gt_json_file")
    pred = read_json(pred_json, "pass the prediction json with --pred_json_file")
    for name, obj, keys in ((gt_json, gt, ("annotations", "categories")), (pred_json, pred, ("annotations",))):
        missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise DatasetError(f"{name} has no {missing} key; expected COCO-panoptic format")
    categories = gt["categories"]
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    tasks, missing_files = [], []
    for ga in gt["annotations"]:
        pa = preds.get(ga["image_id"])
        if pa is None:
            raise DatasetError(f"{pred_json} has no prediction for image_id {ga['image_id']!r} "
                               f"(file {ga['file_name']} in {gt_json})")
        gt_png, pred_png = gt_folder / ga["file_name"], pred_folder / pa["file_name"]
        missing_files += [str(p) for p in (gt_png, pred_png) if not p.is_file()]
        gsegs = [{"id": s["id"], "label": _label(label_of, s, gt_json), "iscrowd": s.get("iscrowd", 0),
                  **({"area": s["area"]} if "area" in s else {})} for s in ga["segments_info"]]
        psegs = [{"id": s["id"], "label": _label(label_of, s, pred_json)} for s in pa["segments_info"]]
        tasks.append((gt_png, pred_png, gsegs, psegs))
    if missing_files:
        raise DatasetError(f"{len(missing_files)} PNG(s) listed in the jsons are not in the folders, e.g. "
                           f"{missing_files[:3]}; check --gt_folder / --pred_folder")
    return categories, tasks


def _label(label_of: dict, seg: dict, source: Path) -> int:
    try:
        return label_of[seg["category_id"]]
    except KeyError:
        raise DatasetError(f"{source}: segment {seg.get('id')} has category_id {seg.get('category_id')!r}, "
                           "which is not among the gt json's categories") from None


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
    is_thing = [bool(c.get("isthing", 0)) for c in categories]
    out = stat.summary(is_thing)
    valid = (stat.tp + stat.fp + stat.fn) > 0
    thing = np.asarray(is_thing, bool)
    out.update({"n": int(valid.sum()), "n_th": int((valid & thing).sum()), "n_st": int((valid & ~thing).sum()),
                "images": len(tasks), "classes": [c.get("name", str(c["id"])) for c in categories]})
    return {"summary": out, "stat": stat, "categories": categories}


def _panoptic_rows(result: dict) -> list[dict]:
    s = result["stat"]
    rows = []
    for i, c in enumerate(result["categories"]):
        denom = s.tp[i] + 0.5 * s.fp[i] + 0.5 * s.fn[i]
        rows.append({"category_id": c["id"], "name": c.get("name", ""), "isthing": int(c.get("isthing", 0)),
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


def semantic_tasks(gt_folder: Path, pred_folder: Path) -> list[tuple[Path, Path]]:
    for folder, flag in ((gt_folder, "--gt_folder"), (pred_folder, "--pred_folder")):
        if not folder.is_dir():
            raise DatasetError(f"{flag} {folder} is not a folder")
    gts = sorted(p for p in gt_folder.iterdir() if p.suffix.lower() in LABEL_SUFFIXES)
    if not gts:
        raise DatasetError(f"no label maps ({', '.join(LABEL_SUFFIXES)}) in {gt_folder}")
    preds = {p.stem: p for p in pred_folder.iterdir() if p.suffix.lower() in LABEL_SUFFIXES}
    missing = [g.name for g in gts if g.stem not in preds]
    if missing:
        raise DatasetError(f"{len(missing)} ground-truth map(s) have no prediction in {pred_folder}, e.g. "
                           f"{missing[:3]} (files are paired by name, any of {', '.join(LABEL_SUFFIXES)})")
    return [(g, preds[g.stem]) for g in gts]


def evaluate_semantic(gt_folder: Path, pred_folder: Path, vocab_spec: str, ignore: int | None, workers: int) -> dict:
    from pipeline.data.vocab import load_vocabulary

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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fovseg evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt_json_file", type=Path, help="COCO-panoptic ground truth json (panoptic mode)")
    ap.add_argument("--pred_json_file", type=Path, help="COCO-panoptic prediction json")
    ap.add_argument("--gt_folder", type=Path, help="gt PNG folder (panoptic: default gt json path without .json)")
    ap.add_argument("--pred_folder", type=Path, help="prediction PNG folder (default: pred json without .json)")
    ap.add_argument("--vocab", help="semantic mode: packaged vocabulary name (e.g. ade20k_150) or a vocabulary json")
    ap.add_argument("--ignore-label", type=int, default=None,
                    help="semantic mode: ignored gt label (default 255, or 65535 above 255 classes)")
    ap.add_argument("--per-class", type=Path, help="write per-class figures to this CSV")
    ap.add_argument("--json", type=Path, help="write the summary (evaluate-stage keys, percent) to this json")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: CPUs)")
    return ap


def run(args: argparse.Namespace) -> dict:
    if args.gt_json_file or args.pred_json_file:
        if not (args.gt_json_file and args.pred_json_file):
            raise DatasetError("panoptic evaluation needs both --gt_json_file and --pred_json_file")
        gt_folder = args.gt_folder or args.gt_json_file.with_suffix("")
        pred_folder = args.pred_folder or args.pred_json_file.with_suffix("")
        result = evaluate_panoptic(args.gt_json_file, args.pred_json_file, gt_folder, pred_folder, args.workers)
        print_panoptic(result["summary"])
        rows = _panoptic_rows(result)
    else:
        if not (args.gt_folder and args.pred_folder and args.vocab):
            raise DatasetError("give --gt_json_file/--pred_json_file (panoptic) or --gt_folder, --pred_folder "
                               "and --vocab (semantic)")
        result = evaluate_semantic(args.gt_folder, args.pred_folder, args.vocab, args.ignore_label, args.workers)
        print_semantic(result["summary"])
        rows = _semantic_rows(result)
    if args.per_class:
        write_csv(args.per_class, rows)
    if args.json:
        write_json(args.json, result["summary"])
    return result["summary"]


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError) as exc:  # DatasetError and VocabularyError are ValueErrors
        print(f"fovseg evaluate: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
