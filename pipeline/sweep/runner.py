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
``working_dir`` = this repository without its data, outputs, stores and venv:
:func:`pipeline.sweep.ray_cluster.code_runtime_env`), not the driver's repository path. Data travels as paths
relative to one **shared root**, the driver's working directory (``SweepOptions.shared_root``): backbones,
proposals, trial folders, the proposal cache and the dataset root, when they lie under it; a node that mounts the
shared root elsewhere is started with ``FOVSEG_SHARED_ROOT=<its path>`` in its environment
(``FOVSEG_SHARED_ROOT=/mnt/fovseg ray start --address ...``). A path outside the root is sent as it is and must be
the same on every node. Only the driver writes MLflow: each trial's run as soon as Tune reports it finished or
failed (a Tune callback), the per-row summary at the end (:mod:`pipeline.sweep.mlflow_mirror`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.config import Params, override, to_dict
from pipeline.data.formats import write_metrics
from pipeline.params_file import params_from_dict
from pipeline.sweep.grids import RowNotExpressible, experiment_name, load_grid, trial_name, trial_overrides
from pipeline.sweep.mlflow_mirror import SweepTracking, trials_to_mlflow
from pipeline.sweep.ray_cluster import check_local_resources, init_ray, node_root, on_node, portable
from pipeline.sweep.results import summarize, trial_outcome
from pipeline.sweep.trial import SharedInputs, generator_key, run_trial
from pipeline.tracking import git_commit

log = logging.getLogger(__name__)
TrialFn = Callable[..., dict]  # run_trial's signature


def _tune_trainable(config: dict, context: dict) -> None:
    """What Ray runs for one trial spec (row x seed), on any node: paths resolve against this node's shared
    root, the code is the job's ``working_dir`` copy."""
    from ray import tune

    spec = config["spec"]
    root = node_root(context["root"])
    os.chdir(root)  # the shared root on this node: relative paths in params resolve against it, as on the driver
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
                          portable(opts.out / "proposals", root), generator_key(params))
    sp = params.sweep
    from pipeline.data.registry import dataset_root

    context = {"grid": grid.name, "base_params": to_dict(params), "root": str(root),
               "data_root": portable(dataset_root(params.data.root or None), root),
               "trials": portable(trials_root, root),
               "benchmarks": list(grid.benchmarks), "shared": dataclasses.asdict(shared),
               "cpus_per_trial": sp.cpus_per_trial, "trial_fn": opts.trial_fn}
    trainable = tune.with_resources(tune.with_parameters(_tune_trainable, context=context),
                                    {"cpu": sp.cpus_per_trial, "gpu": sp.gpus_per_trial})
    t0, started = time.perf_counter(), time.time()
    tracking = SweepTracking(grid, params, name, opts.tracking_uri, started).open()  # before Ray: rows exist
    init_ray(params, opts.address)
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
    trials = [trial_outcome(r) for r in results] + blocked
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
