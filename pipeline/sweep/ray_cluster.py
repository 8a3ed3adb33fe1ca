"""Where a sweep's Ray runs and what its nodes get (the overview: :mod:`pipeline.sweep.runner`): a new local
instance listening on the loopback interface only, or an existing cluster (``--address`` / ``$RAY_ADDRESS``); the
CPU check before a local instance starts; the code shipped as the job's ``runtime_env`` ``working_dir``; and paths
that travel relative to the shared root, resolved on each node under ``$FOVSEG_SHARED_ROOT``."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.errors import ParamsError
from pipeline.tracking import REPO_ROOT

log = logging.getLogger(__name__)


SHARED_ROOT_ENV = "FOVSEG_SHARED_ROOT"  # on a node: where the driver's shared root is mounted there


def node_root(driver_root: str) -> Path:
    """The shared root on this node: ``$FOVSEG_SHARED_ROOT`` (set where the node was started), else the driver's
    path (the same mount everywhere)."""
    return Path(os.environ.get(SHARED_ROOT_ENV) or driver_root)


def portable(path: str | Path, root: Path) -> str:
    """``path`` relative to the shared ``root`` (posix) when it lies under it, else absolute. Lexical: a symlink
    under the root stays under it (its target need not be)."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(root).as_posix() or "."
    except ValueError:
        return str(p)


def on_node(path: str, root: Path) -> str:
    """A :func:`portable` path on this node."""
    return path if os.path.isabs(path) else str(root / path)


LOOPBACK = "127.0.0.1"
_NO_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes the loopback address as the node's address


def ray_address(address: str | None) -> str | None:
    """The Ray cluster to attach to: ``--address``, else ``$RAY_ADDRESS``; None = a new local instance."""
    return address or os.environ.get("RAY_ADDRESS") or None


def machine_cpus() -> float:
    """The CPUs a local Ray instance detects on this machine (cgroup quotas included), else ``os.cpu_count()``."""
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus(override_docker_cpu_warning=True))
    except (ImportError, AttributeError, TypeError):
        return float(os.cpu_count() or 1)


def check_local_resources(params: Params, address: str | None) -> None:
    """A local run: refuse ``sweep.cpus_per_trial`` above the CPUs the local Ray gets (no trial could ever be
    scheduled; Tune would wait forever). A cluster (``address``) decides for itself."""
    if ray_address(address):
        return
    sp, machine = params.sweep, machine_cpus()
    cpus = float(sp.num_cpus) if sp.num_cpus else machine
    if sp.cpus_per_trial > cpus:
        source = f"sweep.num_cpus = {sp.num_cpus}" if sp.num_cpus else "sweep.num_cpus = 0: all of them"
        raise ParamsError(f"sweep.cpus_per_trial = {sp.cpus_per_trial:g} is more than the {cpus:g} CPU(s) of the "
                          f"local Ray instance ({source}; this machine has {machine:g}): no trial could ever start. "
                          "Lower sweep.cpus_per_trial, or run on a cluster with --address")


def _start_local_ray(ray: Any, params: Params, runtime_env: dict[str, Any]) -> None:
    """A new local Ray instance whose servers listen on the loopback interface only. Ray replaces a loopback
    ``_node_ip_address`` by the machine's network address unless its "no cluster" switch is off, so the switch
    is turned off around ``ray.init`` (the raylet and workers inherit it from the environment) and restored."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_NO_CLUSTER_ENV), vars(ray_constants).get("ENABLE_RAY_CLUSTER", True)
    os.environ[_NO_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by services.get_node_ip_address at call time
    try:
        # address="local": always a new local instance, never a cluster some earlier `ray start` left behind
        ray.init(address="local", num_cpus=params.sweep.num_cpus or None, include_dashboard=False,
                 _node_ip_address=LOOPBACK, log_to_driver=False,
                 runtime_env={**runtime_env, "env_vars": {**runtime_env["env_vars"], _NO_CLUSTER_ENV: "0"}})
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_NO_CLUSTER_ENV, None)
        else:
            os.environ[_NO_CLUSTER_ENV] = saved_env
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        log.warning("the local Ray instance listens on %s, not only on %s (this Ray version ignores the loopback "
                    "request); keep the machine behind a firewall", node_ip, LOOPBACK)


# what the job's code copy leaves out (gitignore patterns, relative to the repository; Ray also skips what
# .gitignore lists): data, pipeline outputs, tracking stores, the venv, git and DVC internals, weights
CODE_EXCLUDES = ("/.git/", "/.venv/", "/.dvc/", "/outputs/", "/datasets/", "/data/", "/cache/", "/mlruns/",
                 "/mlartifacts/", "/mlflow.db", "/ray_results/", "/reports/", "/metrics/", "/docs/", "/tests/",
                 "__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/", "*.pt", "*.pth", "*.safetensors")
FORWARDED_ENV = ("FOVSEG_LOG", "FOVSEG_CACHE", "XDG_CACHE_HOME", "HF_HOME")


def code_runtime_env() -> dict[str, Any]:
    """The sweep job's ``runtime_env``: this repository's code as the ``working_dir`` every worker imports from
    (Ray uploads it once per content hash; workers start in their copy, first on ``sys.path``), and a few
    environment variables. ``$FOVSEG_SHARED_ROOT`` is not forwarded: each node has its own."""
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TQDM_DISABLE": "1"}
    env.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    return {"working_dir": str(REPO_ROOT), "excludes": list(CODE_EXCLUDES), "env_vars": env}


def init_ray(params: Params, address: str | None) -> None:
    """Attach to the cluster at ``address`` / ``$RAY_ADDRESS``, else start a local instance on 127.0.0.1; either
    way the job ships the code (:func:`code_runtime_env`)."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = code_runtime_env()
    address = ray_address(address)
    if address:
        log.info("attaching to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        _start_local_ray(ray, params, runtime_env)
