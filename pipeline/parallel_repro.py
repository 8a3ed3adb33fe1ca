"""``dvc repro`` with independent stages at once: the proposals side by side, the sweeps beside the main chain.

``make demo`` runs this. DVC reproduces one stage at a time, and on a small CPU that leaves a core idle for
minutes: the toy generator and training steps barely use a second thread (1.15x; 9.9 vs 9.5 it/s, 2 cores),
each stage pays seconds of imports on one thread, and the sweep's trials are one-thread processes anyway. So,
in three steps over the pipeline's own graph (read from ``dvc.yaml``; nothing about it is repeated here):

1. what the side stages (``sweep@*``) depend on: ``dvc repro`` of datasets and backbones on every CPU, then
   the proposal stages (``--fan-out``) as many at a time as there are CPUs, each with its share of them as
   threads (on 2 cores: two at a time, one thread each; 4 proposal stages took 31-34 s instead of 59-66 s,
   2026-12-03), then anything else step 1 needs;
2. two ``dvc repro --single-item`` at once, each lane's stages in dependency order: everything that depends
   neither on a side stage nor on an ``--alone`` one (train, evaluate, attention) pinned to half the CPUs
   with that many threads (``FOVSEG_THREADS``), and the side stages on every CPU at a lower priority
   (``nice +10``; Ray adds its own +15 to trial workers), so they take what the main lane leaves; a sweep's
   local Ray takes every CPU, as in a plain ``dvc repro``;
3. ``dvc repro`` of the rest on every CPU: the stages that read the sweeps' results (the report) and the
   ones that must run alone because they time things (``benchmark``).

"CPUs" are :func:`pipeline.threads.available_cpus`: those in the affinity mask, fewer under a cgroup CPU
quota (``docker --cpus``, Kubernetes limits), which sets how many stages fan out and how many threads each
process gets.

On 2 cores, step 2's stages took 249 s in lanes (the side one pinned to the other core) against 334 s one at
a time; with the side lane yielding on both cores instead, 235-249 s against 248-249 s pinned (two rounds each,
alternated, 2026-12-03): two trials sharing one core run about 20 % slower per core-second, so the idle core
at the end buys little.

DVC supports this: a stage's command runs with the repository lock released, and each stage locks its own
dependencies (shared, read) and outputs (exclusive, write); concurrent stages share no output. Each one runs
with ``--single-item`` because checking the shared stages again would lock their outputs for writing while
another reads them. Results are those of a serial ``dvc repro`` with the same thread counts: the proposals
are bit-identical at one and two threads, the sweeps' trials have one thread each either way, and torch's
arithmetic depends on the thread count, so the one-thread train stage ends with a training loss that differs
from a two-thread run's in the fifth digit (2.261906 vs 2.261841 on the toy preset, every evaluation metric
identical, 2026-12-03). A final plain ``dvc repro`` (step 3) also picks up anything left stale. The lanes
start only when both have stale stages after step 1 (otherwise the one with work would run on half the CPUs,
with other thread counts than a plain ``dvc repro``), the fan-out only with two or more stale stages; with
fewer than 2 CPUs, without CPU affinity (not Linux) or with ``--serial``, it is one plain ``dvc repro``.

Each ``dvc`` runs in its own process group; Ctrl-C (or SIGTERM, or SIGHUP when the terminal or ssh session
closes) is passed on to them as SIGINT, and this waits for them to stop, so no stage is left running. Each
group is led by a :mod:`pipeline.group_guard`, which stops its group the same way if this process is killed
outright (SIGKILL: Linux's parent-death signal).

Concurrent stages write their output to log files in ``.dvc/tmp`` (interleaved progress bars are
unreadable); the last lines of a failed one's are printed.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from pipeline.group_guard import STOP_WAIT_S
from pipeline.threads import available_cpus, usable_cpus

SIDE_LOG = Path(".dvc/tmp/repro-side-lane.log")
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))  # and Ctrl-C
SIDE_NICE = 10  # the side lane's niceness: CPU weight 110 against the main lane's 1024 (Linux CFS)


@dataclass(frozen=True)
class Plan:
    """Stage names (DVC addressing) of each step. ``fan``: the step-1 stages run several at a time, ``before``:
    the step-1 stages they depend on (both are parts of ``shared``)."""
    shared: list[str]
    side: list[str]
    main: list[str]
    fan: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)


def _reach(graph, names: set[str], step) -> set[str]:
    """Names of the stages ``step`` (``networkx.descendants``: their dependencies, ``ancestors``: the stages
    that depend on them) reaches from ``names``."""
    by_name = {s.addressing: s for s in graph.nodes}
    return {s.addressing for name in names for s in step(graph, by_name[name])}


def plan_lanes(graph, side_pattern: str, alone: set[str], fan_pattern: str = "") -> Plan:
    """Split DVC's stage graph (edges point from a stage to the stages it depends on) into the three steps.

    ``shared``: every stage a side stage depends on; ``side``: stages matching ``side_pattern``; ``main``:
    the others that depend neither on a side stage nor on an ``alone`` stage. What is left (downstream of
    the side or alone stages, and the alone stages) is step 3's. ``fan``: the shared stages matching
    ``fan_pattern`` that depend on no other such stage; ``before``: the stages those depend on."""
    import networkx as nx

    names = {s.addressing for s in graph.nodes}
    side = {n for n in names if fnmatch.fnmatchcase(n, side_pattern)} - alone
    shared = _reach(graph, side, nx.descendants)
    alone = alone & names
    later = alone | _reach(graph, side | alone, nx.ancestors)
    side -= shared | later  # a side stage that another one depends on (or follows) runs in step 1 (or 3)
    main = names - shared - side - later
    fan = {n for n in shared if fan_pattern and fnmatch.fnmatchcase(n, fan_pattern)}
    fan -= _reach(graph, fan, nx.ancestors)  # one fan-out stage never waits for another
    before = _reach(graph, fan, nx.descendants)
    order = [s.addressing for s in reversed(list(nx.topological_sort(graph)))]  # dependencies first

    def ordered(group: set[str]) -> list[str]:
        return [n for n in order if n in group]

    return Plan(shared=ordered(shared), side=ordered(side), main=ordered(main), fan=ordered(fan),
                before=ordered(before))


def with_work(plan: Plan, graph, stale: set[str]) -> Plan:
    """The plan's lanes cut to the stages that will run: the stale ones and those downstream of them."""
    import networkx as nx

    todo = stale | _reach(graph, stale, nx.ancestors)
    return replace(plan, side=[n for n in plan.side if n in todo], main=[n for n in plan.main if n in todo])


