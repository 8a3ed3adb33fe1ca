"""Thread defaults: set once, before torch loads, never overriding the user's environment."""
import os
import subprocess
import sys

from pipeline.threads import configure_threads, thread_settings

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
