"""``dvc repro`` with the sweep stages beside the main chain, each pinned to its own half of the CPUs.

``make demo`` runs this. DVC reproduces one stage at a time, and on a small CPU that leaves a core idle for
minutes: the toy training step barely uses a second thread (9.9 vs 9.5 it/s, 2 cores) and the sweep's trials
are one-thread processes anyway. On 2 cores the stages between the proposals and the benchmark took 249 s
this way against 334 s one at a time (same checkout, run back to back, 2026-12-03). So, in three steps over the
pipeline's own graph (read from ``dvc.yaml``; nothing about it is repeated here):

1. ``dvc repro`` of what the side stages (``sweep@*``) depend on: datasets, backbones, proposals, on every CPU;
2. two ``dvc repro --single-item`` at once, each lane's stages in dependency order: the side stages pinned to
   one half of the CPUs, and everything else that does not depend on them (train, evaluate, attention)
   pinned to the other half, each lane told its thread count (``FOVSEG_THREADS``; the local Ray instance of
   a sweep takes the CPUs it may run on);
3. ``dvc repro`` of the rest on every CPU: the stages that read the sweeps' results (the report) and the
   ones that must run alone because they time things (``benchmark``).

DVC supports this: a stage's command runs with the repository lock released, and each stage locks its own
dependencies (shared, read) and outputs (exclusive, write); the two lanes share no output. Each lane runs
its stages with ``--single-item`` because checking the shared stages again would lock their outputs for
writing while the other lane reads them. Results are those of a serial ``dvc repro`` with the same thread
counts; torch's arithmetic depends on the thread count, so the one-thread train stage ends with a training
loss that differs from a two-thread run's in the fifth digit (2.261906 vs 2.261841 on the toy preset, every
evaluation metric identical, 2026-12-03). A final plain ``dvc repro``
(step 3) also picks up anything the lanes left stale. The lanes start only when both have stale stages after
step 1 (otherwise the one with work would run on half the CPUs, with other thread counts than a plain
``dvc repro``); with fewer than 2 CPUs, without CPU affinity (not Linux) or with ``--serial``, it is one plain
``dvc repro`` too.

Each ``dvc`` runs in its own process group; Ctrl-C (or SIGTERM to this process) is passed on to them as
SIGINT, and this waits for them to stop, so no stage is left running. If this process is killed outright
(SIGKILL), a lane keeps running to its end; a new run meanwhile fails at once with DVC's "... is busy, it is
being blocked by: (PID ...)".

The side lane's output goes to a log file (two interleaved progress bars are unreadable); its last lines
are printed if it fails.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.threads import available_cpus, usable_cpus

SIDE_LOG = Path(".dvc/tmp/repro-side-lane.log")
STOP_WAIT_S = 120  # after Ctrl-C: how long the dvc processes get to stop before they are terminated


@dataclass(frozen=True)
class Plan:
    """Stage names (DVC addressing) of each step."""
    shared: list[str]
    side: list[str]
    main: list[str]


def _reach(graph, names: set[str], step) -> set[str]:
    """Names of the stages ``step`` (``networkx.descendants``: their dependencies, ``ancestors``: the stages
    that depend on them) reaches from ``names``."""
    by_name = {s.addressing: s for s in graph.nodes}
    return {s.addressing for name in names for s in step(graph, by_name[name])}


def plan_lanes(graph, side_pattern: str, alone: set[str]) -> Plan:
    """Split DVC's stage graph (edges point from a stage to the stages it depends on) into the three steps.

    ``shared``: every stage a side stage depends on; ``side``: stages matching ``side_pattern``; ``main``:
    the others that depend neither on a side stage nor on an ``alone`` stage. What is left (downstream of
    the side or alone stages, and the alone stages) is step 3's."""
    import networkx as nx

    names = {s.addressing for s in graph.nodes}
    side = {n for n in names if fnmatch.fnmatchcase(n, side_pattern)} - alone
    shared = _reach(graph, side, nx.descendants)
    alone = alone & names
    later = alone | _reach(graph, side | alone, nx.ancestors)
    side -= shared | later  # a side stage that another one depends on (or follows) runs in step 1 (or 3)
    main = names - shared - side - later
    order = [s.addressing for s in reversed(list(nx.topological_sort(graph)))]  # dependencies first
    return Plan(shared=[n for n in order if n in shared], side=[n for n in order if n in side],
                main=[n for n in order if n in main])


