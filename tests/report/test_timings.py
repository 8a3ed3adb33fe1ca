"""Where the report's inputs come from: each stage keeps its timings (seconds, it/s, images/s, peak memory) out of
its DVC metrics file, in ``--timings`` with a ``produced`` block (UTC time, git commit, preset), and still logs
every value to MLflow. The stages' heavy work is replaced by canned results here."""
import contextlib
import json
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


class _Tracker:
    def __init__(self):
        self.logged = {}

    def log_metrics(self, metrics, step=None, prefix=None):
        self.logged.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def __getattr__(self, name):  # log_artifact, log_model_run, log_table: not checked here
        return lambda *a, **k: None


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    tracked = _Tracker()

    def patch_tracker(module):
        monkeypatch.setattr(module, "tracker", lambda *a, **k: contextlib.nullcontext(tracked))
    return tmp_path, tracked, patch_tracker


def _run(module, argv):
    from stages.common import run

    return run(module.main, module.build_parser(), argv)


def _produced(path: Path) -> dict:
    data = json.loads(path.read_text())
    p = data["produced"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["utc"]) and p["preset"] == "toy"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", p["commit"])
    return data


def test_evaluate_stage_keeps_seconds_out_of_the_dvc_metrics(stage_env, monkeypatch):
    import stages.evaluate as stage

    tmp, tracked, patch = stage_env
    patch(stage)
    canned = {"PQ": 30.0, "mIoU": 33.0, "PQ_seen": 31.0, "benchmark": "toy_val", "images": 4, "skipped_images": 0,
              "seconds_per_image": 0.004, "baseline": {"PQ": 6.0}, "oracle_classifier": {"PQ": 50.0},
              "oracle_generator": {"PQ": 40.0}, "per_class": {"class": ["a"], "IoU": [1.0], "unseen": [False],
                                                              "IoU_baseline": [0.5]}}
    monkeypatch.setattr(stage, "evaluate_benchmark", lambda *a, **k: dict(canned))
    monkeypatch.setattr(stage, "init_seed_and_device", lambda *a: torch.device("cpu"))
    _run(stage, ["--benchmark", "toy_val", "--backbones", "b", "--checkpoint", "c.pt", "--proposals", "p",
                 "--predictions", "e", "--metrics", "metrics/eval/toy_val.json",
                 "--timings", "metrics/timings/eval/toy_val.json"])
    metrics = json.loads((tmp / "metrics/eval/toy_val.json").read_text())
    assert "seconds_per_image" not in metrics and metrics["PQ"] == 30.0 and "PQ_unseen" not in metrics
    timings = _produced(tmp / "metrics/timings/eval/toy_val.json")
    assert timings["seconds_per_image"] == 0.004
    assert tracked.logged["seconds_per_image"] == 0.004  # MLflow keeps every value


def test_proposals_and_backbones_stages_move_their_seconds(stage_env, monkeypatch):
    import stages.backbones as backbones
    import stages.proposals as proposals

    tmp, tracked, patch = stage_env
    patch(proposals)
    monkeypatch.setattr(proposals, "compute_proposals", lambda *a, **k: {"images": 4, "resumed_images": 0,
                                                                         "skipped_images": 0, "seconds": 1.5})
    _run(proposals, ["--benchmark", "toy_val", "--backbones", "b", "--out", "o", "--metrics", "m/p.json",
                     "--timings", "t/p.json"])
    assert json.loads((tmp / "m/p.json").read_text()) == {"images": 4, "resumed_images": 0, "skipped_images": 0}
    assert _produced(tmp / "t/p.json")["seconds"] == 1.5 and tracked.logged["seconds"] == 1.5

    patch(backbones)
    monkeypatch.setattr(backbones, "pretrain_toy_backbones", lambda *a, **k: (
        {"clip_loss_last": 0.8, "clip_pretrain_seconds": 345.5, "clip_pretrain_precision": "fp32",
         "m2f_loss_last": 12.1, "m2f_pretrain_seconds": 329.6}, [1.0, 0.9]))
    _run(backbones, ["--out", "bb", "--metrics", "m/backbones.json", "--timings", "t/backbones.json"])
    assert json.loads((tmp / "m/backbones.json").read_text()) == {"clip_loss_last": 0.8,
                                                                  "clip_pretrain_precision": "fp32",
                                                                  "m2f_loss_last": 12.1}
    t = _produced(tmp / "t/backbones.json")
    assert t["clip_pretrain_seconds"] == 345.5 and t["m2f_pretrain_seconds"] == 329.6


