"""MLflow mirror of what each stage measured (DVC's metrics JSONs stay the source of truth).

Layout of the store, one experiment per preset (``tracking.experiment``):

- **parent run** per pipeline execution, tagged ``fovseg.group``, ``git_commit``, ``dvc_exp`` (``$DVC_EXP_NAME``,
  set by ``dvc exp run``) and ``params_hash``. Stages are separate processes, so each finds its parent by the
  group tag: group = ``$FOVSEG_RUN_GROUP`` if set, else a hash of (git revision, params file, DVC experiment
  name). All stages of one ``dvc repro`` / ``dvc exp run`` share it; a later execution with other code or
  params gets a new parent. The parent spans from its first stage's start to its last stage's end.
- **stage run** nested under it (``mlflow.parentRunId``), started when the stage process started (not when
  it began logging) and ended when it ends; ``FAILED`` if it raised.
- **model runs** nested under an evaluate stage run: ``trained``, ``baseline``, ``oracle_classifier``,
  ``oracle_generator``, each with the same metric names, so MLflow's compare page lines them up (tags
  ``model`` and ``benchmark``).
- **sweeps** (:mod:`pipeline.sweep.runner`): a ``sweep@<grid>`` run nested under the pipeline run of the same
  group, one run per grid row under it (the row's mean and sd over seeds, paired delta to the reference row),
  one run per trial under its row.

Metric names, one scheme everywhere: ``<benchmark>/<metric>`` (``toy_open/PQ``, ``ade20k_150/mIoU_unseen``)
in evaluate stage runs, their model runs, sweep trials and sweep rows (row: ``<benchmark>/PQ`` = mean over
seeds, ``<benchmark>/PQ_sd``, ``<benchmark>/PQ_delta``, ``<benchmark>/PQ_delta_sd``), and in the train run's
periodic evaluation; a tracker whose run is named ``<stage>@<benchmark>`` prefixes what it logs with
``<benchmark>/``. Per-step metrics (``loss``, ``loss_<term>``, ``lr``, ``lr/<param group>``, ``matched``) are
logged with their step and ``step`` itself never is; a summary logged without a step never lands on a name
that has a step history (it is logged as ``final/<name>`` instead).

The experiment is created as a model-training experiment (tag ``mlflow.experimentKind =
custom_model_development``, also set on an existing experiment without it or marked GenAI) with two saved views
of the runs table (:func:`saved_views`). MLflow 3.17's UI itself takes the mode from the address
(``?workflowType=machine_learning``) or the browser's last GenAI / Model training toggle (GenAI at first), so
:func:`ui_urls` (printed by ``make mlflow-ui``) gives addresses with it.

Default store ``sqlite:///mlflow.db`` at the repository root with artifacts in ``mlartifacts/`` beside it;
``MLFLOW_TRACKING_URI`` overrides it. MLflow records absolute artifact paths, so each start (and
``python -m pipeline.tracking relocate``) rewrites them when ``mlflow.db`` + ``mlartifacts/`` were moved
together. Runs left RUNNING by a process that no longer exists (SIGKILL, power loss) are marked KILLED at
the next start. If MLflow is missing or its server unreachable, the stage warns and carries on.
UI: ``make mlflow-ui`` (127.0.0.1 only; ``PORT=5001`` for another port), which prints each experiment's address
(:func:`ui_urls`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.mlflow_store import (
    ARTIFACT_DIR,
    alive_tags,
    default_tracking_uri,
    ensure_experiment,
    mark_killed,
    open_client,
    relocate_store,
    sqlite_path,
    ui_urls,
)

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]  # the repository: git revision, code digest
GROUP_TAG = "fovseg.group"
_STAGE_START = time.time()


def git_commit() -> str:
    """The repository's HEAD commit ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_digest(roots: tuple[str, ...] = ("models", "pipeline", "stages")) -> str:
    """sha256 of every ``.py`` file under ``roots`` (repository folders): which code produced a result,
    committed or not (``git_commit`` misses uncommitted edits and changes with a README edit). Training
    checkpoints record it, and it keys sweep experiments: these are the folders the sweep stage declares as
    its code deps in dvc.yaml, so a re-run after a code change never restores another code's trials."""
    h = hashlib.sha256()
    for name in roots:
        root = REPO_ROOT / name
        if not root.is_dir():
            raise FileNotFoundError(f"code_digest: {root} is not a folder")
        for path in sorted(root.rglob("*.py")):
            h.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def mark_stage_start() -> None:
    """Called by the stage runner as the stage starts: the stage run's start time."""
    global _STAGE_START
    _STAGE_START = time.time()


