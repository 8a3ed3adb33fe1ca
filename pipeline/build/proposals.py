"""The frozen generator's proposals for a benchmark split, computed once into a proposal store."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import torch

from models.generators import Mask2FormerGenerator
from pipeline.build.generator import build_generator, generator_name
from pipeline.config import GeneratorParams, ProposalsParams
from pipeline.console import progress
from pipeline.data.loaders import BenchmarkDataset, iter_samples
from pipeline.data.proposal_store import ProposalWriter
from pipeline.data.registry import dataset_root, get_benchmark
from pipeline.errors import DatasetError

log = logging.getLogger(__name__)

STORE_META_KEYS = ("max_proposals", "mask_threshold", "min_area", "short_side", "max_side")


def compute_proposals(benchmark: str, *, data_root: str, generator: GeneratorParams, proposals: ProposalsParams,
                      backbones_dir: str | Path, out_dir: str | Path, device: torch.device,
                      generator_dir: str = "", downsample: int = 1) -> dict:
    """Run the frozen mask generator over ``benchmark`` into the proposal store ``out_dir`` (resuming the
    committed shards of a killed run). ``generator_dir``: a saved Mask2Former folder replacing the params' one
    (the tuned generator of a ``tune_generator`` run); ``downsample``: masks kept at 1/downsample resolution
    (the training split). Returns ``images``, ``resumed_images``, ``skipped_images`` and ``seconds``."""
    model = build_generator(generator, proposals, backbones_dir, device, override=generator_dir)
    ds = BenchmarkDataset(get_benchmark(benchmark), dataset_root(data_root or None))
    log.info("%s: %s, input short side %d, long side <= %d, up to %d proposals, on %s", benchmark, model.describe(),
             proposals.short_side, proposals.max_side, proposals.max_proposals, device)
    t0 = time.perf_counter()
    counter: Counter = Counter()
    meta = {"generator": generator_dir or generator_name(generator, backbones_dir), "benchmark": benchmark,
            **{k: getattr(proposals, k) for k in STORE_META_KEYS}}
    with ProposalWriter(out_dir, meta=meta, downsample=downsample) as writer:
        ids = ds.image_ids()
        todo = [i for i, image_id in enumerate(ids) if not writer.done(image_id)]
        resumed = len(ids) - len(todo)
        batch: list = []
        for s in progress(iter_samples(ds, stats=counter, indices=todo), total=len(todo),
                          desc=f"proposals {benchmark}"):
            batch.append(s)
            if len(batch) == proposals.batch_size:
                _flush(model, batch, writer)
        _flush(model, batch, writer)
    images = counter["read"] + resumed
    if images == 0:
        raise DatasetError(f"no image of {benchmark} could be read ({counter['skipped']} skipped, see the warnings "
                           f"above): no proposals to compute; check the dataset with `{ds.bench.fetch_command}`")
    return {"images": images, "resumed_images": resumed, "skipped_images": counter["skipped"],
            "seconds": time.perf_counter() - t0}


def _flush(generator: Mask2FormerGenerator, batch: list, writer: ProposalWriter) -> None:
    if not batch:
        return
    for s, p in zip(batch, generator([s.image for s in batch])):
        writer.add(s.image_id, p.masks, p.scores)
    batch.clear()
