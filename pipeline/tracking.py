"""MLflow mirror of what each stage measured (DVC's metrics JSONs stay the source of truth).

One experiment per preset, one run per stage execution, tagged with the git commit and the
stage. Default store ``sqlite:///mlflow.db`` at the repository root; ``MLFLOW_TRACKING_URI``
overrides it. If MLflow is missing or its server unreachable, the stage warns and carries on.
UI: ``mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1`` (``make mlflow-ui``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import flatten
from pipeline.runtime import REPO_ROOT, git_commit

log = logging.getLogger(__name__)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


class Tracker:
    """``with Tracker(experiment, stage, params) as t: t.log_metrics({...})``; every call is best-effort."""

    def __init__(self, experiment: str, stage: str, params: dict[str, Any] | None = None,
                 tracking_uri: str | None = None, run_name: str | None = None):
        self.experiment, self.stage = experiment, stage
        self.params = params or {}
        self.uri = tracking_uri or default_tracking_uri()
        self.run_name = run_name or stage
        self._mlflow = None

    def __enter__(self) -> "Tracker":
        try:
            if self.uri.startswith("http"):
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(self.experiment)
            mlflow.start_run(run_name=self.run_name, tags={"stage": self.stage, "git_commit": git_commit()})
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

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {k.replace("@", "_"): float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._safe("log_metrics", numeric, step=step)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        self._safe("log_table", data=data, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._safe("log_figure", figure, artifact_file)

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).exists():
            self._safe("log_artifact", str(path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._safe("log_text", text, artifact_file)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None:
            try:
                self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED")
            except Exception as err:  # noqa: BLE001
                log.warning("MLflow end_run failed (%s)", err)

