"""The whole toy pipeline, stage by stage, with tiny sizes (opt in: `pytest -m slow`).

`make demo` runs the real thing through `dvc repro`; this runs the same stage commands, with the paths
dvc.yaml gives them, in dvc.yaml's order, inside one process."""
import importlib
import json

import pytest
import yaml
from dvcyaml import REPO, command, stages

pytestmark = pytest.mark.slow
PIPELINE = ("download", "backbones", "proposals-train", "proposals", "train", "evaluate", "benchmark", "report")


def tiny_params(tmp_path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "datasets")
    params["data"]["toy"].update(n_train=16, n_val=4, n_open=4, n_captions=256)
    params["backbones"]["clip"]["pretrain"].update(steps=3, batch_size=16)
    params["backbones"]["generator"]["pretrain"].update(steps=3, batch_size=2)
    params["train"].update(iterations=4, checkpoint_every=2, batch_size=2, warmup_iters=2)
    params["benchmark"].update(n_images=2)
    return params


def run_pipeline(tmp_path, monkeypatch, params: dict) -> None:
    from stages.common import run

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name, stage in stages().items():  # dvc.yaml lists the stages in dependency order (same benchmarks here)
        if name.split("@")[0] not in PIPELINE:
            continue
        module, argv = command(stage)
        mod = importlib.import_module(module)
        run(mod.main, mod.build_parser(), argv)


def test_stages_chain_on_a_tiny_toy_world(tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    run_pipeline(tmp_path, monkeypatch, params)
    open_metrics = json.loads((tmp_path / "metrics/eval/toy_open.json").read_text())
    assert {"PQ", "PQ_unseen", "mIoU", "mIoU_unseen", "baseline", "oracle_classifier"} <= set(open_metrics)
    assert (tmp_path / "reports/README.md").is_file()
    bench = json.loads((tmp_path / "metrics/timings/benchmark.json").read_text())
    assert set(bench["inference"]) == set(params["data"]["eval_benchmarks"]) and bench["large_vs_small_throughput"] > 0
