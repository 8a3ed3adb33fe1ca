"""The MLflow store and its experiments: where the store is (``sqlite:///mlflow.db`` at the repository root
unless ``MLFLOW_TRACKING_URI`` says otherwise, artifacts in ``mlartifacts/`` beside it), rewriting artifact
paths after the two were moved together, the model-training experiment with the pipeline's saved views of the
runs table, the UI's addresses, and runs left RUNNING by a killed process. :mod:`pipeline.tracking` logs into
it."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger(__name__)
STORE_DIR = Path(__file__).resolve().parents[1]  # the default store lives here: <repo>/mlflow.db
ARTIFACT_DIR = "mlartifacts"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI: which page layout the experiment gets
EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning / model training" kind
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3's saved views of the runs table: one experiment tag each
TABLE_METRICS = ("PQ", "mIoU", "PQ_unseen", "mIoU_unseen")  # the paper's headline columns


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{STORE_DIR / 'mlflow.db'}"


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
            con.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                        "WHERE experiment_id = ?", (new_root, len(old_root) + 1, exp_id))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE experiment_id = ? AND artifact_uri LIKE ?",
                        (new_root, len(old_root) + 1, exp_id, old_root + "%"))
            moved += 1
    if moved:
        log.info("MLflow store moved: artifact locations of %d experiment(s) now under %s", moved, new_root)
    return moved


def ensure_experiment(client, name: str, uri: str, benchmarks: tuple[str, ...] | list[str] = ()) -> str:
    """The experiment's id, created if missing (artifacts beside a sqlite store), marked as a model-training
    experiment, with the saved views of :func:`saved_views` for ``benchmarks`` (added to those it has)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_root(uri),
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # noqa: BLE001 - created concurrently by another stage
            exp_id = client.get_experiment_by_name(name).experiment_id
        exp = client.get_experiment(exp_id)
    tags = dict(exp.tags or {})
    kind = tags.get(EXPERIMENT_KIND_TAG, "")
    if not kind or kind.startswith("genai") or kind.endswith("_inferred"):  # an explicit ML kind is kept
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    write_saved_views(client, exp.experiment_id, tags, benchmarks)
    return exp.experiment_id


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's column id (ExperimentPage selectedColumns)


def saved_views(benchmarks: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """The runs table views the pipeline saves in its experiment (MLflow 3: *Runs* tab, *Views* menu; view id ->
    name, search filter and columns):

    - ``fovseg-results``: every run, nested (pipeline > stages > model runs; pipeline > sweep > rows > trials),
      columns ``<benchmark>/{PQ, mIoU, PQ_unseen, mIoU_unseen}``;
    - ``fovseg-table4``: only sweep rows (``tags.kind = 'sweep_row'``): per benchmark the mean, the sample sd
      over seeds, and the paired delta to the grid's reference row (mean and sd over seeds) of PQ and mIoU,
      and the number of seeds.
    """
    results = [_column("metrics", f"{b}/{m}") for b in benchmarks for m in TABLE_METRICS]
    table4 = [_column("metrics", f"{b}/{m}{s}") for b in benchmarks for m in ("PQ", "mIoU")
              for s in ("", "_sd", "_delta", "_delta_sd")] + [_column("metrics", "n_seeds")]
    return {"fovseg-results": {"name": "FOV-Seg results (nested)", "searchFilter": "", "selectedColumns": results},
            "fovseg-table4": {"name": "FOV-Seg Table IV rows", "searchFilter": "tags.kind = 'sweep_row'",
                              "selectedColumns": table4}}


def write_saved_views(client, exp_id: str, tags: dict[str, str], benchmarks) -> None:
    """Save :func:`saved_views` as experiment tags in the UI's format (``{name, createdAt, updatedAt, state}``,
    ``state`` the JSON of the experiment page's search facets and UI state). A view is (re)written while the
    pipeline owns it (the envelope's ``fovseg`` entry, which a save from the UI drops), with the benchmarks it
    had and ``benchmarks``; a view edited and saved in the UI is left alone."""
    now = int(time.time() * 1000)
    for view_id, spec in saved_views([]).items():
        key = VIEW_TAG_PREFIX + view_id
        old: dict = {}
        if key in tags:
            try:
                old = json.loads(tags[key])
            except ValueError:
                continue
            if "fovseg" not in old:  # saved from the UI since: the user's view now
                continue
        benches = list(dict.fromkeys([*old.get("fovseg", {}).get("benchmarks", []), *benchmarks]))
        spec = saved_views(benches)[view_id]
        state = json.dumps({"searchFilter": spec["searchFilter"], "orderByKey": "attributes.start_time",
                            "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active",
                            "datasetsFilter": [], "modelVersionFilter": "All Runs",
                            "selectedColumns": spec["selectedColumns"]})
        if old.get("state") == state and old.get("name") == spec["name"]:
            continue
        envelope = {"name": spec["name"], "createdAt": old.get("createdAt", now), "updatedAt": now,
                    "state": state, "fovseg": {"benchmarks": benches}}
        client.set_experiment_tag(exp_id, key, json.dumps(envelope))


def ui_urls(db: Path, port: int = 5000, host: str = "127.0.0.1") -> list[str]:
    """``<experiment>: <url>`` of each active experiment of a sqlite store: its runs table in the UI's
    model-training mode (``workflowType=machine_learning``; MLflow 3.17 picks the mode from that parameter, else
    from the browser's last choice, GenAI at first, not from the tag), in the saved view ``fovseg-results``
    where the experiment has it (a stage of this code wrote it)."""
    if not db.is_file():
        return []
    view = VIEW_TAG_PREFIX + "fovseg-results"
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as con:
        try:
            rows = con.execute("SELECT experiment_id, name, EXISTS(SELECT 1 FROM experiment_tags t WHERE "
                               "t.experiment_id = e.experiment_id AND t.key = ?) FROM experiments e WHERE "
                               "lifecycle_stage = 'active' ORDER BY experiment_id", (view,)).fetchall()
        except sqlite3.OperationalError:
            return []
    return [f"{name}: http://{host}:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
            + ("&viewStateShareKey=fovseg-results" if has_view else "")
            for exp_id, name, has_view in rows if name != "Default"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_client(uri: str):
    """An ``MlflowClient`` on ``uri``: a sqlite store that moved has its artifact locations relocated first; a
    server that is down gives one quick failure, not minutes of retries."""
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    db = sqlite_path(uri)
    if db is not None:
        relocate_store(db)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def alive_tags() -> dict[str, str]:
    """Tags naming this process on this host: :func:`mark_killed` sets a RUNNING run carrying them KILLED once the
    process is gone."""
    return {"fovseg.pid": str(os.getpid()), "fovseg.host": socket.gethostname()}


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
