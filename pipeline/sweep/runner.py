"""Ablation sweeps (Table IV, Fig. 9) on Ray Tune: rows x seeds of a grid (:mod:`pipeline.sweep.grids`) as
trials (:func:`pipeline.sweep.trial.run_trial`), resumable, with a results JSON and an MLflow mirror.

Layout under ``out`` (deterministic, so a re-run finds its work again): ``<experiment>/<row>__seed<k>/``
(checkpoints, model, predictions, metrics of one trial; ``<experiment>`` = grid, preset and a fingerprint of
rows, seeds, base params and code: :func:`pipeline.sweep.grids.experiment_name`) and
``proposals/<generator key>/<bench>/`` (proposals of a row whose generator differs from the base one). Ray Tune's
experiment state lives under ``storage/<experiment>`` (shared storage on a cluster); re-running the same command
restores it: finished trials are not run again and interrupted ones resume from their last training checkpoint.

Ray: without ``--address`` (or ``$RAY_ADDRESS``) the sweep starts its own local Ray instance bound to the loopback
interface (127.0.0.1: gcs_server, raylet and workers listen there only, no dashboard), so nothing is reachable from
the network; ``sweep.cpus_per_trial`` above the CPUs it gets (``sweep.num_cpus``, else the machine's) is refused
before Ray starts, as no trial could ever be scheduled. To run on a cluster, open one deliberately: on the head
node ``ray start --head --node-ip-address <its LAN address> --port 6379``, on each worker ``ray start --address
<head>:6379``, then ``fovseg sweep GRID --address <head>:6379`` (the cluster decides what fits where).

What a node needs (docs/sweeps.md, "On a Ray cluster"): the code travels with the job (Ray's ``runtime_env``
``working_dir`` = this repository without its data, outputs, stores and venv: :func:`code_runtime_env`), not the
driver's repository path. Data travels as paths relative to one **shared root**, the driver's working directory
(``SweepOptions.shared_root``): backbones, proposals, trial folders, the proposal cache and the dataset root, when
they lie under it; a node that mounts the shared root elsewhere is started with ``FOVSEG_SHARED_ROOT=<its path>``
in its environment (``FOVSEG_SHARED_ROOT=/mnt/fovseg ray start --address ...``). A path outside the root is sent
as it is and must be the same on every node. Only the driver writes MLflow: each trial's run as soon as Tune
reports it finished or failed (a Tune callback), the per-row summary at the end (:class:`SweepTracking`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.config import Params, override, to_dict
from pipeline.data.formats import write_metrics
from pipeline.errors import ParamsError
from pipeline.params_file import params_from_dict
from pipeline.sweep.grids import Grid, RowNotExpressible, experiment_name, load_grid, trial_name, trial_overrides
from pipeline.sweep.trial import SharedInputs, generator_key, run_trial
from pipeline.tracking import GROUP_TAG, REPO_ROOT, git_commit, run_group

log = logging.getLogger(__name__)
TrialFn = Callable[..., dict]  # run_trial's signature


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


def _tune_trainable(config: dict, context: dict) -> None:
    """What Ray runs for one trial spec (row x seed), on any node: paths resolve against this node's shared
    root, the code is the job's ``working_dir`` copy."""
    from ray import tune

    spec = config["spec"]
    root = node_root(context["root"])
    os.chdir(on_node(context["workdir"], root))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(context["cpus_per_trial"]))))
    import torch

    torch.set_num_threads(max(1, int(context["cpus_per_trial"])))
    from pipeline.console import setup_logging

    setup_logging()
    base_dict = {**context["base_params"],
                 "data": {**context["base_params"]["data"], "root": on_node(context["data_root"], root)}}
    base = params_from_dict(base_dict, "sweep base params")
    trial_dir = Path(on_node(context["trials"], root)) / spec["name"]
    shared = {k: on_node(v, root) if k in SharedInputs.PATHS else v for k, v in context["shared"].items()}
    trial_fn: TrialFn = context["trial_fn"]
    metrics = trial_fn(base, spec["trial_overrides"], trial_dir, SharedInputs(**shared),
                       benchmarks=context["benchmarks"], evaluation=spec["evaluation"])
    tune.report({k: float(v) for k, v in metrics.items()})


