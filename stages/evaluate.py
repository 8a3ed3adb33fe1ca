"""Stage `evaluate`: PQ/SQ/RQ and mIoU/fwIoU/mACC/pACC on one benchmark, for the trained model and for the
untrained baseline (the same classifier before training = CLIP zero-shot mask classification). The classifier's
seconds per image go to ``--timings`` with a ``produced`` block (UTC time, git commit, preset), not to the DVC
metrics file."""
from __future__ import annotations

from pipeline.config import Params
from pipeline.data.formats import write_metrics
from pipeline.device import init_seed_and_device
from pipeline.eval.loop import HEADLINE, evaluate_benchmark
from stages.common import parser, run, tracker, write_timings


def main(args, params: Params) -> dict:
    device = init_seed_and_device(params.seed, params.device)
    metrics = evaluate_benchmark(args.benchmark, data=params.data, clip=params.backbones.clip, model=params.model,
                                 evaluate=params.evaluate, seed=params.seed, device=device,
                                 backbones_dir=args.backbones, checkpoint=args.checkpoint,
                                 proposals_dir=args.proposals, predictions_dir=args.predictions)
    timings = {k: metrics[k] for k in ("seconds_per_image",) if k in metrics}
    write_metrics(args.metrics, {k: v for k, v in metrics.items() if k not in timings})
    write_timings(args.timings, params, timings)
    with tracker(params, "evaluate", run_name=f"evaluate@{args.benchmark}") as t:
        t.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        trained = {k: metrics[k] for k in HEADLINE if k in metrics}
        for model in ("trained", "baseline", "oracle_classifier", "oracle_generator"):  # own runs, same metric names
            t.log_model_run(model, trained if model == "trained" else metrics[model], {"benchmark": args.benchmark})
        t.log_table(metrics["per_class"], f"per_class_{args.benchmark}.json")
    return metrics


def build_parser():
    return parser(__doc__, "benchmark", "backbones", "checkpoint", "proposals", "predictions", "metrics", "timings")


if __name__ == "__main__":
    run(main, build_parser())
