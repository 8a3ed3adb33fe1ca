"""Stage `train`: FOV-Seg training on the seen split (resumes from its last checkpoint if one matches)."""
from __future__ import annotations

from pipeline.config import Params
from pipeline.runtime import init_seed_and_device, write_metrics
from pipeline.training import init_distributed, run_training
from stages.common import parser, run, tracker


def main(args, params: Params) -> dict:
    device = init_seed_and_device(params.seed, params.device)
    init_distributed(device)
    with tracker(params, "train") as t:
        metrics = run_training(data=params.data, clip=params.backbones.clip, model=params.model, train=params.train,
                               seed=params.seed, device=device, backbones_dir=args.backbones,
                               proposals_dir=args.proposals, checkpoints_dir=args.checkpoints, out_dir=args.out,
                               curve_path=args.curve, on_metrics=lambda row, step: t.log_metrics(row, step=step))
        write_metrics(args.metrics, metrics)
        t.log_metrics({k: v for k, v in metrics.items() if k != "device"})
        t.log_artifact(args.curve)
    return metrics


def build_parser():
    return parser(__doc__, "backbones", "proposals", "checkpoints", "out", "metrics", "curve")


if __name__ == "__main__":
    run(main, build_parser())