def load_plan(side_pattern: str, alone: set[str], fan_pattern: str = "") -> Plan:
    """The three steps of this project's pipeline."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return plan_lanes(repo.index.graph, side_pattern, alone, fan_pattern)


def stale_stages(names: list[str]) -> tuple[object, set[str]]:
    """DVC's stage graph and those of ``names`` that are stale (changed and not frozen)."""
    from dvc.repo import Repo

    with Repo(".") as repo, repo.lock:
        graph = repo.index.graph
        wanted = set(names)
        return graph, {s.addressing for s in graph.nodes if s.addressing in wanted and not s.frozen and s.changed()}


def lanes_with_work(plan: Plan) -> Plan:
    """After step 1: the lanes' stages that DVC will run (stale, not frozen, or downstream of such)."""
    graph, stale = stale_stages(plan.side + plan.main)
    return with_work(plan, graph, stale)


def dvc_exe() -> str:
    """The ``dvc`` beside this interpreter (a venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("dvc")
    found = str(here) if here.is_file() else shutil.which("dvc")
    if not found:
        raise SystemExit("dvc not found: install the project (`make install`) or put dvc on PATH")
    return found


def repro_cmd(stages: list[str], single_items: bool = False) -> list[str]:
    """``dvc repro`` of ``stages``; ``single_items``: those stages only, in the order given, without checking
    their upstream (a lane must not touch the shared stages: DVC would lock their outputs for writing while
    the other lane reads them, and fail)."""
    return [dvc_exe(), "--wait-for-lock", "repro", *(["--single-item"] if single_items else []), *stages]


def shown(cmd: list[str]) -> str:
    return " ".join(["dvc", *cmd[1:]])


def lane_threads(cpus: int) -> str:
    """The thread count of a process given ``cpus`` CPUs: that, or fewer if the user asked for fewer
    (``FOVSEG_THREADS``)."""
    asked = os.environ.get("FOVSEG_THREADS")
    return str(min(cpus, int(asked)) if asked and asked.isdigit() and int(asked) > 0 else cpus)


def start_group(cmd: list[str], **popen) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, through :mod:`pipeline.group_guard`, which stops the
    group if this process is killed outright."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.group_guard", *cmd], process_group=0, **popen)


def start_pinned(cmd: list[str], cpus: set[int], threads: int, **popen) -> subprocess.Popen:
    """Start ``cmd`` on ``cpus`` only (the child and all its children inherit the affinity) with ``threads``
    threads."""
    env = {**os.environ, "FOVSEG_THREADS": lane_threads(threads)}
    return start_group(cmd, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cpus), **popen)


def start_yielding(cmd: list[str], **popen) -> subprocess.Popen:
    """Start ``cmd`` on every CPU at a lower priority (``SIDE_NICE``; children inherit it): it takes the CPU
    time the other lane leaves."""
    return start_group(cmd, preexec_fn=lambda: os.nice(SIDE_NICE), **popen)


def exit_status(rc: int) -> int:
    """A child's return code as a shell exit status (killed by signal N: 128 + N)."""
    return 128 - rc if rc < 0 else rc


