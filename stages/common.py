"""Shared stage plumbing: argument parsing, params loading, logging, clean failure messages."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pipeline.config import Params, to_dict
from pipeline.console import setup_logging
from pipeline.data.formats import write_metrics
from pipeline.device import set_threads
from pipeline.errors import FovsegError, permission_message
from pipeline.params_file import load_params
from pipeline.tracking import Tracker, git_commit, mark_stage_start

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
    t0 = time.perf_counter()
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        set_threads(params.runtime.threads)
        result = main(args, params)
    except PermissionError as exc:  # never reported as "not found" or "corrupt"
        log.error("%s", permission_message(exc.filename or exc))
        sys.exit(1)
    except (FovsegError, FileNotFoundError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    log.info("%s done in %.1f s, peak memory %s", ap.prog, time.perf_counter() - t0, peak_memory())
    return result


def peak_memory() -> str:
    """This process's peak resident memory (and CUDA's peak allocation, when a GPU was used), for the log."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    text = f"{rss:.2f} GB RSS"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", {torch.cuda.max_memory_allocated() / 2**30:.2f} GB CUDA"
    return text


def tracker(params: Params, stage: str, run_name: str | None = None) -> Tracker:
    return Tracker(params.tracking.experiment, stage, to_dict(params), run_name=run_name)


def write_timings(path: str | Path, params: Params, timings: dict) -> None:
    """Write a stage's timings (not DVC metrics: ``dvc exp show`` leads with accuracy) with a ``produced`` block
    saying when (UTC), from which commit and with which preset the stage's numbers were produced."""
    produced = {"utc": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}", "commit": git_commit(),
                "preset": params.preset}
    write_metrics(path, {"produced": produced, **timings})
