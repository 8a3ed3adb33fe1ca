"""Shared stage plumbing: argument parsing, params loading, logging, clean failure messages."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from pipeline.config import Params, load_params, to_dict
from pipeline.console import setup_logging
from pipeline.device import set_threads
from pipeline.errors import FovsegError
from pipeline.tracking import Tracker, mark_stage_start

log = logging.getLogger("fovseg")


def parser(description: str, *required: str) -> argparse.ArgumentParser:
    """A stage's parser: ``--params`` plus one required ``--<name>`` per ``required`` path argument (dvc.yaml
    passes every path; no defaults repeat it)."""
    script = Path(sys.argv[0])  # `python -m stages.train` runs .../stages/train.py: say how it was invoked
    prog = f"python -m stages.{script.stem}" if script.parent.name == "stages" else None
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name in required:
        ap.add_argument(f"--{name}", required=True)
    return ap


def run(main: Callable[[argparse.Namespace, Params], dict], ap: argparse.ArgumentParser,
        argv: list[str] | None = None) -> dict:
    """Parse args, load params, run ``main``; known failures (:class:`FovsegError`, a missing file) exit 1
    with one clear line, no traceback. This and the ``fovseg`` console script are the only places that catch
    them."""
    setup_logging()
    mark_stage_start()  # the stage's MLflow run starts here, not when it first logs
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        set_threads(params.runtime.threads)
        return main(args, params)
    except (FovsegError, FileNotFoundError) as exc:
        log.error("%s", exc)
        sys.exit(1)


def tracker(params: Params, stage: str, run_name: str | None = None) -> Tracker:
    return Tracker(params.tracking.experiment, stage, to_dict(params), run_name=run_name)
