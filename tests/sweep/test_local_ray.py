"""A local sweep's Ray listens on the loopback interface only, and a sweep whose trials cannot fit on the local
Ray is refused before Ray starts (a cluster, --address, decides for itself)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import psutil
import pytest

from pipeline.config import override
from pipeline.errors import FovsegError, ParamsError
from pipeline.params_file import load_params
from pipeline.sweep import ray_cluster, runner
from pipeline.sweep.ray_cluster import check_local_resources, machine_cpus
from pipeline.sweep.runner import SweepOptions, run_sweep

REPO = Path(__file__).resolve().parents[2]


def _params(**sweep):
    return override(load_params(REPO / "params.yaml"), {f"sweep.{k}": v for k, v in sweep.items()})


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every listening TCP socket owned by ``pids``."""
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = "?"
            out.append((c.laddr.ip, c.laddr.port, name))
    return out


def test_local_sweep_ray_listens_on_loopback_only(monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    try:
        ray_cluster.init_ray(_params(num_cpus=1), None)
        me = psutil.Process()
        ray_pids = {me.pid, *(p.pid for p in me.children(recursive=True))}  # driver, gcs_server, raylet, workers
        sockets = _listening(ray_pids)
        names = {name for _, _, name in sockets}
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), sockets
        exposed = [s for s in sockets if not _is_loopback(s[0])]
        assert not exposed, f"Ray sockets listening beyond the loopback interface: {exposed}"
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        # the job ships the code (runtime_env working_dir), without data, outputs, stores, venv or git
        import sys

        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers have no tests/
        shipped = ray.get(ray.remote(_worker_view).remote())
        assert shipped["cwd"] != str(REPO) and shipped["pipeline"].startswith(shipped["cwd"])
        assert {"models", "pipeline", "stages", "pyproject.toml"} <= set(shipped["files"])
        assert not {".git", ".venv", "outputs", "datasets", "mlartifacts", "mlflow.db", ".dvc"} & set(shipped["files"])
    finally:
        ray.shutdown()
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before  # the driver's environment is restored


def _worker_view() -> dict:
    import pipeline

    return {"cwd": os.getcwd(), "files": sorted(os.listdir()), "pipeline": pipeline.__file__}


def _opts(tmp_path: Path, address: str | None = None) -> SweepOptions:
    return SweepOptions(out=tmp_path / "out", storage=tmp_path / "ray", metrics=tmp_path / "m.json",
                        backbones=tmp_path, proposals_root=tmp_path, address=address)


def _no_ray(monkeypatch):
    def never(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(runner, "init_ray", never)  # the name run_sweep calls
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_cpus_per_trial_above_the_machine_is_refused_before_ray_starts(tmp_path, monkeypatch):
    _no_ray(monkeypatch)
    monkeypatch.setattr(ray_cluster, "machine_cpus", lambda: 2.0)
    with pytest.raises(ParamsError) as exc:
        run_sweep("modules", _params(cpus_per_trial=3.0), _opts(tmp_path))
    msg = str(exc.value)
    assert "sweep.cpus_per_trial = 3 is more than the 2 CPU(s)" in msg and "this machine has 2" in msg
    assert "--address" in msg and "\n" not in msg and isinstance(exc.value, FovsegError)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ray").exists()  # nothing made


def test_cpus_per_trial_above_sweep_num_cpus_names_that_key(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_cluster, "machine_cpus", lambda: 16.0)
    with pytest.raises(ParamsError, match=r"cpus_per_trial = 4 is more than the 2 CPU\(s\).*sweep.num_cpus = 2; "
                                          r"this machine has 16"):
        check_local_resources(_params(cpus_per_trial=4.0, num_cpus=2), None)
    check_local_resources(_params(cpus_per_trial=2.0, num_cpus=2), None)  # fits exactly


def test_a_cluster_decides_for_itself(monkeypatch):
    monkeypatch.setattr(ray_cluster, "machine_cpus", lambda: 2.0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_local_resources(_params(cpus_per_trial=64.0), "10.0.0.5:6379")  # --address
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    check_local_resources(_params(cpus_per_trial=64.0), None)  # $RAY_ADDRESS


def test_machine_cpus_matches_what_ray_detects():
    assert 1 <= machine_cpus() <= (os.cpu_count() or 1)


def test_runner_docstring_says_how_to_open_a_cluster():
    doc = runner.__doc__
    assert "127.0.0.1" in doc and "ray start --head --node-ip-address" in doc and "--address" in doc
