"""Stage `report`: regenerate ``reports/`` from ``metrics/`` (and the attention maps, Fig. 6). Every table says
whether this ``dvc repro`` regenerated its numbers (files produced after the run started) or when and from which
commit an earlier run produced them (the ``produced`` block of ``metrics/timings/<file>``)."""
from __future__ import annotations

from pipeline.config import Params
from stages.common import parser, run, tracker


def main(args, params: Params) -> dict:
    from pipeline.report.build import build_report  # pandas and matplotlib: imported for the work, not for --help
    from pipeline.report.provenance import dvc_run_started

    result = build_report(args.metrics, args.out, params.preset, expected=list(params.data.eval_benchmarks),
                          train_benchmark=params.data.train_benchmark, attention_dir=args.attention,
                          run_started=dvc_run_started())
    with tracker(params, "report") as t:
        t.log_artifact(f"{args.out}/README.md")
        for p in result["plots"]:
            t.log_artifact(f"{args.out}/{p}")
    return result


def build_parser():
    return parser(__doc__, "metrics", "out", "attention")  # --attention: the attention stage's folder (Fig. 6)


if __name__ == "__main__":
    run(main, build_parser())
