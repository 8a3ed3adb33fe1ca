"""Stage `sweep@<grid>`: one Table IV / Fig. 9 ablation grid on Ray Tune (rows x seeds), resumable."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from stages.common import parser, run


def main(args, params: Params) -> dict:
    from pipeline.sweep.runner import SweepOptions, run_sweep

    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    storage = Path(args.storage) if args.storage else Path(args.out) / "ray"  # Tune's experiment state
    opts = SweepOptions(out=Path(args.out), storage=storage, metrics=Path(args.metrics),
                        backbones=Path(args.backbones), proposals_root=Path(args.proposals_root),
                        address=args.address, max_concurrent=args.max_concurrent, seeds=seeds)
    return run_sweep(args.grid, params, opts)


def build_parser():
    ap = parser(__doc__, "backbones", "proposals-root", "out", "metrics")
    ap.add_argument("grid", help="a grid name (pipeline/sweep/grids/<grid>.yaml) or a grid YAML file")
    ap.add_argument("--address", default=None, help="attach to a Ray cluster (default: $RAY_ADDRESS, else local)")
    ap.add_argument("--storage", default=None, help="Ray Tune's experiment state, shared storage on a cluster "
                                                    "(default: <out>/ray)")
    ap.add_argument("--max-concurrent", type=int, default=None)
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default: sweep.seeds)")
    return ap


if __name__ == "__main__":
    run(main, build_parser())
