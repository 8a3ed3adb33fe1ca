"""PQ and mIoU accumulators vs the reference algorithms, side by side, on the same decoded maps.

``python -m pipeline.scripts.bench_metrics --images 200 --repeats 5``: synthetic 640x480 images with about
30 segments each (random RGB-style ids, crowd and void regions; the prediction is a shifted, relabelled,
partly merged copy). Ours (``pipeline.eval.metrics``) and the reference run alternately, every repeat; the
script prints medians, min-max spread and ratios, and checks that the numbers are identical.

References, written from the published algorithms (not copied): panopticapi's per-image
``pq_compute_single_core`` logic for PQ, a numpy bincount confusion matrix (detectron2's ``SemSegEvaluator``)
for mIoU. ``--end-to-end`` writes COCO-panoptic folders (``--e2e-images``, default 300) and times, as separate
processes, ``fovseg evaluate`` against the reference folder evaluation (``... reference-pq``), alternately.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OFFSET = 2**24
VOID = 0


# ---------------------------------------------------------------------------------------------- data
def synthetic_pair(rng: np.random.Generator, h: int = 480, w: int = 640, n_segments: int = 30,
                   num_classes: int = 133, n_things: int = 80):
    """(gt_map, gt_segments, pred_map, pred_segments) with uint32 RGB-style ids; segments carry ``area``."""
    cell = 8
    gh, gw = h // cell, w // cell
    seeds = rng.uniform(0, 1, (n_segments, 2)) * [gh, gw]
    yy, xx = np.mgrid[0:gh, 0:gw]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    region = d.argmin(-1).repeat(cell, 0).repeat(cell, 1)  # Voronoi cells, blocky boundaries
    gt_ids = (rng.choice(OFFSET - 1, n_segments, replace=False) + 1).astype(np.uint32)
    labels = rng.integers(0, num_classes, n_segments)
    void = rng.random(n_segments) < 0.08
    crowd = (rng.random(n_segments) < 0.08) & (labels < n_things) & ~void
    gt_map = np.where(void[region], 0, gt_ids[region]).astype(np.uint32)
    # prediction: shifted boundaries, some segments relabelled, some merged into a neighbour, some dropped
    shifted = np.roll(region, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
    target = np.arange(n_segments)
    merge = rng.random(n_segments) < 0.1
    target[merge] = rng.integers(0, n_segments, int(merge.sum()))
    pred_region = target[shifted]
    pred_ids = (rng.choice(OFFSET - 1, n_segments, replace=False) + 1).astype(np.uint32)
    pred_labels = np.where(rng.random(n_segments) < 0.15, rng.integers(0, num_classes, n_segments), labels)
    dropped = rng.random(n_segments) < 0.05
    pred_map = np.where(dropped[pred_region], 0, pred_ids[pred_region]).astype(np.uint32)
    gt_segs, pred_segs = [], []
    for k in range(n_segments):
        area = int((gt_map == gt_ids[k]).sum())
        if area and not void[k]:
            gt_segs.append({"id": int(gt_ids[k]), "label": int(labels[k]), "iscrowd": int(crowd[k]), "area": area})
        if (pred_map == pred_ids[k]).any():
            pred_segs.append({"id": int(pred_ids[k]), "label": int(pred_labels[k])})
    return gt_map, gt_segs, pred_map, pred_segs


def synthetic_semantic(rng: np.random.Generator, num_classes: int, ignore: int, h: int = 480, w: int = 640):
    """(gt, pred) int64 label maps: Voronoi regions, about 8% ignore, prediction shifted and 15% relabelled."""
    gt_map, segs, pred_map, _ = synthetic_pair(rng, h, w, num_classes=num_classes)
    ids = np.array([0] + [s["id"] for s in segs], np.int64)
    lab = np.array([ignore] + [s["label"] for s in segs], np.int64)
    order = np.argsort(ids)
    gt = lab[order][np.searchsorted(ids[order], gt_map).clip(0, len(ids) - 1)]
    gt[~np.isin(gt_map, ids)] = ignore
    pred = np.roll(gt, 5, axis=1)
    pred = np.where(pred == ignore, rng.integers(0, num_classes), pred)
    flip = rng.random(pred.shape) < 0.02
    pred[flip] = rng.integers(0, num_classes, int(flip.sum()))
    return gt, pred


# ----------------------------------------------------------------------------------------- reference
class ReferencePQ:
    """panopticapi-style per-image PQ statistics (np.unique over gt * 2^24 + pred), keyed by label."""

    def __init__(self, num_classes: int):
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)
        self.iou = np.zeros(num_classes, np.float64)

    def add(self, gt_map: np.ndarray, gt_segments: list[dict], pred_map: np.ndarray,
            pred_segments: list[dict]) -> None:
        gt_segms = {s["id"]: dict(s) for s in gt_segments}
        pred_segms = {s["id"]: dict(s) for s in pred_segments}
        ids, counts = np.unique(pred_map, return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            if i not in pred_segms:
                if i == VOID:
                    continue
                raise KeyError(f"segment id {i} in the prediction map but not in segments_info")
            pred_segms[i]["area"] = c
        missing = [i for i, s in pred_segms.items() if "area" not in s]
        if missing:
            raise KeyError(f"segments {missing[:5]} in segments_info but not in the prediction map")
        if not all("area" in s for s in gt_segms.values()):
            gids, gcounts = np.unique(gt_map, return_counts=True)
            garea = dict(zip(gids.tolist(), gcounts.tolist()))
            for i, s in gt_segms.items():
                s["area"] = garea.get(i, 0)
        joint = gt_map.astype(np.uint64) * OFFSET + pred_map.astype(np.uint64)
        inter: dict[tuple[int, int], int] = {}
        ids, counts = np.unique(joint, return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            inter[(i // OFFSET, i % OFFSET)] = c
        gt_matched, pred_matched = set(), set()
        for (g, p), n in inter.items():
            if g not in gt_segms or p not in pred_segms:
                continue
            gs, ps = gt_segms[g], pred_segms[p]
            if gs["iscrowd"] == 1 or gs["label"] != ps["label"]:
                continue
            union = ps["area"] + gs["area"] - n - inter.get((VOID, p), 0)
            iou = n / union
            if iou > 0.5:
                self.tp[gs["label"]] += 1
                self.iou[gs["label"]] += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd_by_label = {}
        for g, gs in gt_segms.items():
            if gs["iscrowd"] == 1:
                crowd_by_label[gs["label"]] = g
                continue
            if g not in gt_matched:
                self.fn[gs["label"]] += 1
        for p, ps in pred_segms.items():
            if p in pred_matched:
                continue
            ignored = inter.get((VOID, p), 0)
            if ps["label"] in crowd_by_label:
                ignored += inter.get((crowd_by_label[ps["label"]], p), 0)
            if ignored / ps["area"] > 0.5:
                continue
            self.fp[ps["label"]] += 1


def reference_confusion(conf: np.ndarray, gt: np.ndarray, pred: np.ndarray, ignore: int) -> None:
    """detectron2-style accumulation: mask the ignore label, one bincount of n * gt + pred per image."""
    n = conf.shape[0]
    keep = gt != ignore
    conf += np.bincount(n * gt[keep] + pred[keep], minlength=n * n).reshape(n, n)


def rgb2id_reference(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def reference_pq_folders(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path) -> dict:
    """Single-core folder evaluation the way panopticapi's ``pq_compute`` does it (PQ/SQ/RQ in percent)."""
    from PIL import Image

    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    cats = {c["id"]: i for i, c in enumerate(gt["categories"])}
    isthing = [bool(c.get("isthing", 0)) for c in gt["categories"]]
    preds = {a["image_id"]: a for a in pred["annotations"]}
    stat = ReferencePQ(len(cats))
    for ga in gt["annotations"]:
        pa = preds[ga["image_id"]]
        gmap = rgb2id_reference(np.array(Image.open(gt_folder / ga["file_name"]), dtype=np.uint32))
        pmap = rgb2id_reference(np.array(Image.open(pred_folder / pa["file_name"]), dtype=np.uint32))
        gsegs = [{"id": s["id"], "label": cats[s["category_id"]], "iscrowd": s.get("iscrowd", 0), "area": s["area"]}
                 for s in ga["segments_info"]]
        psegs = [{"id": s["id"], "label": cats[s["category_id"]]} for s in pa["segments_info"]]
        stat.add(gmap, gsegs, pmap, psegs)
    return pq_summary(stat, isthing)


