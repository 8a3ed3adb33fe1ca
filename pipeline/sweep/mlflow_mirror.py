"""The sweep's MLflow mirror, written by the driver only: the ``sweep@<grid>`` run, one run per grid row (means,
sds and paired deltas to the reference row) and one per trial, logged by a Tune callback as each trial ends
(:class:`SweepTracking`, ``TrialsToMlflow``). Best effort: the results JSON is the source of truth."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from pipeline.config import Params
from pipeline.mlflow_store import alive_tags, default_tracking_uri, ensure_experiment, mark_killed, open_client
from pipeline.sweep.grids import Grid
from pipeline.sweep.results import finished_trial_outcome, summarize
from pipeline.tracking import GROUP_TAG, git_commit, pipeline_run, run_group

log = logging.getLogger(__name__)


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
        self.uri = uri or default_tracking_uri()
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
        client = open_client(self.uri)
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

        alive = [RunTag(k, v) for k, v in alive_tags().items()]
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
            from pipeline.report.ablation_tables import paired_delta

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
            self.tracking.log_trial(finished_trial_outcome(trial, failed=False))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.tracking.log_trial(finished_trial_outcome(trial, failed=True))

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
