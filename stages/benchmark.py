"""Stage `benchmark`: parameters, training time, inference images/s and peak memory on every evaluated
benchmark, measured side by side (alternating), and the large-vs-small vocabulary throughput ratio
(paper Table II: ADE-847 vs ADE-150). Parameter counts and the accounting go to ``--metrics`` (a DVC metric);
every speed and memory figure (classifier-only and end-to-end images/s, peak memory, the throughput ratio, device,
precision, scope) to ``--timings`` with a ``produced`` block (UTC time, git commit, preset). The training time is
the train stage's own ``metrics/timings/train.json``."""
from __future__ import annotations

import json
from pathlib import Path

from models.trainable import count_parameters
from pipeline.build.classifier import build_classifier
from pipeline.config import Params
from pipeline.data.formats import write_metrics
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.registry import dataset_root, get_benchmark
from pipeline.device import init_seed_and_device
from pipeline.eval.efficiency import compare_vocabularies, model_accounting, time_end_to_end
from pipeline.eval.predict import build_segmenter
from pipeline.presets import preset_params
from stages.common import parser, run, tracker, write_timings


def main(args, params: Params) -> dict:
    device = init_seed_and_device(params.seed, params.device)
    bp, ev = params.benchmark, params.evaluate
    ready = build_classifier(params.backbones.clip, params.model, args.backbones, device, checkpoint=args.checkpoint)
    model = ready.model
    root = dataset_root(params.data.root or None)
    runs = {}
    for name in params.data.eval_benchmarks:  # every benchmark; the ratio compares small_vocab and large_vocab
        store = Path(args.proposals_root) / name
        ds = BenchmarkDataset(get_benchmark(name), root)
        runs[name] = (ds, ProposalStore(store), ready.text_embeddings(ds.vocab))
    figures = compare_vocabularies(model, runs, repeats=bp.repeats, n_images=bp.n_images, n_proposals=bp.n_proposals,
                                   evaluate=ev, device=device)
    train = json.loads(Path(args.train_metrics).read_text())
    small, large = figures[bp.small_vocab], figures[bp.large_vocab]
    metrics = {**count_parameters(model), "train_iterations": train["iterations"],
               "vocab_sizes": {k: len(v[0].vocab) for k, v in runs.items()},
               "small_vocab": bp.small_vocab, "large_vocab": bp.large_vocab, "n_proposals": bp.n_proposals}
    timings = {"device": str(device), "inference": figures,
               "large_vs_small_throughput": large["images_per_s"] / small["images_per_s"]}
    # Table II counts what is trained and kept: the FiSeR predictor is discarded after training
    metrics["trainable_params_paper"] = sum(p.numel() for n, p in model.named_parameters()
                                            if p.requires_grad and not n.startswith("fiser."))
    model.cpu()  # each end-to-end run builds its own classifier: this one must not count in their peak memory
    del ready, model
    end_to_end = {}  # Table II: generator + classifier + merging on raw images, for the two vocabularies
    for name in dict.fromkeys([bp.small_vocab, bp.large_vocab]):
        ds = runs[name][0]
        segmenter = build_segmenter(params, ds.vocab, args.backbones, args.checkpoint, ev.object_threshold, device)
        end_to_end[name] = time_end_to_end(segmenter, ds, bp.n_images, device)
        del segmenter  # freed before the next vocabulary's generator and classifier are built
    timings.update({"end_to_end": end_to_end, "precision": "fp32",
                    "scope": "end to end (generator + classifier + panoptic merging), text embeddings cached"})
    # Table II's accounting, counted on the meta device: this run's classifier and the paper preset's
    paper = preset_params("paper")
    metrics["accounting"] = {
        "this_run": model_accounting(params.backbones.clip, params.model, bp.n_proposals),
        "paper_preset": model_accounting(paper.backbones.clip, paper.model, paper.benchmark.n_proposals)}
    write_metrics(args.metrics, metrics)
    write_timings(args.timings, params, timings)
    with tracker(params, "benchmark") as t:
        t.log_metrics({k: v for k, v in {**metrics, **timings}.items() if isinstance(v, (int, float))})
        t.log_metrics({f"{b}/{k}": v for b, d in figures.items() for k, v in d.items()})
        t.log_metrics({f"{b}_end_to_end_{k}": v for b, d in end_to_end.items() for k, v in d.items()})
    return {**metrics, **timings}


def build_parser():
    return parser(__doc__, "backbones", "checkpoint", "train-metrics", "proposals-root", "metrics", "timings")


if __name__ == "__main__":
    run(main, build_parser())
