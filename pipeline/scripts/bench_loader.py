"""The training loader at the paper's sizes: seconds and bytes per COCO-size image.

``python -m pipeline.scripts.bench_loader [--images 32 --batch 16 --steps 4 --downsample 4]``: writes synthetic
COCO-size samples (640 x 480 JPEGs, a panoptic PNG with about 20 segments, a proposal store with 100 proposals per
image), then times the loader path a worker runs for one batch (read the image and the panoptic PNG, decode the
stored proposals, one LSJ draw to the classifier's 896 x 896 input and 256 x 256 mask grid, collate and bit-pack)
on one thread, and measures what crosses the worker boundary (the pickled batch, per image). The first pass
decodes from disk (the sample cache is off), as a paper-scale epoch does.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GOAL_SECONDS, GOAL_MB = 0.1, 10.0  # per image


def write_synthetic_coco(root: Path, n: int, proposals: int, downsample: int, seed: int = 0) -> None:
    """``coco/train2017`` + panoptic PNGs + json (COCO's 133 categories) and a proposal store under ``root``."""
    from pipeline.data.formats import write_image, write_json, write_panoptic_png
    from pipeline.data.proposal_store import ProposalWriter
    from pipeline.data.vocab import load_packaged_vocabulary

    vocab = load_packaged_vocabulary("coco_panoptic")
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    yy, xx = np.mgrid[:h, :w]
    annotations, images = [], []
    with ProposalWriter(root / "proposals", downsample=downsample) as store:
        for i in range(n):
            image_id = f"{i:012d}"
            ids = np.zeros((h, w), np.int64)
            segments = []
            for sid in range(1, 21):  # ellipses, later ones on top
                cy, cx, ry, rx = rng.integers(0, h), rng.integers(0, w), rng.integers(20, 120), rng.integers(20, 160)
                ids[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = sid
            for sid in np.unique(ids[ids > 0]).tolist():
                c = vocab.classes[int(rng.integers(len(vocab)))]
                segments.append({"id": sid, "category_id": c.id, "iscrowd": 0, "area": int((ids == sid).sum())})
            smooth = (np.sin(yy / 7.0)[..., None] * 60 + rng.integers(0, 120, (1, 1, 3))).astype(np.uint8)
            image = smooth + (ids % 7 * 20).astype(np.uint8)[..., None]
            write_image(root / "coco" / "train2017" / f"{image_id}.jpg", image)
            write_panoptic_png(root / "coco" / "panoptic_train2017" / f"{image_id}.png", ids)
            annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
            images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
            masks = np.stack([((yy - rng.integers(0, h)) / rng.integers(10, 150)) ** 2 +
                              ((xx - rng.integers(0, w)) / rng.integers(10, 200)) ** 2 < 1 for _ in range(proposals)])
            store.add(image_id, masks, rng.random(proposals).astype(np.float32))
    write_json(root / "coco" / "annotations" / "panoptic_train2017.json", {
        "images": images, "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in vocab.classes]})


def measure(root: Path, batch: int, steps: int) -> dict:
    """Loader seconds per image (one thread, from disk) and pickled megabytes per image."""
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.proposal_store import ProposalStore
    from pipeline.data.registry import get_benchmark
    from pipeline.train.data import StepBatches, TrainSet

    ds = BenchmarkDataset(get_benchmark("coco_panoptic_train"), root)
    ts = TrainSet(ds, ProposalStore(root / "proposals"), 1024, 0.1, 2.0, "proposals", 100, image_size=896,
                  grid=256, cache_bytes=0)
    batches = StepBatches(ts, batch, seed=0)
    seconds, sizes = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        b = batches[step]
        seconds.append((time.perf_counter() - t0) / batch)
        sizes.append(len(pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)) / batch / 1e6)
    return {"seconds_per_image": statistics.median(seconds), "mb_per_image": statistics.median(sizes),
            "proposals_per_image": float(b.valid.sum()) / batch}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.scripts.bench_loader", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--downsample", type=int, default=4, help="the store's mask resolution (paper preset: 4)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_coco(root, args.images, args.proposals, args.downsample)
        r = measure(root, args.batch, args.steps)
    print(f"loader, COCO-size images (640x480, {r['proposals_per_image']:.0f} proposals kept), batch {args.batch}, "
          f"1 thread, store downsample {args.downsample}:")
    print(f"  {r['seconds_per_image']:.3f} s per image (goal <= {GOAL_SECONDS})")
    print(f"  {r['mb_per_image']:.2f} MB per image crossing the worker boundary (goal <= {GOAL_MB})")
    return r


if __name__ == "__main__":
    main()
