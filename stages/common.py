"""Shared stage plumbing: argument parsing, params loading, logging, clean failure messages."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from pipeline.config import Params, load_params, to_dict
from pipeline.errors import FovsegError
from pipeline.runtime import setup_logging
from pipeline.tracking import Tracker

log = logging.getLogger("fovseg")


def parser(description: str, *required: str) -> argparse.ArgumentParser:
    """A stage's parser: ``--params`` plus one required ``--<name>`` per ``required`` path argument (dvc.yaml
    passes every path; no defaults repeat it)."""
    ap = argparse.ArgumentParser(description=description)
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
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        return main(args, params)
    except (FovsegError, FileNotFoundError) as exc:
        log.error("%s", exc)
        sys.exit(1)


def tracker(params: Params, stage: str, run_name: str | None = None) -> Tracker:
    return Tracker(params.tracking.experiment, stage, to_dict(params), run_name=run_name)