@dataclass
class SweepOptions:
    out: Path  # deterministic trial dirs and the generator proposal cache
    storage: Path  # Ray Tune experiment state (shared storage for a cluster)
    metrics: Path  # metrics/sweeps/<grid>.json
    backbones: Path
    proposals_root: Path
    address: str | None = None
    max_concurrent: int | None = None
    seeds: tuple[int, ...] | None = None
    tracking_uri: str | None = None
    trial_fn: TrialFn = run_trial
    verbose: int = 1
    shared_root: Path | None = None  # paths under it travel relative to it (default: the working directory)


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


def _init_ray(params: Params, address: str | None) -> None:
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


def run_sweep(grid_name: str, params: Params, opts: SweepOptions) -> dict:
    """Validate the grid, run (or resume) rows x seeds on Ray Tune, write the results JSON, mirror to MLflow."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table (CLIReporter)
    import ray  # noqa: F401 - fail early if Ray is missing
    from ray import tune

    seeds = tuple(opts.seeds or params.sweep.seeds)
    params = override(params, {"sweep.seeds": seeds})
    grid = load_grid(grid_name, params)
    check_local_resources(params, opts.address)  # before any folder is made or Ray starts
    specs = [{"row": row.label, "seed": seed, "name": trial_name(row, seed), "overrides": row.overrides,
              "trial_overrides": trial_overrides(grid, row, seed), "evaluation": row.evaluation}
             for row in grid.rows if not row.blocked for seed in seeds]
    # rows the model cannot express (yet) stay in the results as failures; they are not sent to Ray
    blocked = [{"row": row.label, "seed": seed, "name": trial_name(row, seed), "overrides": row.overrides,
                "metrics": {}, "seconds": 0.0,
                "error": f"{RowNotExpressible.__name__}: grid {grid.name!r}, row {row.label!r}: {row.blocked}"}
               for row in grid.rows if row.blocked for seed in seeds]
    for b in blocked:
        log.warning("%s", b["error"])
    if params.train.gpus > 1:  # trials do not relaunch under torchrun
        log.warning("train.gpus = %d is for the train stage: each sweep trial trains in one process on "
                    "sweep.gpus_per_trial = %s GPU(s) with the same global train.batch_size = %d",
                    params.train.gpus, params.sweep.gpus_per_trial, params.train.batch_size)
    name = experiment_name(grid, params, seeds)
    trials_root = opts.out / name
    trials_root.mkdir(parents=True, exist_ok=True)
    opts.storage.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.abspath(opts.shared_root or Path.cwd()))  # what the nodes share: paths under it travel relative
    shared = SharedInputs(portable(opts.backbones, root), portable(opts.proposals_root, root),
                          portable(opts.out / "proposals", root), ".", generator_key(params))
    sp = params.sweep
    from pipeline.data.registry import dataset_root

    context = {"grid": grid.name, "base_params": to_dict(params), "root": str(root),
               "data_root": portable(dataset_root(params.data.root or None), root),
               "trials": portable(trials_root, root), "workdir": ".",
               "benchmarks": list(grid.benchmarks), "shared": dataclasses.asdict(shared),
               "cpus_per_trial": sp.cpus_per_trial, "trial_fn": opts.trial_fn}
    trainable = tune.with_resources(tune.with_parameters(_tune_trainable, context=context),
                                    {"cpu": sp.cpus_per_trial, "gpu": sp.gpus_per_trial})
    t0, started = time.perf_counter(), time.time()
    tracking = SweepTracking(grid, params, name, opts.tracking_uri, started).open()  # before Ray: rows exist
    _init_ray(params, opts.address)
    exp_path = str(opts.storage.resolve() / name)
    callback = trials_to_mlflow()(tracking)  # each trial's MLflow run as soon as it ends
    if tune.Tuner.can_restore(exp_path):
        log.info("resuming sweep %s from %s (finished trials are kept)", grid.name, exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
        local = getattr(tuner, "_local_tuner", None)  # the restored RunConfig carries the old callback: this one
        if local is not None:
            local.get_run_config().callbacks = [callback]
    else:
        metric_cols = {f"{b}/{m}": f"{b}/{m}" for b in grid.benchmarks for m in ("PQ", "mIoU", "PQ_unseen")}
        reporter = tune.CLIReporter(metric_columns=metric_cols, parameter_columns={"spec/name": "trial"},
                                    max_report_frequency=30)
        tuner = tune.Tuner(
            trainable, param_space={"spec": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=opts.max_concurrent or sp.max_concurrent or None,
                                        reuse_actors=True, trial_name_creator=lambda t: t.config["spec"]["name"],
                                        trial_dirname_creator=lambda t: t.config["spec"]["name"]),
            run_config=tune.RunConfig(name=name, storage_path=str(opts.storage.resolve()),
                                      failure_config=tune.FailureConfig(max_failures=sp.max_failures),
                                      progress_reporter=reporter, verbose=opts.verbose, callbacks=[callback]))
    try:
        results = tuner.fit() if specs else []
    except BaseException:
        tracking.abort("FAILED")
        raise
    wall = time.perf_counter() - t0
    trials = [_trial_outcome(r) for r in results] + blocked
    summary = {**summarize(grid, params.preset, seeds, trials, wall), "experiment": name, "produced": _produced(params)}
    write_metrics(opts.metrics, summary)
    tracking.finish(summary, trials)
    log.info("sweep %s: %d trials, %d failed, %.0f s -> %s", grid.name, len(trials), summary["failed_trials"], wall,
             opts.metrics)
    return summary


def _produced(params: Params) -> dict:
    """The results file's provenance block (read by pipeline.report.provenance)."""
    from pipeline.report.provenance import utc_text

    return {"utc": utc_text(time.time()), "commit": git_commit(), "preset": params.preset}


