"""Efficiency figures: inference images/s and peak memory per benchmark, vocabulary-size ratio.

Peak memory is CUDA's max allocated on GPU and the peak resident set size sampled during the run on
CPU. Small- and large-vocabulary runs alternate in one process so their ratio is measured side by side.
"""
from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import psutil
import torch

from models.classifier import FOVSeg
from pipeline.build.classifier import classifier_input_size
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict whose ``peak_mb`` is filled on exit."""
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield out
    finally:
        stop.set()
        th.join()
        out["peak_mb"] = peak[0] / 2**20


@torch.inference_mode()
def time_inference(model: FOVSeg, ds: BenchmarkDataset, store: ProposalStore, text: torch.Tensor, n_images: int,
                   n_proposals: int, short: int, max_size: int, device: torch.device) -> float:
    """Seconds per image for the classifier on the first ``n_images`` (proposals padded/cut to ``n_proposals``)."""
    model.eval().to(device)
    patch = model.visual.patch_size
    times = []
    for i in range(min(n_images, len(ds))):
        s = ds[i]
        masks, _ = store[s.image_id]
        h, w = s.image.shape[:2]
        m = np.zeros((n_proposals, h, w), bool)
        m[: min(len(masks), n_proposals)] = masks[:n_proposals]
        size = classifier_input_size(h, w, short, max_size, patch)
        image = torch.from_numpy(s.image).permute(2, 0, 1)[None].to(device)
        masks_t = torch.from_numpy(m)[None].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(image, masks_t, text, size=size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)


def compare_vocabularies(model: FOVSeg, runs: dict[str, tuple], repeats: int, **kw) -> dict[str, dict]:
    """``runs``: name -> (dataset, store, text). Alternates the runs ``repeats`` times; returns per-run
    images/s (median over repeats) and peak memory."""
    secs: dict[str, list[float]] = {k: [] for k in runs}
    peaks: dict[str, float] = {k: 0.0 for k in runs}
    for _ in range(repeats):
        for name, (ds, store, text) in runs.items():
            model.visual.clear_vocabulary_cache()  # the other runs' TeVA keys/values are not this run's memory
            with peak_memory(kw["device"]) as mem:
                secs[name].append(time_inference(model, ds, store, text, **kw))
            peaks[name] = max(peaks[name], mem["peak_mb"])
    return {k: {"images_per_s": 1 / statistics.median(v), "peak_memory_mb": peaks[k]} for k, v in secs.items()}


@torch.inference_mode()
def time_end_to_end(segment, ds: BenchmarkDataset, n_images: int, device: torch.device) -> dict:
    """Images/s and peak memory of the whole inference (``segment(image)``: generator + classifier + panoptic
    merging, e.g. :class:`pipeline.predict.Segmenter`) on the first ``n_images`` raw images (first one = warm-up)."""
    images = [ds[i].image for i in range(min(n_images, len(ds)))]
    times = []
    with peak_memory(device) as mem:
        for image in images:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            segment(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return {"images_per_s": 1 / statistics.median(times[1:] or times), "peak_memory_mb": mem["peak_mb"]}
