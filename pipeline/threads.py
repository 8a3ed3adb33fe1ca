"""CPU thread defaults, set in this one place (``configure_threads``, called from ``pipeline/__init__.py``).

Measured with ``python -m pipeline.scripts.bench_threads`` (toy training step, 2 cores): with
OpenMP's default wait policy, worker threads spin between parallel regions, and a second process on
the machine turns 2 threads into a collapse (the spinning threads steal the core the other thread
needs). ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep: as fast as spinning when the machine
is free, and no collapse when it is shared. So the default is: all cores, passive waiting.

OpenMP reads these variables once, when the runtime loads with torch; they must therefore be in the
environment before ``import torch``. ``pipeline/__init__.py`` calls ``configure_threads()`` before
any of its modules imports torch, and ``stages/__init__.py`` imports ``pipeline`` first, so
``python -m stages.<name>``, ``fovseg`` and ``python -m pipeline.*`` all get it. Values already in the
environment win (``OMP_NUM_THREADS=1 dvc repro`` still means one thread). ``FOVSEG_THREADS=N`` sets
the thread count; if torch was imported before us (a notebook, a test run), only the thread count
can still change (``torch.set_num_threads``), and we say so in ``thread_settings()``.
"""
from __future__ import annotations

import os
import sys

DEFAULT_WAIT_POLICY = "PASSIVE"


def configure_threads() -> dict[str, str]:
    """Put the defaults into the environment (before torch loads); returns what was applied."""
    applied = {}
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
        applied["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
    wanted = os.environ.get("FOVSEG_THREADS")
    if wanted:
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(wanted))
        else:
            os.environ["OMP_NUM_THREADS"] = wanted
        applied["threads"] = wanted
    return applied


def thread_settings() -> dict[str, object]:
    """What is in effect (for logs and benchmark headers)."""
    out: dict[str, object] = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if "torch" in sys.modules:
        out["torch_threads"] = sys.modules["torch"].get_num_threads()
    return out
