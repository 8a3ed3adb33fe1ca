"""Ablation sweeps (Table IV, Fig. 9) on Ray Tune: grids as data, one trial = the pipeline (train, evaluate).

A grid (``pipeline/sweeps/<name>.yaml``) lists named rows of dotted params overrides over the base
configuration (params.yaml + the preset's ``_base.yaml`` overrides); the sweep runs rows x seeds as Tune
trials. Every row is validated by building its :class:`Params` before anything starts.

Layout under ``out`` (deterministic, so a re-run finds its work again): ``<experiment>/<row>__seed<k>/``
(checkpoints, model, predictions, metrics of one trial; ``<experiment>`` = grid, preset and a fingerprint of
rows, seeds, base params and code: :func:`experiment_name`) and ``proposals/<generator key>/<bench>/``
(proposals of a row whose generator differs from the base one). Ray Tune's experiment state lives under
``storage/<experiment>`` (shared storage on a cluster); re-running the same command restores it: finished
trials are not run again and interrupted ones resume from their last training checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.code_version import code_digest
from pipeline.config import Params, ParamsError, params_from_dict, to_dict
from pipeline.runtime import REPO_ROOT, git_commit, write_metrics
from pipeline.threads import available_cpus

log = logging.getLogger(__name__)

ROW_KEYS = {"label", "overrides", "preset_overrides", "evaluation", "x", "presets", "unsupported", "pending_switches"}
GRID_KEYS = {"paper_table", "reference_row", "benchmarks", "rows", "x_key", "base"}
EVALUATION = {"classifier": ("trained", "untrained"), "masks": ("proposals", "oracle")}
# what a trial reports per benchmark (the evaluate stage's headline names) and from training
EVAL_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen")
TrialFn = Callable[..., dict]  # run_trial's signature


class GridError(ParamsError):
    """A sweep grid names an unknown key or value."""


class RowNotExpressible(RuntimeError):
    """A grid row needs a switch the model or params cannot express yet."""


# ----------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Row:
    label: str
    overrides: dict[str, Any]  # dotted params keys -> values, the preset's own already merged in
    evaluation: dict[str, str] = field(default_factory=lambda: {"classifier": "trained", "masks": "proposals"})
    x: float | None = None
    blocked: str = ""  # why this row cannot run on this preset ("" = it can)


@dataclass(frozen=True)
class Grid:
    name: str
    paper_table: str
    reference_row: str
    benchmarks: tuple[str, ...]
    rows: tuple[Row, ...]
    base: dict[str, Any]  # preset base overrides applied before every row's
    x_key: str = ""

    def fingerprint(self, seeds: tuple[int, ...], params: Params, code: str) -> str:
        """Identifies a sweep: rows, seeds, benchmarks, the base params (``sweep`` runtime knobs aside) and the
        code version. The same command re-run finds its experiment again; any change starts a new one."""
        base = {k: v for k, v in to_dict(params).items() if k != "sweep"}
        blob = json.dumps({"rows": [dataclasses.asdict(r) for r in self.rows], "base": self.base, "seeds": seeds,
                           "benchmarks": self.benchmarks, "params": base, "code": code}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def experiment_name(grid: Grid, params: Params, seeds: tuple[int, ...]) -> str:
    """``<grid>-<preset>-<fingerprint>``: names the trial folders and Tune's experiment, so a changed grid, params
    or code (:func:`code_digest` of ``models/`` and ``pipeline/``, edits not yet committed included) never
    meets another configuration's finished trials or checkpoints, and a commit that leaves them alone (a README
    edit) does not orphan them."""
    return f"{grid.name}-{params.preset}-{grid.fingerprint(seeds, params, code_digest())}"


def available_grids() -> list[str]:
    folder = resources.files("pipeline") / "sweeps"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def _read_yaml(name: str) -> tuple[str, str, dict]:
    """(grid name, where it was read, contents): a packaged grid name or a path to a grid YAML file."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise GridError(f"sweep grid file {name} not found")
        where = str(path)
    else:
        path = resources.files("pipeline") / "sweeps" / f"{name}.yaml"
        if not path.is_file():
            raise GridError(f"unknown sweep grid {name!r}; available: {available_grids()} (or pass a .yaml path)")
        where = f"pipeline/sweeps/{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GridError(f"sweep grid {where}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise GridError(f"sweep grid {where}: expected a mapping at the top level")
    return Path(where).stem, where, data


