import logging
import shutil
import subprocess
import sys
import time

import pytest

from pipeline.mlflow_store import relocate_store
from pipeline.tracking import Tracker


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FOVSEG_RUN_GROUP", "group-1")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(uri, exp="fovseg-test"):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[exp])


def test_stages_nest_under_one_parent_with_real_times(store):
    start = time.time() - 5.0  # the stage process started 5 s before it first logged
    with Tracker("fovseg-test", "train", {"train": {"lr": 0.1}}, tracking_uri=store, start_time=start) as t:
        assert t.active
        t.log_metrics({"loss": 1.5, "nested": {"PQ": 40.0}, "name": "ignored"}, step=3)
        t.log_table({"class": ["a", "b"], "IoU": [1.0, 2.0]}, "per_class.json")
    with Tracker("fovseg-test", "evaluate", {}, tracking_uri=store, run_name="evaluate@toy_open") as t:
        for model, pq in (("trained", 20.0), ("baseline", 3.0), ("oracle_classifier", 45.0),
                          ("oracle_generator", 21.0)):
            t.log_model_run(model, {"PQ": pq, "mIoU": pq + 1}, {"benchmark": "toy_open"})
    runs = _runs(store)
    parents = runs[runs["tags.kind"] == "pipeline"]
    assert len(parents) == 1
    pid = parents.iloc[0]["run_id"]
    stages = runs[runs["tags.kind"] == "stage"]
    assert set(stages["tags.stage"]) == {"train", "evaluate"}
    assert (stages["tags.mlflow.parentRunId"] == pid).all()
    train = stages[stages["tags.stage"] == "train"].iloc[0]
    assert train["metrics.loss"] == 1.5 and train["metrics.nested.PQ"] == 40.0 and train["params.train.lr"] == "0.1"
    assert (train["end_time"] - train["start_time"]).total_seconds() >= 4.9
    assert parents.iloc[0]["status"] == "FINISHED" and parents.iloc[0]["tags.git_commit"]
    models = runs[runs["tags.kind"] == "model"]
    assert set(models["tags.model"]) == {"trained", "baseline", "oracle_classifier", "oracle_generator"}
    ev = stages[stages["tags.stage"] == "evaluate"].iloc[0]["run_id"]
    assert (models["tags.mlflow.parentRunId"] == ev).all()
    # identical metric names, <benchmark>/<metric>, as in the sweep trials
    assert models["metrics.toy_open/PQ"].notna().all() and models["metrics.toy_open/mIoU"].notna().all()
    assert (models["tags.benchmark"] == "toy_open").all()
    assert not any(c.startswith("metrics.baseline") for c in runs.columns)
    assert "metrics.PQ" not in runs.columns


def test_a_new_group_gets_a_new_parent(store, monkeypatch):
    with Tracker("fovseg-test", "train", {}, tracking_uri=store):
        pass
    monkeypatch.setenv("FOVSEG_RUN_GROUP", "group-2")
    with Tracker("fovseg-test", "train", {}, tracking_uri=store):
        pass
    assert (_runs(store)["tags.kind"] == "pipeline").sum() == 2


