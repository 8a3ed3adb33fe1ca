import logging

from pipeline.tracking import Tracker


def test_runs_land_in_a_sqlite_store(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker("fovseg-test", "train", {"train": {"lr": 0.1}}, tracking_uri=uri) as t:
        assert t.active
        t.log_metrics({"loss": 1.5, "nested": {"PQ": 40.0}, "name": "ignored"}, step=3)
        t.log_table({"class": ["a", "b"], "IoU": [1.0, 2.0]}, "per_class.json")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["fovseg-test"])
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["metrics.loss"] == 1.5 and row["metrics.nested.PQ"] == 40.0
    assert row["params.train.lr"] == "0.1" and row["tags.stage"] == "train" and row["tags.git_commit"]


def test_unreachable_server_warns_and_the_stage_completes(caplog):
    with caplog.at_level(logging.WARNING):
        with Tracker("x", "evaluate", {"a": 1}, tracking_uri="http://127.0.0.1:9") as t:
            t.log_metrics({"PQ": 1.0})
            done = True
    assert done and not t.active
    assert "MLflow tracking disabled" in caplog.text