def _schema_has(key: str) -> bool:
    """Whether a dotted key names a field of :class:`Params`."""
    import typing

    cls: Any = Params
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return not dataclasses.is_dataclass(cls)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-4)``; unknown intermediate sections are created (validation names them)."""
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise GridError(f"override {key!r}: {p!r} is not a section")
    node[leaf] = value


def apply_overrides(base: dict, *layers: dict[str, Any]) -> dict:
    out = json.loads(json.dumps(base))
    for layer in layers:
        for k, v in layer.items():
            set_dotted(out, k, v)
    return out


def load_grid(name: str, params: Params) -> Grid:
    """Read, resolve for ``params.preset`` and validate a grid: every runnable row must build valid Params."""
    name, path, raw = _read_yaml(name)
    where = f"sweep grid {name!r} ({path})"
    bad = set(raw) - GRID_KEYS
    if bad:
        raise GridError(f"{where}: unknown key(s) {sorted(bad)}; valid: {sorted(GRID_KEYS)}")
    preset = params.preset
    base_all = yaml.safe_load((resources.files("pipeline") / "sweeps" / "_base.yaml").read_text()) or {}
    base = {**(base_all.get(preset) or {}), **((raw.get("base") or {}).get(preset) or {})}
    benches = (raw.get("benchmarks") or {}).get(preset)
    if not benches:
        raise GridError(f"{where}: no benchmarks for preset {preset!r} (key benchmarks.{preset})")
    rows: list[Row] = []
    for i, r in enumerate(raw.get("rows") or []):
        rows_here = _load_row(r, i, preset, where)
        if rows_here is not None:
            rows.append(rows_here)
    if not rows:
        raise GridError(f"{where}: no rows for preset {preset!r}")
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise GridError(f"{where}: duplicate row labels {sorted({x for x in labels if labels.count(x) > 1})}")
    ref = str(raw.get("reference_row", labels[0]))
    if ref not in labels:
        raise GridError(f"{where}: reference_row {ref!r} is not a row label; rows: {labels}")
    grid = Grid(name, str(raw.get("paper_table", "")), ref, tuple(benches), tuple(rows), base,
                str(raw.get("x_key", "")))
    for row in grid.rows:
        if not row.blocked:
            trial_params(params, trial_overrides(grid, row, params.sweep.seeds[0]), f"{where}, row {row.label!r}")
    return grid


def _load_row(r: Any, i: int, preset: str, where: str) -> Row | None:
    if not isinstance(r, dict) or "label" not in r:
        raise GridError(f"{where}: rows[{i}] must be a mapping with a 'label'")
    label = str(r["label"])
    here = f"{where}, row {label!r}"
    bad = set(r) - ROW_KEYS
    if bad:
        raise GridError(f"{here}: unknown key(s) {sorted(bad)}; valid: {sorted(ROW_KEYS)}")
    if r.get("presets") and preset not in r["presets"]:
        return None
    overrides = {**(r.get("overrides") or {}), **((r.get("preset_overrides") or {}).get(preset) or {})}
    evaluation = {"classifier": "trained", "masks": "proposals", **(r.get("evaluation") or {})}
    for k, v in evaluation.items():
        if k not in EVALUATION:
            raise GridError(f"{here}: unknown evaluation key {k!r}; valid: {sorted(EVALUATION)}")
        if v not in EVALUATION[k]:
            raise GridError(f"{here}: evaluation.{k}={v!r}; valid: {list(EVALUATION[k])}")
    pending = [p for p in r.get("pending_switches") or [] if not _schema_has(p)]
    blocked = (r.get("unsupported") or {}).get(preset, "")
    if pending:
        blocked = (f"needs the switch(es) {pending}, which the params schema / model cannot express yet; "
                   "the row runs once they exist")
    for key in overrides:
        if key not in pending and not _schema_has(key):
            raise GridError(f"{here}: unknown params key {key!r} in overrides")
    x = r.get("x")
    return Row(label, overrides, evaluation, float(x) if x is not None else None, str(blocked))


def trial_overrides(grid: Grid, row: Row, seed: int) -> dict[str, Any]:
    """Everything a trial changes over params.yaml: the preset's base overrides, the row's, and the seed."""
    return {**grid.base, **row.overrides, "seed": seed}


def trial_params(params: Params, overrides: dict[str, Any], source: str = "sweep trial") -> Params:
    """``params`` with dotted ``overrides`` applied, validated like params.yaml (errors name the key)."""
    try:
        return params_from_dict(apply_overrides(to_dict(params), overrides), source)
    except (ParamsError, TypeError) as exc:
        raise GridError(str(exc)) from None


def trial_name(row: Row, seed: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", row.label).strip("_") or "row"
    return f"{slug}__seed{seed}"


# ----------------------------------------------------------------------------- one trial
@dataclass(frozen=True)
class SharedInputs:
    """Read-only inputs every trial shares (absolute paths), plus the shared proposal cache for other generators."""

    backbones: str
    proposals_root: str  # <bench>/ subfolders computed with the base generator
    proposal_cache: str  # <generator key>/<bench>/ for rows that change the generator
    workdir: str  # cwd of the trial (relative paths in params resolve here, as in the driver)
    base_generator_key: str = ""


def generator_key(params: Params) -> str:
    blob = json.dumps({"generator": to_dict(params.backbones.generator), "proposals": to_dict(params.proposals)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def proposals_for(params: Params, bench: str, shared: SharedInputs) -> Path:
    """The benchmark's proposal store for this trial's generator: the shared one, or computed once into the
    shared cache (a file lock keeps concurrent trials of the same generator from computing it twice)."""
    key = generator_key(params)
    if key == shared.base_generator_key:
        return Path(shared.proposals_root) / bench
    out = Path(shared.proposal_cache) / key / bench
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{bench}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "index.json").is_file():
            _compute_proposals(params, bench, shared.backbones, out)
    return out


def _compute_proposals(params: Params, bench: str, backbones: str, out: Path, generator: str = "") -> None:
    import stages.proposals as proposals_stage

    ns = argparse.Namespace(benchmark=bench, backbones=backbones, out=str(out), generator=generator,
                            metrics=str(out.parent / f"{bench}.proposals.json"))
    proposals_stage.main(ns, params)


def _tuned_generator_proposals(params: Params, bench: str, shared: SharedInputs, trial_dir: Path) -> Path:
    """Proposals of the generator this trial trained (``model.tune_generator``, Table IV(b)), in the trial."""
    out = trial_dir / "proposals" / bench
    if not (out / "index.json").is_file():
        _compute_proposals(params, bench, shared.backbones, out, generator=str(trial_dir / "mask2former"))
    return out


# The train and evaluate stages' functions (pipeline.training.run_training; the evaluation loop that
# pipeline.evaluation.evaluate_benchmark runs, here for only the one evaluation a row asks for).
def _train(params: Params, shared: SharedInputs, trial_dir: Path, train_proposals: Path | None) -> tuple[dict, Path]:
    """Train (resuming from ``trial_dir/checkpoints``); returns (numeric train metrics, model checkpoint path)."""
    from pipeline.runtime import init_seed_and_device
    from pipeline.training import run_training

    device = init_seed_and_device(params.seed, params.device)
    metrics = run_training(data=params.data, clip=params.backbones.clip, model=params.model, train=params.train,
                           generator=params.backbones.generator, proposals=params.proposals, seed=params.seed,
                           device=device, backbones_dir=shared.backbones,
                           proposals_dir=train_proposals, checkpoints_dir=trial_dir / "checkpoints",
                           out_dir=trial_dir, curve_path=trial_dir / "train_curve.csv")
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return numeric, trial_dir / "model.pt"


def _evaluate(params: Params, bench: str, backbones: str, checkpoint: Path | None, proposals: Path | None,
              pred_dir: Path) -> dict:
    """Evaluate the trained (``checkpoint``) or untrained classifier on ``bench`` with the stored proposals in
    ``proposals`` (None: ground-truth masks, the oracle generator of Table IV(j))."""
    from pipeline.builder import build_classifier
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.proposal_store import ProposalStore
    from pipeline.data.registry import dataset_root, get_benchmark
    from pipeline.evaluation import (
        GroundTruthProposals,
        ModelClassifier,
        StoredProposals,
        default_evaluators,
        groups_of,
        inference_on_dataset,
    )
    from pipeline.runtime import init_seed_and_device

    device = init_seed_and_device(params.seed, params.device)  # the untrained modules' initialisation
    ev = params.evaluate
    ds = BenchmarkDataset(get_benchmark(bench), dataset_root(params.data.root or None))
    ready = build_classifier(params.backbones.clip, params.model, backbones, device, checkpoint=checkpoint)
    source = StoredProposals(ProposalStore(proposals)) if proposals is not None else GroundTruthProposals()
    return inference_on_dataset(ds, source, ModelClassifier(ready, ds.vocab, ev.test_short_side, ev.test_max_side),
                                default_evaluators(ds, groups_of(bench, params.data.train_benchmark), pred_dir),
                                object_threshold=ev.object_threshold, overlap_threshold=ev.overlap_threshold,
                                max_images=ev.max_images)


def run_trial(params: Params, overrides: dict[str, Any], trial_dir: Path, shared: SharedInputs, *,
              benchmarks: list[str] | tuple[str, ...], evaluation: dict[str, str] | None = None) -> dict:
    """One trial, end to end: ``params`` with ``overrides`` (dotted keys, seed included); train (unless the
    row evaluates the untrained classifier), then evaluate on ``benchmarks``. Returns
    ``{"<bench>/<metric>": value, "train/<loss>": value, ...}``; writes only in ``trial_dir`` (and, for a
    generator other than the base one, its proposals into the shared cache)."""
    params = trial_params(params, overrides, f"trial {trial_dir.name}")
    evaluation = evaluation or {}
    trial_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    checkpoint = None
    if evaluation.get("classifier", "trained") == "trained":
        train_props = proposals_for(params, params.data.train_benchmark, shared) \
            if params.train.mask_source != "gt" else None
        train_metrics, checkpoint = _train(params, shared, trial_dir, train_props)
        metrics.update({f"train/{k}": float(v) for k, v in train_metrics.items()})
    for bench in benchmarks:
        props = proposals_for(params, bench, shared) if evaluation.get("masks", "proposals") == "proposals" else None
        if props is not None and checkpoint is not None and params.model.tune_generator:
            props = _tuned_generator_proposals(params, bench, shared, trial_dir)
        result = _evaluate(params, bench, shared.backbones, checkpoint, props, trial_dir / "predictions" / bench)
        write_metrics(trial_dir / "metrics" / f"{bench}.json", {k: result[k] for k in EVAL_METRICS if k in result})
        metrics.update({f"{bench}/{k}": float(result[k]) for k in EVAL_METRICS if k in result})
    write_metrics(trial_dir / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------- Ray Tune
def _tune_trainable(config: dict, context: dict) -> None:
    """What Ray runs for one trial spec (row x seed)."""
    from ray import tune

    spec = config["spec"]
    os.chdir(context["workdir"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(context["cpus_per_trial"]))))
    import torch

    torch.set_num_threads(max(1, int(context["cpus_per_trial"])))
    from pipeline.runtime import setup_logging

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
        ray.init(address="local", num_cpus=params.sweep.num_cpus or available_cpus(), include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False)


def run_sweep(grid_name: str, params: Params, opts: SweepOptions) -> dict:
    """Validate the grid, run (or resume) rows x seeds on Ray Tune, write the results JSON, mirror to MLflow."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table (CLIReporter)
    import ray  # noqa: F401 - fail early if Ray is missing
    from ray import tune

    seeds = tuple(opts.seeds or params.sweep.seeds)
    params = dataclasses.replace(params, sweep=dataclasses.replace(params.sweep, seeds=seeds))
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
    return dataclasses.replace(params, data=dataclasses.replace(params.data, root=root))


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