def test_sigkilled_stage_is_marked_killed_at_next_start(store, tmp_path):
    code = ("import os, signal; from pipeline.tracking import Tracker\n"
            f"t = Tracker('fovseg-test', 'train', {{}}, tracking_uri={store!r}).__enter__()\n"
            "assert t.active\nos.kill(os.getpid(), signal.SIGKILL)\n")
    env = {"FOVSEG_RUN_GROUP": "group-1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert (_runs(store)["status"] == "RUNNING").sum() == 2  # stage and parent left RUNNING
    with Tracker("fovseg-test", "evaluate", {}, tracking_uri=store):
        pass
    runs = _runs(store)
    killed = runs[runs["status"] == "KILLED"]
    assert list(killed["tags.stage"].dropna()) == ["train"]
    assert (runs[runs["tags.stage"] == "evaluate"]["status"] == "FINISHED").all()


def test_artifacts_follow_a_moved_store(store, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    with Tracker("fovseg-test", "train", {}, tracking_uri=store) as t:
        t.log_artifact(ckpt, "checkpoint")
    assert (tmp_path / "mlartifacts").is_dir()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "mlflow.db", moved / "mlflow.db")
    shutil.move(tmp_path / "mlartifacts", moved / "mlartifacts")
    assert relocate_store(moved / "mlflow.db") == 1
    new_uri = f"sqlite:///{moved / 'mlflow.db'}"
    with Tracker("fovseg-test", "evaluate", {}, tracking_uri=new_uri) as t:
        t.log_text("hello", "note.txt")
    runs = _runs(new_uri)
    assert all(u.startswith((moved / "mlartifacts").as_uri()) for u in runs["artifact_uri"])
    import mlflow

    train = runs[runs["tags.stage"] == "train"].iloc[0]["run_id"]
    local = mlflow.artifacts.download_artifacts(run_id=train, artifact_path="checkpoint/model.pt",
                                                dst_path=str(tmp_path / "dl"))
    assert open(local, "rb").read() == b"weights"
    assert not (tmp_path / "mlartifacts").exists()  # nothing written back into the old folder


def test_unreachable_server_warns_and_the_stage_completes(caplog):
    with caplog.at_level(logging.WARNING):
        with Tracker("x", "evaluate", {"a": 1}, tracking_uri="http://127.0.0.1:9") as t:
            t.log_metrics({"PQ": 1.0})
            done = True
    assert done and not t.active
    assert "MLflow tracking disabled" in caplog.text


def _history(uri, run_id, key):
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_one_metric_scheme_and_clean_histories(store):
    """A stage run named ``<stage>@<benchmark>`` logs ``<benchmark>/<name>``; per-step rows keep their steps,
    ``step`` is no metric, and a summary without a step never adds a step-0 point to a history."""
    with Tracker("fovseg-test", "train", {}, tracking_uri=store) as t:
        for step in (500, 1000):  # the train stage's rows (pipeline.train.recipe.TrainingRecipe.train_step)
            t.log_metrics({"step": step, "loss": 2.0 / step, "loss_ce": 1.0, "matched": 7, "lr": 1e-4,
                           "lr/new": 1e-4, "lr/clip": 1e-5}, step=step)
        t.log_metrics({"toy_open/PQ": 12.0, "score": 12.0, "metric": "toy_open/PQ"}, step=1000)  # periodic eval
        t.log_metrics({"loss": 0.5, "train_seconds": 9.0, "iterations": 1000})  # the summary, no step
        t.log_metrics({"loss": 0.5, "it_per_s": 3.0}, prefix="train")  # the summary under the trials' names
        train_id = t.run_id
    with Tracker("fovseg-test", "evaluate", {}, tracking_uri=store, run_name="evaluate@toy_open") as t:
        assert t.benchmark == "toy_open"
        t.log_metrics({"PQ": 20.0, "mIoU": 30.0, "images": 6, "benchmark": "toy_open"})
        t.log_model_run("baseline", {"PQ": 3.0, "mIoU": 4.0})  # the benchmark comes from the tracker
        eval_id = t.run_id
    runs = _runs(store).set_index("run_id")
    train = runs.loc[train_id]
    assert _history(store, train_id, "loss") == [(500, 2.0 / 500), (1000, 2.0 / 1000)]  # no stray step-0 point
    assert train["metrics.final/loss"] == 0.5 and train["metrics.train_seconds"] == 9.0
    assert train["metrics.train/loss"] == 0.5 and train["metrics.train/it_per_s"] == 3.0
    assert _history(store, train_id, "lr/clip") == [(500, 1e-5), (1000, 1e-5)]
    assert _history(store, train_id, "matched") == [(500, 7.0), (1000, 7.0)]
    assert not any(c in runs.columns for c in ("metrics.step", "metrics.final/step", "metrics.metric"))
    assert runs.loc[eval_id, "metrics.toy_open/PQ"] == 20.0 and runs.loc[eval_id, "metrics.toy_open/images"] == 6
    baseline = runs[runs["tags.model"] == "baseline"].iloc[0]
    assert baseline["metrics.toy_open/PQ"] == 3.0 and baseline["tags.benchmark"] == "toy_open"
    assert baseline["tags.mlflow.parentRunId"] == eval_id


def _experiment(uri, name="fovseg-test"):
    from mlflow import MlflowClient

    return MlflowClient(uri).get_experiment_by_name(name)


def test_experiment_is_a_model_training_one_with_saved_views(store):
    import json

    from pipeline.mlflow_store import EXPERIMENT_KIND_TAG, VIEW_TAG_PREFIX

    params = {"data": {"eval_benchmarks": ["toy_val", "toy_open"]}}
    with Tracker("fovseg-test", "train", params, tracking_uri=store):
        pass
    tags = _experiment(store).tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"  # not GenAI: the runs table, not traces
    views = {k[len(VIEW_TAG_PREFIX):]: json.loads(v) for k, v in tags.items() if k.startswith(VIEW_TAG_PREFIX)}
    assert set(views) == {"fovseg-results", "fovseg-table4"}
    for view in views.values():  # the UI's envelope: string name, number createdAt, string state (JSON)
        assert isinstance(view["name"], str) and isinstance(view["createdAt"], int)
        state = json.loads(view["state"])
        assert state["orderByKey"] == "attributes.start_time" and isinstance(state["selectedColumns"], list)
    results = json.loads(views["fovseg-results"]["state"])
    assert "metrics.`toy_open/PQ`" in results["selectedColumns"] and results["searchFilter"] == ""
    table4 = json.loads(views["fovseg-table4"]["state"])
    assert table4["searchFilter"] == "tags.kind = 'sweep_row'"
    assert {"metrics.`toy_val/PQ_sd`", "metrics.`toy_open/mIoU_delta`"} <= set(table4["selectedColumns"])
    # a later stage with another benchmark extends the views; a view saved from the UI is the user's
    from mlflow import MlflowClient

    client = MlflowClient(store)
    exp_id = _experiment(store).experiment_id
    user_view = json.dumps({"name": "mine", "createdAt": 1, "updatedAt": 2, "state": "{}"})
    client.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + "fovseg-table4", user_view)
    with Tracker("fovseg-test", "evaluate", {}, tracking_uri=store, run_name="evaluate@toy_open_large"):
        pass
    tags = _experiment(store).tags
    results = json.loads(json.loads(tags[VIEW_TAG_PREFIX + "fovseg-results"])["state"])
    assert "metrics.`toy_open_large/PQ`" in results["selectedColumns"]
    assert "metrics.`toy_val/PQ`" in results["selectedColumns"]
    assert tags[VIEW_TAG_PREFIX + "fovseg-table4"] == user_view


