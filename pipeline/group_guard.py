"""Run a command in this process group and stop the group if the process that started us dies.

``python -m pipeline.group_guard CMD...`` is how :mod:`pipeline.parallel_repro` starts each ``dvc``, as the
leader of a new process group. When the launcher is killed outright (SIGKILL, or the OOM killer), it cannot
stop its stages; the kernel then sends this process ``ORPHAN_SIGNAL`` (``PR_SET_PDEATHSIG``, Linux), and it
stops the group as Ctrl-C would: SIGINT to every process in it (DVC ignores SIGINT while its stage command
runs, and the command stops), then SIGTERM after ``STOP_WAIT_S`` if something is still running.

While the launcher lives, this only waits: its SIGINT to the group is for the command, and its SIGTERM ends
the group, this process included. The exit status is the command's (killed by signal N: 128 + N).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

ORPHAN_SIGNAL = signal.SIGUSR1  # nothing else sends it to the group
STOP_WAIT_S = 120  # after SIGINT: how long a group gets to stop before SIGTERM (here and in parallel_repro)
PR_SET_PDEATHSIG = 1


def signal_when_parent_dies(signum: int) -> bool:
    """Ask the kernel for ``signum`` when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signum) == 0
    except OSError:
        return False


def stop_group(wait_s: float = STOP_WAIT_S) -> None:
    """SIGINT to this process group now, SIGTERM after ``wait_s`` seconds (from a daemon timer: if the group
    has stopped by then, this process has exited and the timer with it)."""
    os.killpg(0, signal.SIGINT)
    timer = threading.Timer(wait_s, os.killpg, (0, signal.SIGTERM))
    timer.daemon = True
    timer.start()


def run(cmd: list[str]) -> int:
    """Run ``cmd`` (in this process group) to its end; stop the group if the parent dies meanwhile."""
    parent = os.getppid()
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # a handler, not SIG_IGN: exec resets it for cmd
    signal.signal(ORPHAN_SIGNAL, lambda signum, frame: stop_group())
    if signal_when_parent_dies(ORPHAN_SIGNAL) and os.getppid() != parent:
        print("group_guard: the launcher died before the command started; not starting it", file=sys.stderr)
        return 1
    rc = subprocess.Popen(cmd).wait()
    return 128 - rc if rc < 0 else rc


def main(argv: list[str] | None = None) -> None:
    cmd = sys.argv[1:] if argv is None else argv
    if not cmd:
        raise SystemExit("usage: python -m pipeline.group_guard CMD [ARG ...]")
    raise SystemExit(run(cmd))


if __name__ == "__main__":
    main()