def pq_summary(stat, isthing: list[bool]) -> dict:
    """panopticapi's pq_average: mean over classes with TP + FP + FN > 0."""
    out = {}
    thing = np.asarray(isthing, bool)
    for name, sel in (("All", np.ones_like(thing)), ("Things", thing), ("Stuff", ~thing)):
        pq = sq = rq = 0.0
        n = 0
        for c in np.flatnonzero(sel):
            tp, fp, fn, iou = int(stat.tp[c]), int(stat.fp[c]), int(stat.fn[c]), float(stat.iou[c])
            if tp + fp + fn == 0:
                continue
            n += 1
            pq += iou / (tp + 0.5 * fp + 0.5 * fn)
            sq += iou / tp if tp else 0.0
            rq += tp / (tp + 0.5 * fp + 0.5 * fn)
        out[name] = {"pq": 100 * pq / max(n, 1), "sq": 100 * sq / max(n, 1), "rq": 100 * rq / max(n, 1), "n": n}
    return out


def _panopticapi_single_core(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path) -> dict:
    from panopticapi.evaluation import pq_compute_single_core  # type: ignore[import-not-found]

    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    cats = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(ga, preds[ga["image_id"]]) for ga in gt["annotations"]]
    stat = pq_compute_single_core(0, pairs, str(gt_folder), str(pred_folder), cats)
    return {name: stat.pq_average(cats, isthing=flag)[0] for name, flag in
            (("All", None), ("Things", True), ("Stuff", False))}


