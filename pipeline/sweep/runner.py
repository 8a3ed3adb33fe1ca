"""Ablation sweeps (Table IV, Fig. 9) on Ray Tune: rows x seeds of a grid (:mod:`pipeline.sweep.grids`) as
trials (:func:`pipeline.sweep.trial.run_trial`), resumable, with a results JSON and an MLflow mirror.

Layout under ``out`` (deterministic, so a re-run finds its work again): ``<experiment>/<row>__seed<k>/``
(checkpoints, model, predictions, metrics of one trial; ``<experiment>`` = grid, preset and a fingerprint of
rows, seeds, base params and code: :func:`pipeline.sweep.grids.experiment_name`) and
``proposals/<generator key>/<bench>/`` (proposals of a row whose generator differs from the base one). Ray Tune's
experiment state lives under ``storage/<experiment>`` (shared storage on a cluster); re-running the same command
restores it: finished trials are not run again and interrupted ones resume from their last training checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.config import Params, override, params_from_dict, to_dict
from pipeline.data.formats import write_metrics
from pipeline.sweep.grids import Grid, RowNotExpressible, experiment_name, load_grid, trial_name, trial_overrides
from pipeline.sweep.trial import SharedInputs, generator_key, run_trial
from pipeline.tracking import REPO_ROOT, git_commit

log = logging.getLogger(__name__)
TrialFn = Callable[..., dict]  # run_trial's signature


def _tune_trainable(config: dict, context: dict) -> None:
    """What Ray runs for one trial spec (row x seed)."""
    from ray import tune

    spec = config["spec"]
    os.chdir(context["workdir"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(context["cpus_per_trial"]))))
    import torch

    torch.set_num_threads(max(1, int(context["cpus_per_trial"])))
    from pipeline.console import setup_logging

    setup_logging()
    base = params_from_dict(context["base_params"], "sweep base params")
    trial_dir = Path(context["trials"]) / spec["name"]
    trial_fn: TrialFn = context["trial_fn"]
    metrics = trial_fn(base, spec["trial_overrides"], trial_dir, SharedInputs(**context["shared"]),
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


def _init_ray(params: Params, address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RAY_CHDIR_TO_TRIAL_DIR": "0", "TQDM_DISABLE": "1"}
    for k in ("DETECTRON2_DATASETS", "FOVSEG_LOG", "FOVSEG_CACHE", "XDG_CACHE_HOME", "HF_HOME",
              "MLFLOW_TRACKING_URI"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("attaching to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        # address="local": always a new local instance, never a cluster some earlier `ray start` left behind
        ray.init(address="local", num_cpus=params.sweep.num_cpus or None, include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False)


def run_sweep(grid_name: str, params: Params, opts: SweepOptions) -> dict:
    """Validate the grid, run (or resume) rows x seeds on Ray Tune, write the results JSON, mirror to MLflow."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table (CLIReporter)
    import ray  # noqa: F401 - fail early if Ray is missing
    from ray import tune

    seeds = tuple(opts.seeds or params.sweep.seeds)
    params = override(params, {"sweep.seeds": seeds})
    grid = load_grid(grid_name, params)
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
    shared = SharedInputs(str(opts.backbones.resolve()), str(opts.proposals_root.resolve()),
                          str((opts.out / "proposals").resolve()), str(Path.cwd().resolve()),
                          generator_key(params))
    sp = params.sweep
    context = {"grid": grid.name, "base_params": to_dict(_absolute_data_root(params)),
               "trials": str(trials_root.resolve()), "workdir": str(Path.cwd().resolve()),
               "benchmarks": list(grid.benchmarks), "shared": dataclasses.asdict(shared),
               "cpus_per_trial": sp.cpus_per_trial, "trial_fn": opts.trial_fn}
    trainable = tune.with_resources(tune.with_parameters(_tune_trainable, context=context),
                                    {"cpu": sp.cpus_per_trial, "gpu": sp.gpus_per_trial})
    _init_ray(params, opts.address)
    exp_path = str(opts.storage.resolve() / name)
    t0, started = time.perf_counter(), time.time()
    if tune.Tuner.can_restore(exp_path):
        log.info("resuming sweep %s from %s (finished trials are kept)", grid.name, exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
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
                                      progress_reporter=reporter, verbose=opts.verbose))
    results = tuner.fit() if specs else []
    wall = time.perf_counter() - t0
    trials = [_trial_outcome(r) for r in results] + blocked
    summary = {**summarize(grid, params.preset, seeds, trials, wall), "experiment": name}
    write_metrics(opts.metrics, summary)
    log_sweep_to_mlflow(grid, params, trials, name, opts.tracking_uri, started)
    log.info("sweep %s: %d trials, %d failed, %.0f s -> %s", grid.name, len(trials), summary["failed_trials"], wall,
             opts.metrics)
    return summary


