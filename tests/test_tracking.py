import logging
import shutil
import subprocess
import sys
import time

import pytest

from pipeline.tracking import Tracker, relocate_store


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
    assert models["metrics.PQ"].notna().all() and models["metrics.mIoU"].notna().all()  # identical metric names
    assert not any(c.startswith("metrics.baseline") for c in runs.columns)


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