# ------------------------------------------------------------------------------------------- timing
def _alternate(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Run each function once per repeat, alternating the order; seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def _line(label: str, t: list[float], per: int, unit: str = "ms/image") -> str:
    med = statistics.median(t)
    return (f"{label:<44}: {1000 * med / per:8.3f} {unit}  (spread {1000 * min(t) / per:.3f}-"
            f"{1000 * max(t) / per:.3f}, n={len(t)})")


def bench_pq(images: int, repeats: int, seed: int = 0) -> dict:
    from pipeline.eval.metrics import PQStat

    rng = np.random.default_rng(seed)
    data = [synthetic_pair(rng) for _ in range(images)]
    num_classes = 133
    results = {}

    def ours():
        s = PQStat(num_classes)
        for g, gs, p, ps in data:
            s.add(g, gs, p, ps)
        results["ours"] = s

    def ref():
        s = ReferencePQ(num_classes)
        for g, gs, p, ps in data:
            s.add(g, gs, p, ps)
        results["ref"] = s

    times = _alternate({"ours": ours, "reference": ref}, repeats)
    a, b = results["ours"], results["ref"]
    isthing = [c < 80 for c in range(num_classes)]
    sa, sb = pq_summary(a, isthing), pq_summary(b, isthing)
    same = (np.array_equal(a.tp, b.tp) and np.array_equal(a.fp, b.fp) and np.array_equal(a.fn, b.fn)
            and np.allclose(a.iou, b.iou, rtol=0, atol=1e-9)
            and all(abs(sa[k][m] - sb[k][m]) < 1e-9 for k in sa for m in ("pq", "sq", "rq")))
    segs = np.mean([len(d[1]) for d in data])
    print(f"PQ: {images} images 640x480, {segs:.1f} gt segments/image, {num_classes} classes, {repeats} repeats")
    print(_line("  pipeline.metrics.PQStat", times["ours"], images))
    print(_line("  reference (panopticapi per-image logic)", times["reference"], images))
    ratio = statistics.median(times["reference"]) / statistics.median(times["ours"])
    print(f"  speed-up {ratio:.2f}x; identical tp/fp/fn, IoU sums and PQ/SQ/RQ all/things/stuff: {same}; "
          f"PQ {sa['All']['pq']:.4f} vs {sb['All']['pq']:.4f}")
    return {"pq_ratio": ratio, "pq_identical": same}


def bench_miou(images: int, repeats: int, num_classes: int = 847, ignore: int = 65535, seed: int = 1) -> dict:
    from pipeline.eval.metrics import SemanticStat

    rng = np.random.default_rng(seed)
    data = [synthetic_semantic(rng, num_classes, ignore) for _ in range(images)]
    results = {}

    def ours():
        s = SemanticStat(num_classes, ignore)
        for g, p in data:
            s.add(g, p)
        results["ours"] = s.conf

    def ref():
        conf = np.zeros((num_classes, num_classes), np.int64)
        for g, p in data:
            reference_confusion(conf, g, p, ignore)
        results["ref"] = conf

    times = _alternate({"ours": ours, "reference": ref}, repeats)
    same = np.array_equal(results["ours"], results["ref"])
    print(f"mIoU: {images} images 640x480 int64 label maps, {num_classes} classes, ignore {ignore}, {repeats} repeats")
    print(_line("  pipeline.metrics.SemanticStat", times["ours"], images))
    print(_line("  reference (plain numpy bincount)", times["reference"], images))
    ratio = statistics.median(times["reference"]) / statistics.median(times["ours"])
    print(f"  speed-up {ratio:.2f}x; identical confusion matrix: {same}")
    return {"miou_ratio": ratio, "miou_identical": same}


# -------------------------------------------------------------------------------------- end to end
def write_panoptic_folders(root: Path, images: int, seed: int = 2) -> dict[str, Path]:
    """COCO-panoptic gt/pred json + PNG folders of synthetic pairs (133 categories, 80 things)."""
    from PIL import Image

    from pipeline.data.formats import id_to_rgb

    rng = np.random.default_rng(seed)
    cats = [{"id": 1000 + c, "name": f"class{c}", "isthing": int(c < 80)} for c in range(133)]
    paths = {k: root / k for k in ("gt", "pred")}
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    gt_anns, pred_anns, imgs = [], [], []
    for i in range(images):
        g, gs, p, ps = synthetic_pair(rng)
        name = f"{i:06d}.png"
        Image.fromarray(id_to_rgb(g)).save(paths["gt"] / name, compress_level=1)
        Image.fromarray(id_to_rgb(p)).save(paths["pred"] / name, compress_level=1)
        imgs.append({"id": i, "file_name": f"{i:06d}.jpg", "height": g.shape[0], "width": g.shape[1]})
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": [
            {"id": s["id"], "category_id": 1000 + s["label"], "iscrowd": s["iscrowd"], "area": s["area"]}
            for s in gs]})
        pred_anns.append({"image_id": i, "file_name": name, "segments_info": [
            {"id": s["id"], "category_id": 1000 + s["label"]} for s in ps]})
    (root / "gt.json").write_text(json.dumps({"images": imgs, "annotations": gt_anns, "categories": cats}))
    (root / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    return {"gt_json": root / "gt.json", "pred_json": root / "pred.json", "gt_folder": paths["gt"],
            "pred_folder": paths["pred"]}


def bench_end_to_end(images: int, repeats: int, workers: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_pq_") as tmp:
        t0 = time.perf_counter()
        f = write_panoptic_folders(Path(tmp), images)
        print(f"end to end: wrote {images} gt + pred PNG pairs in {time.perf_counter() - t0:.1f} s")
        flags = ["--gt_json_file", str(f["gt_json"]), "--pred_json_file", str(f["pred_json"]),
                 "--gt_folder", str(f["gt_folder"]), "--pred_folder", str(f["pred_folder"])]
        ours_json, ref_json = Path(tmp) / "ours.json", Path(tmp) / "ref.json"
        ours_cmd = [sys.executable, "-m", "pipeline.cli", "evaluate", *flags, "--json", str(ours_json)]
        if workers:
            ours_cmd += ["--workers", str(workers)]
        ref_cmd = [sys.executable, "-m", "pipeline.scripts.bench_metrics", "reference-pq", *flags,
                   "--json", str(ref_json)]
        env = dict(os.environ)

        def run(cmd):
            return lambda: subprocess.run(cmd, check=True, capture_output=True, env=env)

        times = _alternate({"ours": run(ours_cmd), "reference": run(ref_cmd)}, repeats)
        a, b = json.loads(ours_json.read_text()), json.loads(ref_json.read_text())
        impl = b.pop("implementation")
        same = all(abs(a[k] - b[k]) < 1e-9 for k in b)
        print(_line(f"  fovseg evaluate (whole process, {workers or os.cpu_count()} workers)", times["ours"], 1,
                    "ms total"))
        print(_line(f"  reference single-core ({impl}, whole process)", times["reference"], 1, "ms total"))
        ratio = statistics.median(times["reference"]) / statistics.median(times["ours"])
        print(f"  speed-up {ratio:.2f}x; identical PQ/SQ/RQ all/things/stuff: {same} (PQ {a['PQ']:.4f})")
        return {"e2e_ratio": ratio, "e2e_identical": same}


def reference_pq_main(argv: list[str]) -> None:
    """``reference-pq``: score folders single-core like panopticapi; write the summary in fovseg's keys."""
    ap = argparse.ArgumentParser(prog="bench_metrics reference-pq")
    for flag in ("--gt_json_file", "--pred_json_file", "--gt_folder", "--pred_folder", "--json"):
        ap.add_argument(flag, required=True, type=Path)
    a = ap.parse_args(argv)
    try:
        res = _panopticapi_single_core(a.gt_json_file, a.pred_json_file, a.gt_folder, a.pred_folder)
        impl = "panopticapi"
        res = {k: {m: 100 * v[m] for m in ("pq", "sq", "rq")} for k, v in res.items()}
    except ImportError:
        res = reference_pq_folders(a.gt_json_file, a.pred_json_file, a.gt_folder, a.pred_folder)
        impl = "own reference"
    out = {"implementation": impl}
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for m in ("pq", "sq", "rq"):
            out[f"{m.upper()}{suffix}"] = res[name][m]
    a.json.write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reference-pq"]:
        return reference_pq_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--classes", type=int, default=847, help="mIoU vocabulary size")
    ap.add_argument("--skip", choices=["pq", "miou"], action="append", default=[])
    ap.add_argument("--end-to-end", action="store_true", help="also time `fovseg evaluate` on PNG folders")
    ap.add_argument("--e2e-images", type=int, default=300)
    ap.add_argument("--e2e-repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="fovseg evaluate --workers (default: its own)")
    args = ap.parse_args(argv)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs; timings alternate ours/reference every repeat")
    if "pq" not in args.skip:
        bench_pq(args.images, args.repeats)
    if "miou" not in args.skip:
        bench_miou(args.images, args.repeats, args.classes)
    if args.end_to_end:
        bench_end_to_end(args.e2e_images, args.e2e_repeats, args.workers)


if __name__ == "__main__":
    main()
