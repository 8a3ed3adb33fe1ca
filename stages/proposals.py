"""Stage `proposals`: run the frozen mask generator once over a benchmark split into the proposal store."""
from __future__ import annotations

import time
from collections import Counter

from tqdm import tqdm

from models.generators import Mask2FormerGenerator
from pipeline.config import Params
from pipeline.data.loaders import BenchmarkDataset, iter_samples
from pipeline.data.proposal_store import ProposalWriter
from pipeline.data.registry import dataset_root, get_benchmark
from pipeline.generator_builder import build_generator, generator_name
from pipeline.runtime import pick_device, write_metrics
from stages.common import parser, run, tracker


def main(args, params: Params) -> dict:
    gen_p, prop_p = params.backbones.generator, params.proposals
    device = pick_device(params.device)
    generator = build_generator(gen_p, prop_p, args.backbones, device, override=args.generator)
    ds = BenchmarkDataset(get_benchmark(args.benchmark), dataset_root(params.data.root or None))
    t0 = time.perf_counter()
    counter: Counter = Counter()
    with ProposalWriter(args.out, meta={"generator": args.generator or generator_name(gen_p, args.backbones),
                                        "benchmark": args.benchmark,
                                        **{k: getattr(prop_p, k) for k in ("max_proposals", "mask_threshold",
                                                                           "min_area", "short_side",
                                                                           "max_side")}}) as writer:
        batch: list = []
        for s in tqdm(iter_samples(ds, stats=counter), total=len(ds), desc=f"proposals {args.benchmark}"):
            batch.append(s)
            if len(batch) == prop_p.batch_size:
                _flush(generator, batch, writer)
        _flush(generator, batch, writer)
    stats = {"images": counter["read"], "skipped_images": counter["skipped"], "seconds": time.perf_counter() - t0}
    write_metrics(args.metrics, stats)
    with tracker(params, "proposals", run_name=f"proposals@{args.benchmark}") as t:
        t.log_metrics(stats)
    return stats


def _flush(generator: Mask2FormerGenerator, batch: list, writer: ProposalWriter) -> None:
    if not batch:
        return
    for s, p in zip(batch, generator([s.image for s in batch])):
        writer.add(s.image_id, p.masks, p.scores)
    batch.clear()


def build_parser():
    ap = parser(__doc__, "benchmark", "backbones", "out", "metrics")
    ap.add_argument("--generator", default="", help="a saved Mask2Former directory overriding the params' one "
                                                    "(the tuned generator of a tune_generator run)")
    return ap


if __name__ == "__main__":
    run(main, build_parser())