def _error_text(err: Any) -> str:
    cause = getattr(err, "cause", None) or err
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


def _outcome(spec: dict, reported: dict | None, error: Any) -> dict:
    """One trial's entry of the results: its spec, the metrics it reported (``<bench>/<metric>``,
    ``train/<name>``), its error (first line) and its time."""
    reported = reported or {}
    metrics = {k: float(v) for k, v in reported.items()
               if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"row": spec["row"], "seed": spec["seed"], "name": spec["name"], "overrides": spec["overrides"],
            "metrics": {} if error is not None else metrics,
            "error": None if error is None else _error_text(error),
            "seconds": float(reported.get("time_total_s", 0.0)),
            "ended": float(reported["timestamp"]) if reported.get("timestamp") else None}


def _trial_outcome(result: Any) -> dict:
    """:func:`_outcome` of a Tune ``Result``."""
    return _outcome(result.config["spec"], result.metrics, result.error)


def _finished_trial_outcome(trial: Any, failed: bool) -> dict:
    """:func:`_outcome` of a Tune ``Trial`` that just ended (in a callback)."""
    error = None
    if failed:
        try:
            error = trial.get_pickled_error() or trial.get_error()
        except Exception:  # noqa: BLE001 - the reason is in Tune's error file then
            error = None
        if isinstance(error, str):  # the text trace: its last line names the exception
            error = RuntimeError(error.strip().splitlines()[-1] if error.strip() else "trial failed")
        error = error or RuntimeError(f"trial failed (Tune's error file: {trial.error_file})")
    outcome = _outcome(trial.config["spec"], dict(trial.last_result or {}), error)
    if failed and outcome["ended"] is None:
        outcome["ended"] = time.time()
    return outcome


def summarize(grid: Grid, preset: str, seeds: tuple[int, ...], trials: list[dict], wall: float) -> dict:
    """The results file: per row mean, std (sample, ddof=1; 0 for one seed), n and per-seed values."""
    rows = []
    for row in grid.rows:
        mine = sorted((t for t in trials if t["row"] == row.label), key=lambda t: t["seed"])
        ok = [t for t in mine if t["error"] is None]
        keys = sorted({k for t in ok for k in t["metrics"]})
        values = {k: [t["metrics"][k] for t in ok if k in t["metrics"]] for k in keys}
        entry: dict[str, Any] = {
            "label": row.label, "overrides": row.overrides, "evaluation": row.evaluation, "n": len(ok),
            "seeds": [t["seed"] for t in ok], "mean": {k: _mean(v) for k, v in values.items()},
            "std": {k: _std(v) for k, v in values.items()}, "values": values,
            "failures": [{"seed": t["seed"], "error": t["error"]} for t in mine if t["error"] is not None]}
        if row.x is not None:
            entry["x"] = row.x
        rows.append(entry)
    return {"grid": grid.name, "paper_table": grid.paper_table, "reference_row": grid.reference_row,
            "preset": preset, "x_key": grid.x_key, "benchmarks": list(grid.benchmarks), "seeds": list(seeds),
            "wall_seconds": wall, "trial_seconds": sum(t["seconds"] for t in trials),
            "failed_trials": sum(t["error"] is not None for t in trials), "rows": rows}


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _std(v: list[float]) -> float:
    if len(v) < 2:
        return 0.0
    m = _mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


