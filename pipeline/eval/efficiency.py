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
from pipeline.config import ClipParams, EvaluateParams, ModelParams
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
                   n_proposals: int, evaluate: EvaluateParams, device: torch.device) -> float:
    """Seconds per image for the classifier on the first ``n_images`` (proposals padded/cut to ``n_proposals``)."""
    model.eval().to(device)
    times = []
    for i in range(min(n_images, len(ds))):
        s = ds[i]
        masks, _ = store[s.image_id]
        h, w = s.image.shape[:2]
        m = np.zeros((n_proposals, h, w), bool)
        m[: min(len(masks), n_proposals)] = masks[:n_proposals]
        size = classifier_input_size(h, w, evaluate, model.image_size, model.visual.patch_size)
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


def model_accounting(clip: ClipParams, model: ModelParams, n_proposals: int,
                     vocab_sizes: tuple[int, ...] = (150, 847)) -> dict:
    """Table II's accounting for the classifier ``clip`` and ``model`` describe, built on the meta device (no
    weights, no memory): the trainable parameters kept after training (the FiSeR predictor is discarded) and, per
    vocabulary size, the per-image FLOPs at ``clip.image_size`` with ``n_proposals`` masks and the
    vocabulary-dependent share (TeVA's attention over the targets + the final classification: linear in the
    number of classes C, F(C) = F_0 + a C, solved from the two smallest sizes). TeVA's g_k/g_v projections of a
    vocabulary run once per vocabulary (cached), not per image, and are not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from models.clip_backbone import build_clip
    from models.trainable import select_trainable
    from pipeline.build.classifier import new_classifier

    with torch.device("meta"):
        clip_model, _ = build_clip(clip.model, allow_random=True, device="meta")
        classifier = new_classifier(clip_model, model, clip.image_size).eval()
    select_trainable(classifier, model.trainable, tune_text=model.tune_text)
    kept = sum(p.numel() for n, p in classifier.named_parameters() if p.requires_grad and not n.startswith("fiser."))
    size = clip.image_size
    images = torch.zeros(1, 3, size, size, device="meta")
    masks = torch.zeros(1, n_proposals, classifier.mask_grid, classifier.mask_grid, device="meta")
    flops = {}
    for c in vocab_sizes:
        text = torch.zeros(c, classifier.embed_dim, device="meta")
        with torch.no_grad():
            classifier.prepare_vocabulary(text)
            with FlopCounterMode(display=False) as counter:
                classifier(images, masks, text)
        flops[c] = int(counter.get_total_flops())
    c1, c2 = sorted(vocab_sizes)[:2]
    slope = (flops[c2] - flops[c1]) / (c2 - c1)
    return {"model": clip.model, "image_size": size, "proposals": n_proposals, "trainable_kept": kept,
            "teva_width": model.teva.width, "teva_shared": model.teva.shared,
            "flops": {str(c): f for c, f in flops.items()},
            "vocab_flops_share": {str(c): slope * c / flops[c] for c in vocab_sizes}}
