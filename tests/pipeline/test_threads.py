"""Thread defaults: set once, before torch loads, never overriding the user's environment."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import threads
from pipeline.threads import cgroup_cpu_limit, configure_threads, thread_settings

PROBE = "import {mod}, os; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
TORCH_PROBE = "import {mod}, os, torch; print(os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())"


def _probe(mod: str, code: str = PROBE, **env) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FOVSEG_THREADS")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code.format(mod=mod)], env=full, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.split()


def test_stage_and_cli_processes_get_a_short_spin():
    assert _probe("stages")[0] == "1000"
    assert _probe("pipeline.cli")[0] == "1000"


def test_user_environment_wins_and_fovseg_threads_sets_the_count():
    assert _probe("pipeline", OMP_WAIT_POLICY="ACTIVE") == ["None", "ACTIVE"]  # the user's policy, no spin default
    assert _probe("pipeline", GOMP_SPINCOUNT="50")[0] == "50"
    assert _probe("pipeline", TORCH_PROBE, FOVSEG_THREADS="1", OMP_NUM_THREADS="2") == ["1000", "1"]


def test_after_torch_import_only_the_count_changes(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("FOVSEG_THREADS", "1")
    try:
        assert configure_threads()["threads"] == "1" and torch.get_num_threads() == 1
        assert thread_settings()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def _cgroup(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /proc/self/cgroup and cgroup mount holding ``files`` (paths relative to the mount)."""
    mount = tmp_path / "cgroup"
    for rel, text in files.items():
        (mount / rel).parent.mkdir(parents=True, exist_ok=True)
        (mount / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc_lines)
    return tmp_path / "proc_cgroup", mount


@pytest.mark.parametrize("proc_lines, files, expected", [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),  # docker --cpus=1.5 (cgroup v2, own namespace)
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),  # no quota
    ("0::/user.slice/job\n", {"user.slice/job/cpu.max": "max 100000\n", "user.slice/cpu.max": "200000 100000\n"},
     2.0),  # a parent's quota binds its children
    ("0::/a/b\n", {"a/b/cpu.max": "300000 100000\n", "a/cpu.max": "400000 100000\n"}, 3.0),  # the tightest
    ("4:cpu,cpuacct:/docker/abc\n0::/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
                                            "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),  # v1, no namespace
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 unlimited
    ("0::/\n", {"unified/cpu.max": "100000 100000\n"}, 1.0),  # hybrid host: v2 at unified/
    ("0::/\n", {"cpu.max": "garbage\n"}, None),
    ("0::/\n", {"cpu.max": "100000 0\n"}, None),
])
def test_cgroup_cpu_quota_in_cpus(tmp_path, proc_lines, files, expected):
    assert cgroup_cpu_limit(*_cgroup(tmp_path, proc_lines, files)) == expected


def test_no_cgroup_file_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path) is None


@pytest.mark.parametrize("limit, expected", [(None, 8), (2.5, 2), (0.5, 1), (16.0, 8)])
def test_available_cpus_is_the_affinity_mask_capped_by_the_quota(monkeypatch, limit, expected):
    monkeypatch.setattr(threads, "usable_cpus", lambda: set(range(8)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: limit)
    assert threads.available_cpus() == expected


def test_a_cpu_quota_sets_the_thread_count_unless_the_user_did(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: set(range(8)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.0)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before torch loads (restored afterwards)
    for name in ("FOVSEG_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert configure_threads()["threads"] == "2" and os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's count wins
    assert "threads" not in configure_threads() and os.environ["OMP_NUM_THREADS"] == "4"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)  # no quota: torch's own default
    assert "threads" not in configure_threads() and "OMP_NUM_THREADS" not in os.environ
