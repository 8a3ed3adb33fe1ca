"""Stage `validate`: check params.yaml (every key, every value, the sweep grids it names) before any other stage
runs. Every stage depends on its ``--out`` file, so a bad value (`dvc exp run -S train.lr=-1`) stops the DAG here,
before DVC removes any stage's outputs. The file's content never changes, so a valid edit re-runs only the stages
that read the edited keys."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.data.formats import atomic_path
from pipeline.sweep.grids import load_grid
from stages.common import log, parser, run

STAMP = "params.yaml passed stages/validate.py\n"  # constant: downstream stages see an unchanged dependency


def main(args, params: Params) -> dict:
    for name in params.sweep.grids:  # builds every runnable row's params: a row could set a bad value
        load_grid(name, params)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(STAMP)
    log.info("params.yaml is valid (preset %s, %d sweep grid(s) checked)", params.preset, len(params.sweep.grids))
    return {}


def build_parser():
    return parser(__doc__, "out")


if __name__ == "__main__":
    run(main, build_parser())
