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
  ``oracle_generator``, each with the same metric names (``PQ``, ``mIoU``, ...), so MLflow's compare page
  lines them up (tags ``model`` and ``benchmark``).

Default store ``sqlite:///mlflow.db`` at the repository root with artifacts in ``mlartifacts/`` beside it;
``MLFLOW_TRACKING_URI`` overrides it. MLflow records absolute artifact paths, so each start (and
``python -m pipeline.tracking relocate``) rewrites them when ``mlflow.db`` + ``mlartifacts/`` were moved
together. Runs left RUNNING by a process that no longer exists (SIGKILL, power loss) are marked KILLED at
the next start. If MLflow is missing or its server unreachable, the stage warns and carries on.
UI: ``make mlflow-ui`` (127.0.0.1 only).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]  # the default store lives here: <repo>/mlflow.db
ARTIFACT_DIR = "mlartifacts"
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


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):]))


def artifact_root(uri: str) -> str | None:
    """``mlartifacts/`` beside a sqlite store (file URI), None for other stores (server decides)."""
    db = sqlite_path(uri)
    return (db.resolve().parent / ARTIFACT_DIR).as_uri() if db else None


def relocate_store(db: Path) -> int:
    """Rewrite artifact locations recorded under another ``.../mlartifacts`` folder to the one beside ``db``.

    Returns the number of experiments rewritten (0 when nothing moved)."""
    if not db.is_file():
        return 0
    new_root = (db.resolve().parent / ARTIFACT_DIR).as_uri()
    marker = re.compile(rf"^(.*/{ARTIFACT_DIR})(/|$)")
    moved = 0
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # not an MLflow store (yet)
            return 0
        for exp_id, loc in rows:
            match = marker.match(loc or "")
            if match is None or match.group(1) == new_root:
                continue
            old_root = match.group(1)
            if old_root == new_root:
                continue
            con.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                        "WHERE experiment_id = ?", (new_root, len(old_root) + 1, exp_id))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE experiment_id = ? AND artifact_uri LIKE ?",
                        (new_root, len(old_root) + 1, exp_id, old_root + "%"))
            moved += 1
    if moved:
        log.info("MLflow store moved: artifact locations of %d experiment(s) now under %s", moved, new_root)
    return moved


def run_group(params_file: str | Path = "params.yaml") -> str:
    """Identity of one pipeline execution, shared by its stage processes (see the module doc)."""
    if os.environ.get("FOVSEG_RUN_GROUP"):
        return os.environ["FOVSEG_RUN_GROUP"]
    h = hashlib.sha256(git_commit().encode())
    p = Path(params_file)
    h.update(p.read_bytes() if p.is_file() else b"")
    h.update(os.environ.get("DVC_EXP_NAME", "").encode())
    return h.hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_killed(client, experiment_id: str) -> list[str]:
    """Runs RUNNING on this host whose process is gone -> KILLED (and their parent, if nothing else runs)."""
    host, killed = socket.gethostname(), []
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    for r in running:
        tags = r.data.tags
        pid = tags.get("fovseg.pid")
        if pid and tags.get("fovseg.host") == host and not _alive(int(pid)):
            client.set_terminated(r.info.run_id, "KILLED")
            killed.append(r.info.run_id)
            parent = tags.get("mlflow.parentRunId")
            if parent:
                client.set_terminated(parent, "KILLED")
                killed.append(parent)
    if killed:
        log.warning("MLflow: %d run(s) left RUNNING by a killed process marked KILLED", len(killed))
    return killed


class Tracker:
    """``with Tracker(experiment, stage, params) as t: t.log_metrics({...})``; every call is best-effort."""

    def __init__(self, experiment: str, stage: str, params: dict[str, Any] | None = None,
                 tracking_uri: str | None = None, run_name: str | None = None, group: str | None = None,
                 start_time: float | None = None):
        self.experiment, self.stage = experiment, stage
        self.params = params or {}
        self.uri = tracking_uri or default_tracking_uri()
        self.run_name = run_name or stage
        self.group = group
        self.start_time = start_time
        self._mlflow = None
        self.client = None
        self.run_id: str | None = None
        self.parent_id: str | None = None

    # -- setup
    def _experiment_id(self, mlflow) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        root = artifact_root(self.uri)
        try:
            return self.client.create_experiment(self.experiment, artifact_location=root)
        except Exception:  # noqa: BLE001 - created concurrently by another stage
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _parent(self, exp_id: str) -> str:
        group = self.group or run_group()
        found = self.client.search_runs([exp_id], f"tags.`{GROUP_TAG}` = '{group}' and tags.kind = 'pipeline'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        dvc_exp = os.environ.get("DVC_EXP_NAME", "")
        tags = {GROUP_TAG: group, "kind": "pipeline", "git_commit": git_commit(), "dvc_exp": dvc_exp,
                "params_hash": group}
        name = f"pipeline {dvc_exp or git_commit()[:8]}"
        run = self.client.create_run(exp_id, start_time=self._start_ms(), tags=tags, run_name=name)
        return run.info.run_id

    def _start_ms(self) -> int:
        return int(1000 * (self.start_time if self.start_time is not None else _STAGE_START))

    def __enter__(self) -> "Tracker":
        if int(os.environ.get("RANK", "0")) != 0:  # torchrun: only rank 0 reports
            return self
        try:
            if self.uri.startswith("http"):
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
            import mlflow
            from mlflow import MlflowClient

            db = sqlite_path(self.uri)
            if db is not None:
                relocate_store(db)
            mlflow.set_tracking_uri(self.uri)
            self.client = MlflowClient(self.uri)
            exp_id = self._experiment_id(mlflow)
            mark_killed(self.client, exp_id)
            self.parent_id = self._parent(exp_id)
            tags = {"stage": self.stage, "kind": "stage", "git_commit": git_commit(),
                    "mlflow.parentRunId": self.parent_id, GROUP_TAG: self.group or run_group(),
                    "dvc_stage": os.environ.get("DVC_STAGE", ""), "fovseg.pid": str(os.getpid()),
                    "fovseg.host": socket.gethostname()}
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

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = _numeric(metrics)
        if numeric:
            self._safe("log_metrics", numeric, step=step)

    def log_model_run(self, model: str, metrics: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        """One nested run per model variant (trained, baseline, oracle_*) with identical metric names."""
        if self._mlflow is None:
            return
        try:
            exp_id = self.client.get_run(self.run_id).info.experiment_id
            run = self.client.create_run(exp_id, run_name=f"{self.run_name}/{model}", tags={
                "mlflow.parentRunId": self.run_id, "kind": "model", "model": model, "stage": self.stage,
                **(tags or {})})
            now = int(time.time() * 1000)
            from mlflow.entities import Metric

            self.client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in _numeric(metrics).items()])
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


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.tracking relocate [mlflow.db]``: fix artifact paths after moving the store."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "relocate":
        print("usage: python -m pipeline.tracking relocate [PATH/TO/mlflow.db]", file=sys.stderr)
        sys.exit(2)
    db = Path(args[1]) if len(args) > 1 else (sqlite_path(default_tracking_uri()) or Path("mlflow.db"))
    print(f"{relocate_store(db)} experiment(s) relocated to {(db.resolve().parent / ARTIFACT_DIR)}")


if __name__ == "__main__":
    main()