@pytest.mark.parametrize("kind, after", [(None, "custom_model_development"),
                                         ("genai_development", "custom_model_development"),
                                         ("finetuning", "finetuning")])  # an explicit ML kind is kept
def test_an_existing_experiment_gets_the_model_training_kind(store, kind, after):
    from mlflow import MlflowClient

    client = MlflowClient(store)
    exp_id = client.create_experiment("fovseg-test")
    if kind:
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", kind)
    with Tracker("fovseg-test", "train", {}, tracking_uri=store):
        pass
    assert _experiment(store).tags["mlflow.experimentKind"] == after


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_mlflow_ui_takes_a_port_and_stays_local(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def dry(*args):
        return subprocess.run(["make", "-n", "mlflow-ui", f"VENV={tmp_path / 'v'}", *args], cwd=repo,
                              capture_output=True, text=True, timeout=60).stdout.splitlines()

    ui = [line for line in dry("PORT=5123") if " ui " in line]
    assert len(ui) == 1 and "--host 127.0.0.1" in ui[0] and ui[0].endswith("--port 5123")
    assert [line for line in dry() if " ui " in line][0].endswith("--port 5000")


def test_ui_urls_open_each_experiment_in_model_training_mode_and_the_saved_view(store, tmp_path):
    from pipeline.mlflow_store import ui_urls
    from pipeline.tracking import main

    with Tracker("fovseg-test", "train", {}, tracking_uri=store):
        pass
    urls = ui_urls(tmp_path / "mlflow.db", 5123)
    assert len(urls) == 1 and urls[0].startswith("fovseg-test: http://127.0.0.1:5123/#/experiments/")
    assert urls[0].endswith("/runs?workflowType=machine_learning&viewStateShareKey=fovseg-results")
    assert ui_urls(tmp_path / "missing.db") == []
    main(["urls", str(tmp_path / "mlflow.db"), "5123"])
    from mlflow import MlflowClient

    client = MlflowClient(store)  # a store written by older code: no saved view to open
    client.delete_experiment_tag(_experiment(store).experiment_id, "mlflow.sharedViewState.fovseg-results")
    assert ui_urls(tmp_path / "mlflow.db", 5123)[0].endswith("/runs?workflowType=machine_learning")