def with_work(plan: Plan, graph, stale: set[str]) -> Plan:
    """The plan's lanes cut to the stages that will run: the stale ones and those downstream of them."""
    import networkx as nx

    todo = stale | _reach(graph, stale, nx.ancestors)
    return Plan(shared=plan.shared, side=[n for n in plan.side if n in todo],
                main=[n for n in plan.main if n in todo])


def load_plan(side_pattern: str, alone: set[str]) -> Plan:
    """The three steps of this project's pipeline."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return plan_lanes(repo.index.graph, side_pattern, alone)


def lanes_with_work(plan: Plan) -> Plan:
    """After step 1: the lanes' stages that DVC will run (stale, not frozen, or downstream of such)."""
    from dvc.repo import Repo

    with Repo(".") as repo, repo.lock:
        graph = repo.index.graph
        lane = set(plan.side) | set(plan.main)
        stale = {s.addressing for s in graph.nodes if s.addressing in lane and not s.frozen and s.changed()}
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


def lane_threads(cpus: set[int]) -> str:
    """A lane's thread count: its CPUs, or fewer if the user asked for fewer (``FOVSEG_THREADS``)."""
    asked = os.environ.get("FOVSEG_THREADS")
    return str(min(len(cpus), int(asked)) if asked and asked.isdigit() and int(asked) > 0 else len(cpus))


def start_pinned(cmd: list[str], cpus: set[int], **popen) -> subprocess.Popen:
    """Start ``cmd`` on ``cpus`` only (the child and all its children inherit the affinity) with as many threads."""
    env = {**os.environ, "FOVSEG_THREADS": lane_threads(cpus)}
    return subprocess.Popen(cmd, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cpus), process_group=0, **popen)


def exit_status(rc: int) -> int:
    """A child's return code as a shell exit status (killed by signal N: 128 + N)."""
    return 128 - rc if rc < 0 else rc


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """``signum`` to the process group ``proc`` leads (dvc and the stage command it runs)."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for every process (each leads its own process group). On Ctrl-C or SIGTERM: SIGINT to each group
    (the stage command stops, then DVC), wait up to ``STOP_WAIT_S`` for them to end, terminate what is left,
    then re-raise (SIGTERM as exit status 143)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return [p.wait() for p in procs]
    except (KeyboardInterrupt, _Terminated) as exc:
        for p in procs:
            if p.poll() is None:
                signal_group(p, signal.SIGINT)
        for p in procs:
            try:
                p.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                signal_group(p, signal.SIGTERM)
                p.wait()
        if isinstance(exc, _Terminated):
            raise SystemExit(143) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_step(cmd: list[str]) -> None:
    print(f"$ {shown(cmd)}", flush=True)
    rc = wait_all([subprocess.Popen(cmd, process_group=0)])[0]
    if rc:
        raise SystemExit(exit_status(rc))


def tail(path: Path, lines: int = 40) -> str:
    """The last non-empty lines of a log (progress bars' carriage returns read as line ends)."""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def run_lanes(plan: Plan, log_path: Path) -> None:
    """Step 2: both lanes at once; waits for both, then fails naming the lane(s) that failed."""
    cpus = sorted(usable_cpus())
    half = len(cpus) // 2
    main_cpus, side_cpus = set(cpus[:half]), set(cpus[half:])
    side_cmd, main_cmd = repro_cmd(plan.side, single_items=True), repro_cmd(plan.main, single_items=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shown(side_cmd)}  (CPUs {sorted(side_cpus)}, output: {log_path})", flush=True)
    print(f"$ {shown(main_cmd)}  (CPUs {sorted(main_cpus)})", flush=True)
    with open(log_path, "wb") as log:
        side = start_pinned(side_cmd, side_cpus, stdout=log, stderr=subprocess.STDOUT)
        main = start_pinned(main_cmd, main_cpus)
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
    ap.add_argument("--serial", action="store_true", help="one plain `dvc repro`")
    ap.add_argument("--side-log", type=Path, default=SIDE_LOG, help="where the side lane's output goes")
    args = ap.parse_args(argv)
    plan = None if args.serial or not hasattr(os, "sched_setaffinity") or available_cpus() < 2 \
        else load_plan(args.side, set(args.alone))
    if plan and plan.side and plan.main:
        if plan.shared:
            run_step(repro_cmd(plan.shared))
        plan = lanes_with_work(plan)
        if plan.side and plan.main:
            run_lanes(plan, args.side_log)
    run_step(repro_cmd([]))


if __name__ == "__main__":
    main()
