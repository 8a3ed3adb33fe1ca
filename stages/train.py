"""Stage `train`: FOV-Seg training on the seen split. Resumes its last checkpoint; a checkpoint trained with
settings that change the result stops the stage with the keys that differ (see pipeline.train.recipe).
Timings (train_seconds, it_per_s, gpu_hours on CUDA) go to ``--timings`` with a ``produced`` block (UTC time, git
commit, preset), not to the DVC metrics file."""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import Params
from pipeline.data.formats import write_metrics
from pipeline.device import init_seed_and_device
from pipeline.train.distributed import close_distributed, init_distributed, is_main_process, relaunch_under_torchrun
from pipeline.train.run import run_training
from stages.common import parser, run, tracker, write_timings

TIMINGS = ("train_seconds", "it_per_s", "gpu_hours")  # metrics/timings/train.json, not a DVC metric


def main(args, params: Params) -> dict:
    code = relaunch_under_torchrun(params.train.gpus, params.device, "stages.train", sys.argv[1:])
    if code is not None:  # train.gpus > 1: the torchrun workers did the work
        if code:
            sys.exit(code)
        return {}
    device = init_seed_and_device(params.seed, params.device)
    init_distributed(device)
    with tracker(params, "train") as t:
        metrics = run_training(data=params.data, clip=params.backbones.clip, model=params.model, train=params.train,
                               generator=params.backbones.generator, proposals=params.proposals,
                               evaluate=params.evaluate, seed=params.seed, device=device, backbones_dir=args.backbones,
                               proposals_dir=args.proposals, checkpoints_dir=args.checkpoints, out_dir=args.out,
                               curve_path=args.curve, eval_proposals_dir=args.eval_proposals,
                               eval_curve_path=args.eval_curve,
                               on_metrics=lambda row, step: t.log_metrics(row, step=step))
        if is_main_process():  # torchrun: the other ranks' loss history is their own shard's
            timings = {k: metrics[k] for k in TIMINGS if k in metrics}  # no gpu_hours on CPU: absent, not 0.0
            write_metrics(args.metrics, {k: v for k, v in metrics.items() if k not in TIMINGS})
            write_timings(args.timings, params, {**timings, "device": metrics.get("device")})
            t.log_metrics({k: v for k, v in metrics.items() if k != "device"}, prefix="train")
            t.log_artifact(args.curve)
            t.log_artifact(Path(args.out) / "last.pt", "checkpoint")  # the trained weights, once, beside the metrics
    close_distributed()
    return metrics


def build_parser():
    return parser(__doc__, "backbones", "proposals", "eval-proposals", "checkpoints", "out", "metrics", "curve",
                  "eval-curve", "timings")


if __name__ == "__main__":
    run(main, build_parser())