class _Terminated(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise _Terminated(signum)


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """``signum`` to the process group ``proc`` leads (dvc and the stage command it runs)."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGINT to each running process group (the stage command stops, then DVC); wait up to ``STOP_WAIT_S``
    for them to end, then terminate what is left."""
    for p in procs:
        if p.poll() is None:
            signal_group(p, signal.SIGINT)
    for p in procs:
        try:
            p.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            signal_group(p, signal.SIGTERM)
            p.wait()


@contextmanager
def stopped_on_signal(procs: list[subprocess.Popen]) -> Iterator[None]:
    """On Ctrl-C, SIGTERM or SIGHUP (the terminal or ssh session closed: the groups, each in its own session,
    would not get it) inside the block: :func:`stop_groups` of ``procs`` (the list may grow inside), then
    re-raise (SIGTERM and SIGHUP as exit status 128 + the signal's number)."""
    previous = {s: signal.signal(s, _raise_terminated) for s in STOP_SIGNALS}
    try:
        yield
    except (KeyboardInterrupt, _Terminated) as exc:
        stop_groups(procs)
        if isinstance(exc, _Terminated):
            raise SystemExit(128 + exc.signum) from None
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for every process (each leads its own process group), stopping them all on Ctrl-C, SIGTERM or
    SIGHUP."""
    with stopped_on_signal(procs):
        return [p.wait() for p in procs]


def run_step(cmd: list[str]) -> None:
    print(f"$ {shown(cmd)}", flush=True)
    rc = wait_all([start_group(cmd)])[0]
    if rc:
        raise SystemExit(exit_status(rc))


def tail(path: Path, lines: int = 40) -> str:
    """The last non-empty lines of a log (progress bars' carriage returns read as line ends)."""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def log_file(log_dir: Path, stage: str) -> Path:
    """Where a fanned-out stage's output goes."""
    return log_dir / ("repro-" + re.sub(r"[^A-Za-z0-9@._-]", "_", stage) + ".log")


def run_fan_out(stages: list[str], log_dir: Path) -> None:
    """Run independent stages as many at a time as there are CPUs, each with an equal share of them as threads
    (``FOVSEG_THREADS``) and its output in a log file; once one fails, start no more, let the running ones end,
    then fail naming it."""
    cpus = available_cpus()
    at_once = min(len(stages), cpus)
    env = {**os.environ, "FOVSEG_THREADS": lane_threads(max(1, cpus // at_once))}
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(stages)} stages, {at_once} at a time, {env['FOVSEG_THREADS']} thread(s) each", flush=True)
    pending, running, failed = list(stages), {}, []
    started: list[subprocess.Popen] = []
    with stopped_on_signal(started):
        while pending or running:
            while pending and len(running) < at_once and not failed:
                stage = pending.pop(0)
                cmd, path = repro_cmd([stage], single_items=True), log_file(log_dir, stage)
                print(f"$ {shown(cmd)}  (output: {path})", flush=True)
                with open(path, "wb") as log:
                    proc = start_group(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                started.append(proc)
                running[proc] = (stage, path, time.monotonic())
            if not running:
                break
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                stage, path, t0 = running.pop(proc)
                if proc.returncode:
                    failed.append(proc.returncode)
                    print(f"\n{stage} failed with exit status {exit_status(proc.returncode)}; last lines of {path}:\n"
                          f"{tail(path)}", file=sys.stderr, flush=True)
                else:
                    print(f"{stage} done ({time.monotonic() - t0:.0f} s)", flush=True)
    if failed:
        raise SystemExit(exit_status(failed[0]))


def run_shared(plan: Plan, log_dir: Path) -> None:
    """Step 1: what the fan-out stages depend on, then the stale fan-out stages several at a time (with fewer
    than two stale, they run in the last ``dvc repro``), then the rest of step 1."""
    rest = plan.shared
    if len(plan.fan) >= 2:
        if plan.before:
            run_step(repro_cmd(plan.before))
        _, stale = stale_stages(plan.fan)
        if len(stale) >= 2:
            run_fan_out([n for n in plan.fan if n in stale], log_dir)
            stale = set()
        rest = [n for n in plan.shared if n not in plan.before and (n not in plan.fan or n in stale)]
    if rest:
        run_step(repro_cmd(rest))


def main_lane_share(cpus: set[int], available: int) -> tuple[set[int], int]:
    """The main lane's CPUs (the lower half of those this process may run on) and its thread count: one per
    CPU, or half of ``available`` under a CPU quota that allows fewer."""
    half = set(sorted(cpus)[: len(cpus) // 2])
    return half, min(len(half), max(1, available // 2))


def run_lanes(plan: Plan, log_path: Path) -> None:
    """Step 2: both lanes at once; waits for both, then fails naming the lane(s) that failed."""
    main_cpus, main_threads = main_lane_share(usable_cpus(), available_cpus())
    side_cmd, main_cmd = repro_cmd(plan.side, single_items=True), repro_cmd(plan.main, single_items=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shown(side_cmd)}  (every CPU, nice +{SIDE_NICE}, output: {log_path})", flush=True)
    print(f"$ {shown(main_cmd)}  (CPUs {sorted(main_cpus)}, {lane_threads(main_threads)} thread(s))", flush=True)
    with open(log_path, "wb") as log:
        side = start_yielding(side_cmd, stdout=log, stderr=subprocess.STDOUT)
        main = start_pinned(main_cmd, main_cpus, main_threads)
        side_rc, main_rc = wait_all([side, main])
    if side_rc:
        print(f"\nside lane ({' '.join(plan.side)}) failed with exit status {exit_status(side_rc)}; last lines of "
              f"{log_path}:\n{tail(log_path)}", file=sys.stderr)
    if main_rc:
        print(f"main lane ({' '.join(plan.main)}) failed with exit status {exit_status(main_rc)} (its output is "
              "above)", file=sys.stderr)
    if side_rc or main_rc:
        raise SystemExit(exit_status(side_rc or main_rc))
    print(f"side lane done (output: {log_path})", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", default="sweep@*", help="stages of the side lane (glob over DVC stage names)")
    ap.add_argument("--alone", nargs="*", default=["benchmark"],
                    help="stages that must not run beside another (timings); they run in the last step")
    ap.add_argument("--fan-out", default="proposals*",
                    help="step-1 stages (glob) run as many at a time as there are CPUs, each with an equal share of "
                         "them as threads: only for stages whose outputs do not depend on the thread count ('' for "
                         "none)")
    ap.add_argument("--serial", action="store_true", help="one plain `dvc repro`")
    ap.add_argument("--side-log", type=Path, default=SIDE_LOG, help="where the side lane's output goes")
    args = ap.parse_args(argv)
    started = time.monotonic()
    plan = None if args.serial or not hasattr(os, "sched_setaffinity") or available_cpus() < 2 \
        else load_plan(args.side, set(args.alone), args.fan_out)
    if plan and plan.side and plan.main:
        run_shared(plan, args.side_log.parent)
        plan = lanes_with_work(plan)
        if plan.side and plan.main:
            run_lanes(plan, args.side_log)
    run_step(repro_cmd([]))
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"pipeline up to date ({minutes} min {seconds} s)", flush=True)


if __name__ == "__main__":
    main()
