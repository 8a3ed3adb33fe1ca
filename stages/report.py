"""Stage `report`: regenerate ``reports/`` from ``metrics/``."""
from __future__ import annotations

from pipeline.config import Params
from pipeline.report import build_report
from stages.common import parser, run, tracker


def main(args, params: Params) -> dict:
    result = build_report(args.metrics, args.out, params.preset)
    with tracker(params, "report") as t:
        t.log_artifact(f"{args.out}/README.md")
        for p in result["plots"]:
            t.log_artifact(f"{args.out}/{p}")
    return result


def build_parser():
    return parser(__doc__, "metrics", "out")


if __name__ == "__main__":
    run(main, build_parser())