def test_train_stage_moves_time_and_speed_out_of_the_metrics(stage_env, monkeypatch):
    import stages.train as stage

    tmp, tracked, patch = stage_env
    patch(stage)
    canned = {"trainable": 10, "total": 20, "train_seconds": 72.6, "it_per_s": 13.8, "iterations": 1000,
              "resumed_from": 0, "device": "cpu", "loss": 2.0}
    monkeypatch.setattr(stage, "run_training", lambda **k: dict(canned))
    monkeypatch.setattr(stage, "init_seed_and_device", lambda *a: torch.device("cpu"))
    monkeypatch.setattr(stage, "relaunch_under_torchrun", lambda *a: None)
    monkeypatch.setattr(stage, "init_distributed", lambda *a: None)
    _run(stage, ["--backbones", "b", "--proposals", "p", "--eval-proposals", "q", "--checkpoints", "c", "--out", "o",
                 "--metrics", "m/train.json", "--curve", "m/curve.csv", "--eval-curve", "m/eval.csv",
                 "--timings", "t/train.json"])
    assert json.loads((tmp / "m/train.json").read_text()) == {"trainable": 10, "total": 20, "iterations": 1000,
                                                              "resumed_from": 0, "device": "cpu", "loss": 2.0}
    t = _produced(tmp / "t/train.json")
    assert t["train_seconds"] == 72.6 and t["it_per_s"] == 13.8 and "gpu_hours" not in t and t["device"] == "cpu"
    assert tracked.logged["it_per_s"] == 13.8


def test_benchmark_stage_keeps_counts_and_accounting_and_moves_every_speed(stage_env, monkeypatch):
    import stages.benchmark as stage

    tmp, tracked, patch = stage_env
    patch(stage)
    model = torch.nn.Linear(2, 2)

    class Ready:
        def __init__(self):
            self.model = model

        def text_embeddings(self, vocab):
            return None

    class DS:
        def __init__(self, bench, root):
            self.vocab = ["a", "b", "c"] if bench == "toy_open_large" else ["a"]

    figures = {"toy_val": {"images_per_s": 9.0, "peak_memory_mb": 900.0},
               "toy_open": {"images_per_s": 12.0, "peak_memory_mb": 900.0},
               "toy_open_large": {"images_per_s": 6.0, "peak_memory_mb": 950.0}}
    monkeypatch.setattr(stage, "init_seed_and_device", lambda *a: torch.device("cpu"))
    monkeypatch.setattr(stage, "build_classifier", lambda *a, **k: Ready())
    monkeypatch.setattr(stage, "BenchmarkDataset", DS)
    monkeypatch.setattr(stage, "get_benchmark", lambda name: name)
    monkeypatch.setattr(stage, "ProposalStore", lambda path: None)
    monkeypatch.setattr(stage, "compare_vocabularies", lambda *a, **k: figures)
    monkeypatch.setattr(stage, "build_segmenter", lambda *a, **k: object())
    monkeypatch.setattr(stage, "time_end_to_end", lambda seg, ds, n, device: {"images_per_s": 2.0 * len(ds.vocab),
                                                                              "peak_memory_mb": 990.0})
    monkeypatch.setattr(stage, "model_accounting", lambda *a: {"model": "m", "trainable_kept": 5})
    (tmp / "m").mkdir()
    (tmp / "m/train.json").write_text(json.dumps({"iterations": 1000, "loss": 2.0}))  # no timings in it any more
    _run(stage, ["--backbones", "b", "--checkpoint", "c.pt", "--train-metrics", "m/train.json", "--proposals-root",
                 "p", "--metrics", "m/benchmark.json", "--timings", "t/benchmark.json"])
    metrics = json.loads((tmp / "m/benchmark.json").read_text())
    assert metrics["train_iterations"] == 1000 and metrics["trainable_params_paper"] == 6 and metrics["accounting"]
    assert not {"inference", "end_to_end", "device", "precision", "scope", "large_vs_small_throughput",
                "train_seconds", "gpu_hours"} & set(metrics)
    t = _produced(tmp / "t/benchmark.json")
    assert t["inference"] == figures and t["end_to_end"]["toy_open_large"]["images_per_s"] == 6.0
    assert t["large_vs_small_throughput"] == 0.5 and t["device"] == "cpu" and t["precision"] == "fp32"
    assert tracked.logged["toy_open_end_to_end_images_per_s"] == 2.0 and tracked.logged["large_vs_small_throughput"]
