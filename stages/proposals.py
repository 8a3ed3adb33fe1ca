"""Stage `proposals`: run the frozen mask generator once over a benchmark split into the proposal store.
Image counts go to ``--metrics``; the seconds to ``--timings`` with a ``produced`` block (UTC time, git commit,
preset)."""
from __future__ import annotations

from pipeline.build.proposals import compute_proposals
from pipeline.config import Params
from pipeline.data.formats import write_metrics
from pipeline.device import pick_device
from stages.common import parser, run, tracker, write_timings


def main(args, params: Params) -> dict:
    stats = compute_proposals(args.benchmark, data_root=params.data.root, generator=params.backbones.generator,
                              proposals=params.proposals, backbones_dir=args.backbones, out_dir=args.out,
                              device=pick_device(params.device), generator_dir=args.generator,
                              downsample=args.downsample)
    timings = {k: stats[k] for k in ("seconds",) if k in stats}
    write_metrics(args.metrics, {k: v for k, v in stats.items() if k not in timings})
    write_timings(args.timings, params, timings)
    with tracker(params, "proposals", run_name=f"proposals@{args.benchmark}") as t:
        t.log_metrics(stats)
    return stats


def build_parser():
    ap = parser(__doc__, "benchmark", "backbones", "out", "metrics", "timings")
    ap.add_argument("--downsample", type=int, default=1, help="keep masks at 1/N resolution (the training split: "
                                                                 "proposals.train_downsample)")
    ap.add_argument("--generator", default="", help="a saved Mask2Former folder replacing the params' one (the "
                                                    "tuned generator of a model.tune_generator run)")
    return ap


if __name__ == "__main__":
    run(main, build_parser())
