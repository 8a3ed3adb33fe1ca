"""The sweep's MLflow mirror without Ray: where the sweep run nests, what its row runs carry (mean, sample sd,
paired delta to the reference row under the trials' metric names), and trial runs under their rows."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.config import override
from pipeline.params_file import load_params
from pipeline.sweep.grids import load_grid
from pipeline.sweep.mlflow_mirror import SweepTracking, log_sweep_to_mlflow
from pipeline.sweep.results import summarize
from pipeline.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
GRID = {"paper_table": "IV(x)", "reference_row": "base",
        "benchmarks": {"toy": ["toy_open"], "paper": ["ade20k_150"]},
        "rows": [{"label": "base", "overrides": {"model.adapter_layers": 1}},
                 {"label": "+ more", "overrides": {"model.adapter_layers": 2}},
                 {"label": "later", "overrides": {"train.future_switch": True},
                  "pending_switches": ["train.future_switch"]}]}
PQ = {("base", 0): 10.0, ("base", 1): 12.0, ("+ more", 0): 13.0, ("+ more", 1): 16.0}


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("FOVSEG_RUN_GROUP", "group-1")
    monkeypatch.delenv("DVC_STAGE", raising=False)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    params = override(load_params(REPO / "params.yaml"), {"sweep.seeds": (0, 1)})
    grid = load_grid(str(tmp_path / "grid.yaml"), params)
    trials = [{"row": r, "seed": s, "name": f"{r}__seed{s}", "overrides": {}, "error": None, "seconds": 1.0,
               "ended": None, "metrics": {"toy_open/PQ": v, "toy_open/mIoU": v + 1, "train/loss": 0.5}}
              for (r, s), v in PQ.items()]
    trials += [{"row": "later", "seed": s, "name": f"later__seed{s}", "overrides": {}, "metrics": {},
                "seconds": 0.0, "error": "RowNotExpressible: needs a switch"} for s in (0, 1)]
    return {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "params": params, "grid": grid, "trials": trials}


def _runs(uri, exp="fovseg-toy"):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[exp])


def test_sweep_nests_under_the_pipeline_run_of_its_group_with_row_summaries(world):
    uri, params, grid = world["uri"], world["params"], world["grid"]
    with Tracker(params.tracking.experiment, "train", {}, tracking_uri=uri):  # a stage of the same dvc repro
        pass
    summary = summarize(grid, params.preset, (0, 1), world["trials"], 3.0)
    log_sweep_to_mlflow(grid, params, world["trials"], "key-1", uri, summary=summary)
    runs = _runs(uri)
    pipeline = runs[runs["tags.kind"] == "pipeline"]
    sweep = runs[runs["tags.kind"] == "sweep"]
    assert len(pipeline) == 1 and len(sweep) == 1
    assert sweep.iloc[0]["tags.mlflow.parentRunId"] == pipeline.iloc[0]["run_id"]
    assert sweep.iloc[0]["metrics.failed_trials"] == 2 and sweep.iloc[0]["tags.git_commit"]
    rows = runs[runs["tags.kind"] == "sweep_row"].set_index("tags.row")
    assert list(rows.sort_values("start_time", ascending=False).index) == ["base", "+ more", "later"]  # grid order
    assert (rows["tags.mlflow.parentRunId"] == sweep.iloc[0]["run_id"]).all()
    more, base = rows.loc["+ more"], rows.loc["base"]
    assert more["metrics.toy_open/PQ"] == pytest.approx(14.5)  # the mean, under the trials' own name
    assert more["metrics.toy_open/PQ_sd"] == pytest.approx(4.5 ** 0.5)  # sample sd over seeds
    assert more["metrics.toy_open/PQ_delta"] == pytest.approx(3.5)  # paired: (13-10 + 16-12) / 2
    assert more["metrics.toy_open/PQ_delta_sd"] == pytest.approx(0.5 ** 0.5)
    assert base["metrics.toy_open/PQ_delta"] == 0.0 and base["tags.reference"] == "true"
    assert more["metrics.n_seeds"] == 2 and more["params.override.model.adapter_layers"] == "2"
    assert "metrics.train/loss_delta" not in rows.columns or rows["metrics.train/loss_delta"].isna().all()
    assert rows.loc["later", "status"] == "FAILED" and "train.future_switch" in rows.loc["later", "tags.blocked"]
    trials = runs[runs["tags.kind"] == "sweep_trial"]
    assert len(trials) == 6
    for _, t in trials.iterrows():
        assert t["tags.mlflow.parentRunId"] == rows.loc[t["tags.row"], "run_id"]
    ok = trials[trials["status"] == "FINISHED"]
    assert ok["metrics.toy_open/PQ"].notna().all() and len(ok) == 4
    # again (a resumed sweep): no duplicates
    log_sweep_to_mlflow(grid, params, world["trials"], "key-1", uri, summary=summary)
    again = _runs(uri)
    assert len(again) == len(runs) and (again["tags.kind"] == "sweep").sum() == 1


def test_a_sweep_outside_any_pipeline_run_stays_top_level_with_its_commit(world, monkeypatch):
    log_sweep_to_mlflow(world["grid"], world["params"], world["trials"], "key-2", world["uri"])
    runs = _runs(world["uri"])
    assert not (runs["tags.kind"] == "pipeline").any()
    sweep = runs[runs["tags.kind"] == "sweep"].iloc[0]
    assert "tags.mlflow.parentRunId" not in runs.columns or not isinstance(sweep["tags.mlflow.parentRunId"], str)
    assert sweep["tags.git_commit"] and sweep["tags.fovseg.group"] == "group-1"
    # the DVC stage sweep@<grid> with no other stage run yet: it starts the pipeline run itself
    monkeypatch.setenv("DVC_STAGE", "sweep@test")
    monkeypatch.setenv("FOVSEG_RUN_GROUP", "group-2")
    log_sweep_to_mlflow(world["grid"], world["params"], world["trials"], "key-3", world["uri"])
    runs = _runs(world["uri"])
    pipeline = runs[runs["tags.kind"] == "pipeline"]
    assert len(pipeline) == 1 and pipeline.iloc[0]["tags.fovseg.group"] == "group-2"
    new = runs[(runs["tags.kind"] == "sweep") & (runs["tags.sweep_key"] == "key-3")].iloc[0]
    assert new["tags.mlflow.parentRunId"] == pipeline.iloc[0]["run_id"]


def test_a_sweep_that_stops_early_ends_its_runs(world):
    t = SweepTracking(world["grid"], world["params"], "key-5", world["uri"]).open()
    assert t.active and len(t.row_ids) == 3
    t.log_trial(world["trials"][0])
    t.abort("FAILED")
    runs = _runs(world["uri"])
    mine = runs[runs["tags.sweep_key"] == "key-5"]
    assert set(mine[mine["tags.kind"] != "sweep_trial"]["status"]) == {"FAILED"}
    assert (mine["tags.fovseg.pid"].dropna() == str(os.getpid())).all()  # KILLED if the driver dies


def test_tracking_is_picklable_and_an_unreachable_server_only_warns(world, caplog):
    import logging
    import pickle

    t = SweepTracking(world["grid"], world["params"], "key-4", "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING):
        t.open()
        t.log_trial(world["trials"][0])
        t.finish({"rows": []}, world["trials"])
    assert not t.active and "MLflow logging of sweep" in caplog.text
    assert pickle.loads(pickle.dumps(t)).sweep_key == "key-4"  # Tune pickles it with the callback


@pytest.mark.slow  # an MLflow server process, about 20 s
def test_an_mlflow_server_uri_works_like_the_sqlite_file(world, tmp_path):
    """``MLFLOW_TRACKING_URI=http://...``: the stages and the sweep log through the server's REST API."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.time() + 120
        while True:
            try:
                if opener.open(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        params, grid = world["params"], world["grid"]
        with Tracker(params.tracking.experiment, "train", {}, tracking_uri=uri) as t:
            assert t.active
            t.log_metrics({"loss": 1.0}, step=1)
        log_sweep_to_mlflow(grid, params, world["trials"], "key-http", uri)
        runs = _runs(uri)
        sweep = runs[runs["tags.kind"] == "sweep"]
        assert len(sweep) == 1 and sweep.iloc[0]["tags.mlflow.parentRunId"] == \
            runs[runs["tags.kind"] == "pipeline"].iloc[0]["run_id"]
        assert (runs["tags.kind"] == "sweep_trial").sum() == 6 and (runs["tags.kind"] == "sweep_row").sum() == 3
        from mlflow import MlflowClient

        assert "summary.json" in [a.path for a in MlflowClient(uri).list_artifacts(sweep.iloc[0]["run_id"])]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