# ----------------------------------------------------------------------------- MLflow
def tracking_uri() -> str:
    """Same rule as pipeline.tracking: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db."""
    from pipeline.tracking import default_tracking_uri

    return default_tracking_uri()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class SweepTracking:
    """The sweep's MLflow mirror, written by the driver only (best effort: a failure is a warning, the results
    JSON is the source of truth). Layout, in the preset's experiment (``tracking.experiment``):

    - ``sweep@<grid>`` (tag ``kind = sweep``), nested under the pipeline run of the same run group
      (``pipeline.tracking.run_group``: git revision, params.yaml, DVC experiment), the run every stage of that
      ``dvc repro`` / ``dvc exp run`` nests under; the ``sweep@<grid>`` DVC stage creates it if no stage did yet.
      A sweep run by hand (``fovseg sweep``) with no pipeline run of its group stays top-level, tagged
      ``git_commit`` and ``fovseg.group`` like the pipeline runs (group the runs table by either). Metrics:
      ``trials``, ``failed_trials``, ``wall_seconds``, ``trial_seconds``; artifact ``summary.json`` (the results
      file). Found again by its ``sweep_key`` (the Tune experiment name) on a re-run.
    - one run per grid row (``kind = sweep_row``, in the grid's order): params = the row's overrides;
      metrics ``<bench>/<metric>`` = the mean over seeds, ``<bench>/<metric>_sd`` = the sample sd (2+ seeds),
      ``<bench>/<metric>_delta`` / ``_delta_sd`` = the paired difference to the grid's reference row (mean and
      sd over the seeds both finished, as in the report), ``n_seeds``, ``failed_seeds``. The same names as the
      trials and the evaluate stage, so one column holds the row means, the trials and the pipeline's models.
    - one run per trial under its row (``kind = sweep_trial``), logged when Tune reports the trial finished or
      failed (:class:`TrialsToMlflow`), spanning the trial's own time; its overrides, seed and row as params.
    """

    def __init__(self, grid: Grid, params: Params, sweep_key: str, uri: str | None = None,
                 started: float | None = None):
        self.grid, self.sweep_key = grid, sweep_key
        self.experiment, self.preset = params.tracking.experiment, params.preset
        self.seeds = tuple(params.sweep.seeds)
        self.uri = uri or tracking_uri()
        self.started = started or time.time()
        self.group = run_group()
        self.client: Any = None
        self.exp_id = self.parent_id = self.pipeline_id = None
        self.row_ids: dict[str, str] = {}
        self.done: set[str] = set()

    def __getstate__(self) -> dict:  # pickled in Tune's experiment state (the callback): no client
        return {**self.__dict__, "client": None}

    @property
    def active(self) -> bool:
        return self.client is not None and self.parent_id is not None

    def _warn(self, what: str, exc: Exception) -> None:
        log.warning("MLflow logging of sweep %s (%s) failed (%s: %s); the results JSON is still written",
                    self.grid.name, what, type(exc).__name__, exc)

    def open(self) -> "SweepTracking":
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a sweep
            self._warn("setup", exc)
            self.client = None
        return self

    def _open(self) -> None:
        from mlflow.tracking import MlflowClient

        from pipeline.tracking import ensure_experiment, mark_killed, pipeline_run, relocate_store, sqlite_path

        if self.uri.startswith("http"):  # a server that is down: one quick warning, not minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        db = sqlite_path(self.uri)
        if db is not None:
            relocate_store(db)
        client = MlflowClient(self.uri)
        grid, key, started_ms = self.grid, _quote(self.sweep_key), int(self.started * 1000)
        exp = self.exp_id = ensure_experiment(client, self.experiment, self.uri, grid.benchmarks)
        mark_killed(client, exp)  # runs of a driver or stage that died (a killed sweep's, before it resumes)
        self.pipeline_id = pipeline_run(client, exp, self.group, create=bool(os.environ.get("DVC_STAGE")),
                                        start_ms=started_ms)
        nest = {"mlflow.parentRunId": self.pipeline_id} if self.pipeline_id else {}
        found = client.search_runs([exp], f"tags.sweep_key = '{key}' and tags.kind = 'sweep'", max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            client.update_run(self.parent_id, status="RUNNING")
            for k, v in nest.items():
                client.set_tag(self.parent_id, k, v)
        else:
            tags = {"kind": "sweep", "sweep_key": self.sweep_key, "grid": grid.name, "paper_table": grid.paper_table,
                    "reference_row": grid.reference_row, "preset": self.preset, "git_commit": git_commit(),
                    GROUP_TAG: self.group, "dvc_stage": os.environ.get("DVC_STAGE", ""), **nest}
            parent = client.create_run(exp, run_name=f"sweep@{grid.name}", start_time=started_ms, tags=tags)
            self.parent_id = parent.info.run_id
            self._log(client, self.parent_id, params={"grid": grid.name, "seeds": ",".join(map(str, self.seeds)),
                                                      "preset": self.preset, "reference_row": grid.reference_row})
        rows = {r.data.tags.get("row"): r.info.run_id for r in client.search_runs(
            [exp], f"tags.sweep_key = '{key}' and tags.kind = 'sweep_row'", max_results=1000)}
        for i, row in enumerate(grid.rows):
            if row.label not in rows:  # start times 1 ms apart: newest first = the grid's order
                tags = {"mlflow.parentRunId": self.parent_id, "kind": "sweep_row", "row": row.label,
                        "grid": grid.name, "sweep_key": self.sweep_key, "paper_table": grid.paper_table,
                        "reference": str(row.label == grid.reference_row).lower(),
                        **({"blocked": row.blocked[:5000]} if row.blocked else {})}
                run = client.create_run(exp, run_name=f"{grid.name}: {row.label}", tags=tags,
                                        start_time=started_ms + len(grid.rows) - i)
                rows[row.label] = run.info.run_id
                self._log(client, run.info.run_id, params={
                    **{f"override.{k}": v for k, v in row.overrides.items()},
                    **{f"evaluation.{k}": v for k, v in row.evaluation.items()},
                    **({"x": row.x} if row.x is not None else {})})
            else:
                client.update_run(rows[row.label], status="RUNNING")
        self.row_ids = {label: rows[label] for label in (r.label for r in grid.rows)}
        from mlflow.entities import RunTag

        alive = [RunTag("fovseg.pid", str(os.getpid())), RunTag("fovseg.host", socket.gethostname())]
        for run_id in (self.parent_id, *self.row_ids.values()):  # this driver: KILLED by the next start if it dies
            client.log_batch(run_id, tags=alive)
        self.done = {r.data.tags.get("trial") for r in client.search_runs(
            [exp], f"tags.sweep_key = '{key}' and tags.kind = 'sweep_trial'", max_results=10000)}
        self.client = client

    @staticmethod
    def _log(client: Any, run_id: str, params: dict | None = None, metrics: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                         params=[Param(k, str(v)[:500]) for k, v in (params or {}).items()])

    def log_trial(self, t: dict) -> None:
        """The trial's run under its row, once (a re-run or the final pass skips it); FAILED with its error."""
        if not self.active or t["name"] in self.done:
            return
        try:
            end_ms = int(t["ended"] * 1000) if t.get("ended") else None  # the trial's own span; blocked: now
            start_ms = end_ms - int(t["seconds"] * 1000) if end_ms else None
            tags = {"mlflow.parentRunId": self.row_ids.get(t["row"], self.parent_id), "kind": "sweep_trial",
                    "trial": t["name"], "row": t["row"], "seed": str(t["seed"]), "grid": self.grid.name,
                    "sweep_key": self.sweep_key, **({"error": t["error"]} if t["error"] else {})}
            child = self.client.create_run(self.exp_id, run_name=t["name"], start_time=start_ms, tags=tags)
            rid = child.info.run_id
            self._log(self.client, rid, metrics=t["metrics"], params={
                **{f"override.{k}": v for k, v in t["overrides"].items()}, "seed": t["seed"], "row": t["row"]})
            self.client.set_terminated(rid, status="FAILED" if t["error"] else "FINISHED", end_time=end_ms)
            self.done.add(t["name"])
        except Exception as exc:  # noqa: BLE001
            self._warn(f"trial {t['name']}", exc)

    def abort(self, status: str = "KILLED") -> None:
        """The sweep stopped before its summary (an exception, Ctrl-C): its rows and itself end as ``status``."""
        if not self.active:
            return
        try:
            for run_id in (*self.row_ids.values(), self.parent_id):
                self.client.set_terminated(run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            self._warn("abort", exc)

    def finish(self, summary: dict, trials: list[dict]) -> None:
        """Trials not logged yet (restored, blocked), then each row's summary and the sweep's; all runs end."""
        if not self.active:
            return
        for t in trials:
            self.log_trial(t)
        try:
            from pipeline.report.tables import paired_delta

            rows = summary["rows"]
            ref = next((r for r in rows if r["label"] == summary.get("reference_row")), None)
            benches = tuple(summary.get("benchmarks") or self.grid.benchmarks)
            for r in rows:
                run_id = self.row_ids.get(r["label"])
                if run_id is None:
                    continue
                metrics: dict[str, float] = {"n_seeds": r["n"], "failed_seeds": len(r["failures"])}
                for k, mean in r["mean"].items():
                    metrics[k] = mean
                    if r["n"] > 1:
                        metrics[f"{k}_sd"] = r["std"][k]
                    if ref is not None and k.split("/")[0] in benches:
                        d, d_sd, n = paired_delta(r, ref, k)
                        if d is not None:
                            metrics[f"{k}_delta"] = d
                        if d_sd is not None and r is not ref:
                            metrics[f"{k}_delta_sd"] = d_sd
                self._log(self.client, run_id, metrics=metrics)
                self.client.set_terminated(run_id, status="FINISHED" if r["n"] else "FAILED")
            self._log(self.client, self.parent_id, metrics={
                "trials": len(trials), "failed_trials": summary["failed_trials"],
                "wall_seconds": summary["wall_seconds"], "trial_seconds": summary["trial_seconds"]})
            self.client.log_dict(self.parent_id, summary, "summary.json")
            self.client.set_terminated(self.parent_id, status="FINISHED")
            if self.pipeline_id:  # the pipeline run ends with its last stage, as in pipeline.tracking
                self.client.set_terminated(self.pipeline_id, status="FINISHED")
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a sweep
            self._warn("summary", exc)


def log_sweep_to_mlflow(grid: Grid, params: Params, trials: list[dict], sweep_key: str,
                        uri: str | None = None, started: float | None = None, summary: dict | None = None) -> None:
    """The whole mirror at once (what :func:`run_sweep` does piecewise): the sweep, its rows and every trial
    not logged yet; a re-run adds no duplicates."""
    if summary is None:
        summary = summarize(grid, params.preset, tuple(params.sweep.seeds), trials, 0.0)
    SweepTracking(grid, params, sweep_key, uri, started).open().finish(summary, trials)


def _trials_to_mlflow_class() -> type:
    """:class:`TrialsToMlflow`, built on first use (importing ``ray.tune`` takes seconds)."""
    from ray.tune import Callback

    class TrialsToMlflow(Callback):
        """A Tune callback in the driver: each trial's MLflow run as soon as Tune reports it finished or
        failed for good (after its retries), not after the whole sweep."""

        def __init__(self, tracking: SweepTracking):
            self.tracking = tracking

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.tracking.log_trial(_finished_trial_outcome(trial, failed=False))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.tracking.log_trial(_finished_trial_outcome(trial, failed=True))

    TrialsToMlflow.__module__, TrialsToMlflow.__qualname__ = __name__, "TrialsToMlflow"  # pickled by reference
    return TrialsToMlflow


def trials_to_mlflow() -> type:
    """The one :class:`TrialsToMlflow` class of this process (pickle finds it under that name)."""
    cls = globals().get("TrialsToMlflow")
    if cls is None:
        cls = globals()["TrialsToMlflow"] = _trials_to_mlflow_class()
    return cls


def __getattr__(name: str) -> Any:  # PEP 562: ``TrialsToMlflow`` exists once asked for (unpickling asks too)
    if name == "TrialsToMlflow":
        return trials_to_mlflow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