def run_group(params_file: str | Path = "params.yaml") -> str:
    """Identity of one pipeline execution, shared by its stage processes (see the module doc)."""
    if os.environ.get("FOVSEG_RUN_GROUP"):
        return os.environ["FOVSEG_RUN_GROUP"]
    h = hashlib.sha256(git_commit().encode())
    p = Path(params_file)
    h.update(p.read_bytes() if p.is_file() else b"")
    h.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return h.hexdigest()[:16]


def pipeline_run(client, exp_id: str, group: str, create: bool, start_ms: int | None = None) -> str | None:
    """The pipeline run of ``group`` (the latest one), marked RUNNING; without one, a new one if ``create``."""
    found = client.search_runs([exp_id], f"tags.`{GROUP_TAG}` = '{group}' and tags.kind = 'pipeline'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    if not create:
        return None
    dvc_exp = os.environ.get("DVC_EXP_NAME", "")
    tags = {GROUP_TAG: group, "kind": "pipeline", "git_commit": git_commit(), "dvc_exp": dvc_exp,
            "params_hash": group}
    run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=f"pipeline {dvc_exp or git_commit()[:8]}")
    return run.info.run_id


class Tracker:
    """``with Tracker(experiment, stage, params) as t: t.log_metrics({...})``; every call is best-effort.

    ``benchmark``: the benchmark this stage run is about (default: ``<b>`` of a run named ``<stage>@<b>``, as
    ``evaluate@toy_open``): :meth:`log_metrics` and :meth:`log_model_run` then log ``<b>/<name>``."""

    def __init__(self, experiment: str, stage: str, params: dict[str, Any] | None = None,
                 tracking_uri: str | None = None, run_name: str | None = None, group: str | None = None,
                 start_time: float | None = None, benchmark: str | None = None):
        self.experiment, self.stage = experiment, stage
        self.params = params or {}
        self.uri = tracking_uri or default_tracking_uri()
        self.run_name = run_name or stage
        self.group = group
        self.start_time = start_time
        self.benchmark = benchmark if benchmark is not None else self.run_name.partition("@")[2]
        self._mlflow = None
        self.client = None
        self.exp_id: str | None = None
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self._stepped: set[str] = set()  # names logged with a step by this run: a summary never lands on them

    # -- setup
    def _experiment_id(self) -> str:
        data = self.params.get("data") if isinstance(self.params.get("data"), dict) else {}
        benchmarks = [b for b in (*(data.get("eval_benchmarks") or ()), self.benchmark) if b]
        return ensure_experiment(self.client, self.experiment, self.uri, benchmarks)

    def _start_ms(self) -> int:
        return int(1000 * (self.start_time if self.start_time is not None else _STAGE_START))

    def __enter__(self) -> "Tracker":
        if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 reports
            return self
        try:
            import mlflow

            self.group = self.group or run_group()
            self.client = open_client(self.uri)
            mlflow.set_tracking_uri(self.uri)
            exp_id = self.exp_id = self._experiment_id()
            mark_killed(self.client, exp_id)
            self.parent_id = pipeline_run(self.client, exp_id, self.group, create=True, start_ms=self._start_ms())
            tags = {"stage": self.stage, "kind": "stage", "git_commit": git_commit(),
                    "mlflow.parentRunId": self.parent_id, GROUP_TAG: self.group,
                    "dvc_stage": os.environ.get("DVC_STAGE", ""), **alive_tags()}
            run = self.client.create_run(exp_id, start_time=self._start_ms(), tags=tags, run_name=self.run_name)
            self.run_id = run.info.run_id
            mlflow.set_experiment(experiment_id=exp_id)
            mlflow.start_run(run_id=self.run_id)
            self._mlflow = mlflow
            if self.params:
                flat = {k: str(v)[:500] for k, v in flatten(self.params).items()}
                mlflow.log_params(flat)
                mlflow.log_dict(self.params, "resolved_config.json")
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a stage
            log.warning("MLflow tracking disabled for stage %s (%s: %s); metrics JSON is still written",
                        self.stage, type(exc).__name__, exc)
            self._mlflow = None
        return self

    def _safe(self, fn_name: str, *args: Any, **kwargs: Any) -> None:
        if self._mlflow is None:
            return
        try:
            getattr(self._mlflow, fn_name)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow %s failed (%s); continuing", fn_name, exc)

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, prefix: str | None = None) -> None:
        """Numbers of ``metrics`` (nested dicts flattened with ``.``; ``step`` itself dropped) as
        ``<prefix>/<name>``; ``prefix`` defaults to the tracker's benchmark ("" = none). With a ``step``: one
        point of each name's history. Without: a summary; a name this run logged with a step is logged as
        ``final/<name>`` instead (never a stray step-0 point in a history)."""
        numeric = metric_names(metrics, self.benchmark if prefix is None else prefix)
        if step is not None:
            self._stepped.update(numeric)
        else:
            numeric = {f"final/{k}" if k in self._stepped else k: v for k, v in numeric.items()}
        if numeric:
            self._safe("log_metrics", numeric, step=step)

    def log_model_run(self, model: str, metrics: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        """One nested run per model variant (trained, baseline, oracle_*) with identical metric names:
        ``<benchmark>/<name>``, the benchmark of ``tags["benchmark"]`` or the tracker's."""
        if self._mlflow is None:
            return
        try:
            benchmark = (tags or {}).get("benchmark") or self.benchmark
            run = self.client.create_run(self.exp_id, run_name=f"{self.run_name}/{model}", tags={
                "mlflow.parentRunId": self.run_id, "kind": "model", "model": model, "stage": self.stage,
                **({"benchmark": benchmark} if benchmark else {}), **(tags or {})})
            now = int(time.time() * 1000)
            from mlflow.entities import Metric

            self.client.log_batch(run.info.run_id, metrics=[
                Metric(k, v, now, 0) for k, v in metric_names(metrics, benchmark).items()])
            self.client.set_terminated(run.info.run_id, "FINISHED")
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow model run %s failed (%s); continuing", model, exc)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        self._safe("log_table", data=data, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._safe("log_figure", figure, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._safe("log_artifact", str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._safe("log_text", text, artifact_file)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is None:
            return
        status = "FAILED" if exc_type else "FINISHED"
        try:
            self._mlflow.end_run(status=status)
            self.client.set_terminated(self.parent_id, status)  # the parent ends with its last stage
        except Exception as err:  # noqa: BLE001
            log.warning("MLflow end_run failed (%s)", err)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow's params and metrics are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k.replace("@", "_"): float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def metric_names(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``metrics`` under MLflow names: ``<prefix>/<name>`` (a name already under
    ``<prefix>/`` kept as is), ``step`` dropped (it is the x axis, not a metric)."""
    out = {}
    for k, v in _numeric({k: v for k, v in metrics.items() if k != "step"}).items():
        out[f"{prefix}/{k}" if prefix and not k.startswith(f"{prefix}/") else k] = v
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.tracking relocate [mlflow.db]``: fix artifact paths after moving the store;
    ``python -m pipeline.tracking urls [mlflow.db] [PORT]``: the UI address of each experiment's runs table."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("relocate", "urls"):
        print("usage: python -m pipeline.tracking relocate [PATH/TO/mlflow.db]\n"
              "       python -m pipeline.tracking urls [PATH/TO/mlflow.db] [PORT]", file=sys.stderr)
        sys.exit(2)
    db = Path(args[1]) if len(args) > 1 else (sqlite_path(default_tracking_uri()) or Path("mlflow.db"))
    if args[0] == "urls":
        for line in ui_urls(db, int(args[2]) if len(args) > 2 else 5000):
            print(line)
        return
    print(f"{relocate_store(db)} experiment(s) relocated to {(db.resolve().parent / ARTIFACT_DIR)}")


if __name__ == "__main__":
    main()
