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
from pathlib import Path

DEFAULT_SPINCOUNT = "1000"  # spins before an idle OpenMP thread sleeps (see the table above)


def configure_threads() -> dict[str, str]:
    """Put the defaults into the environment (before torch loads); returns what was applied."""
    applied = {}
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
        applied["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    wanted = os.environ.get("FOVSEG_THREADS")
    if not wanted and "OMP_NUM_THREADS" not in os.environ:
        cpus = available_cpus()  # reads the cgroup files once
        if cpus < len(usable_cpus()):  # a CPU quota (docker --cpus): torch would count the CPUs it may run on
            wanted = str(cpus)
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


def cgroup_cpu_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), mount: Path = Path("/sys/fs/cgroup")
                     ) -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in CPUs (quota / period: ``docker
    --cpus``, Kubernetes CPU limits); None when there is none or it cannot be read (not Linux)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # cgroup v2 (hybrid hosts mount it at unified/)
            for base in (mount, mount / "unified"):
                limits += [_v2_quota(d / "cpu.max") for d in _cgroup_dirs(base, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1
            for base in dict.fromkeys((mount / controllers, mount / "cpu")):
                limits += [_v1_quota(d) for d in _cgroup_dirs(base, path)]
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _cgroup_dirs(base: Path, path: str) -> list[Path]:
    """``base/path`` and each parent up to ``base`` (the mount: a container's own cgroup without a namespace)."""
    here = base / path.strip("/")
    return [here, *[p for p in here.parents if p.is_relative_to(base)]] if path.strip("/") else [base]


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(cgroup_dir: Path) -> float | None:
    try:
        quota = int((cgroup_dir / "cpu.cfs_quota_us").read_text())
        period = int((cgroup_dir / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus() -> int:
    """How many CPUs' worth of work this process may do at once: the CPUs it may run on (see
    :func:`usable_cpus`), fewer under a CPU quota (rounded down, at least 1: threads beyond a quota are
    throttled, and OpenMP's spinning threads then collapse as in the tables above)."""
    cpus = len(usable_cpus())
    limit = cgroup_cpu_limit()
    return min(cpus, max(1, int(limit))) if limit else cpus


def thread_settings() -> dict[str, object]:
    """What is in effect (for logs and benchmark headers)."""
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    out: dict[str, object] = {k: os.environ.get(k, "unset") for k in names}
    if "torch" in sys.modules:
        out["torch_threads"] = sys.modules["torch"].get_num_threads()
    return out
