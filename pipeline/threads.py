"""CPU thread defaults, set in this one place (``configure_threads``, called from ``pipeline/__init__.py``).

With OpenMP's default wait policy, worker threads spin for a long while between parallel regions
(libgomp: 300,000 spins), and a second busy process on the machine turns 2 threads into a collapse
(the spinning threads steal the core the other thread needs). Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) fixes the collapse but pays a futex wake-up per parallel region, which
the tiny toy models have many of. A short spin, then sleep (``GOMP_SPINCOUNT=1000``), keeps both.
Tiny-CLIP contrastive step (batch 128), 2 threads, it/s, one run each, same session, 2 cores:

| setting | alone | beside a busy-loop process |
| --- | --- | --- |
| libgomp default (300k spins) | 3.25 | 0.79 |
| ``OMP_WAIT_POLICY=PASSIVE`` | 2.06 | 1.34 |
| ``GOMP_SPINCOUNT=100000`` | 2.67 | 0.42 |
| ``GOMP_SPINCOUNT=10000`` | 3.22 | 1.11 |
| ``GOMP_SPINCOUNT=1000`` (default here) | 3.39 | 1.61 |

So the default is: all cores, ``GOMP_SPINCOUNT=1000`` (PyTorch's x86 wheels use GNU OpenMP). The toy
training step (``python -m pipeline.scripts.bench_threads --seconds 6 --repeats 3``, medians, 2026-11-27):

| setting | alone | beside a busy-loop process |
| --- | --- | --- |
| 1 thread | 9.26 | 9.26 |
| 2 threads, libgomp default | 14.18 | 4.80 |
| 2 threads, ``OMP_WAIT_POLICY=PASSIVE`` | 10.62 | 8.20 |
| 2 threads, ``GOMP_SPINCOUNT=1000`` (default here) | 13.08 | 7.19 |

The default is a compromise: 92 % of the fastest setting alone, no collapse beside another process
(1.5x the libgomp default there); on a machine you know is shared, ``FOVSEG_THREADS=1`` is faster still.

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

DEFAULT_SPINCOUNT = "1000"  # spins before an idle OpenMP thread sleeps (see the table above)


def configure_threads() -> dict[str, str]:
    """Put the defaults into the environment (before torch loads); returns what was applied."""
    applied = {}
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
        applied["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    wanted = os.environ.get("FOVSEG_THREADS")
    if wanted:
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(wanted))
        else:
            os.environ["OMP_NUM_THREADS"] = wanted
        applied["threads"] = wanted
    return applied


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask: taskset, cgroup cpusets), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """How many CPUs this process may run on (see :func:`usable_cpus`)."""
    return len(usable_cpus())


def thread_settings() -> dict[str, object]:
    """What is in effect (for logs and benchmark headers)."""
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    out: dict[str, object] = {k: os.environ.get(k, "unset") for k in names}
    if "torch" in sys.modules:
        out["torch_threads"] = sys.modules["torch"].get_num_threads()
    return out