def _absolute_data_root(params: Params) -> Params:
    """Trials may run in another cwd (or node): pin the dataset root to an absolute path."""
    from pipeline.data.registry import dataset_root

    root = str(dataset_root(params.data.root or None).resolve())
    return override(params, {"data.root": root})


def _trial_outcome(result: Any) -> dict:
    spec = result.config["spec"]
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()
               if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    error = None
    if result.error is not None:
        err = result.error
        cause = getattr(err, "cause", None) or err
        error = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
        metrics = {}
    reported = result.metrics or {}
    return {"row": spec["row"], "seed": spec["seed"], "name": spec["name"], "overrides": spec["overrides"],
            "metrics": metrics, "error": error, "seconds": float(reported.get("time_total_s", 0.0)),
            "ended": float(reported["timestamp"]) if reported.get("timestamp") else None}


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
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def log_sweep_to_mlflow(grid: Grid, params: Params, trials: list[dict], sweep_key: str,
                        uri: str | None = None, started: float | None = None) -> None:
    """One parent run per sweep (found again by its key on a re-run) and one nested child per trial, logged once.
    Best effort: a tracking failure is a warning, the results JSON is the source of truth."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(uri or tracking_uri())
        exp = mlflow.set_experiment(params.tracking.experiment)
        client = MlflowClient()
        started_ms = int(started * 1000) if started else None  # the sweep's start (epoch s); default: now
        found = client.search_runs([exp.experiment_id], f"tags.sweep_key = '{sweep_key}' and tags.kind = 'sweep'")
        if found:
            parent_id = found[0].info.run_id
        else:
            parent = client.create_run(exp.experiment_id, run_name=f"sweep@{grid.name}", start_time=started_ms, tags={
                "kind": "sweep", "sweep_key": sweep_key, "grid": grid.name, "paper_table": grid.paper_table,
                "preset": params.preset, "git_commit": git_commit()})
            parent_id = parent.info.run_id
            client.log_param(parent_id, "grid", grid.name)
            client.log_param(parent_id, "seeds", ",".join(map(str, params.sweep.seeds)))
            client.log_param(parent_id, "preset", params.preset)
        done = {r.data.tags.get("trial") for r in client.search_runs(
            [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000)}
        for t in trials:
            if t["name"] in done:
                continue
            # the child spans the trial's own time (epoch ms); blocked rows never ran: logging time
            end_ms = int(t["ended"] * 1000) if t.get("ended") else None
            start_ms = end_ms - int(t["seconds"] * 1000) if end_ms else None
            child = client.create_run(exp.experiment_id, run_name=t["name"], start_time=start_ms, tags={
                "mlflow.parentRunId": parent_id, "kind": "sweep_trial", "trial": t["name"], "row": t["row"],
                "grid": grid.name, **({"error": t["error"]} if t["error"] else {})})
            rid = child.info.run_id
            for k, v in {**{f"override.{k}": v for k, v in t["overrides"].items()}, "seed": t["seed"],
                         "row": t["row"]}.items():
                client.log_param(rid, k, str(v)[:500])
            for k, v in t["metrics"].items():
                client.log_metric(rid, k, v)
            client.set_terminated(rid, status="FAILED" if t["error"] else "FINISHED",
                                  end_time=end_ms)
        client.set_terminated(parent_id, status="FINISHED")
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a sweep
        log.warning("MLflow logging of sweep %s failed (%s: %s); %s is still written", grid.name,
                    type(exc).__name__, exc, "the results JSON")
