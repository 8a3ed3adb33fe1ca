"""The whole toy pipeline, stage by stage, with tiny sizes (opt in: `pytest -m slow`).

`make demo` runs the real thing through `dvc repro`; this checks the same stage functions chain up."""
import json

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_stages_chain_on_a_tiny_toy_world(tmp_path, monkeypatch):
    from pathlib import Path

    import stages.backbones as backbones
    import stages.benchmark as benchmark
    import stages.download as download
    import stages.evaluate as evaluate
    import stages.proposals as proposals
    import stages.report as report
    import stages.train as train
    from stages.common import run

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "datasets")
    params["data"]["toy"].update(n_train=16, n_val=4, n_open=4, n_captions=256)
    params["backbones"]["clip"]["pretrain"].update(steps=3, batch_size=16)
    params["backbones"]["generator"]["pretrain"].update(steps=3, batch_size=2)
    params["train"].update(iterations=4, checkpoint_every=2, batch_size=2, warmup_iters=2)
    params["benchmark"].update(n_images=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run(download.main, download.build_parser(), [])
    run(backbones.main, backbones.build_parser(), [])
    for b in ["toy_train", *params["data"]["eval_benchmarks"]]:
        run(proposals.main, proposals.build_parser(),
            ["--benchmark", b, "--out", f"outputs/proposals/{b}", "--metrics", f"metrics/proposals/{b}.json"])
    run(train.main, train.build_parser(), ["--proposals", "outputs/proposals/toy_train"])
    for b in params["data"]["eval_benchmarks"]:
        run(evaluate.main, evaluate.build_parser(), ["--benchmark", b, "--proposals", f"outputs/proposals/{b}",
                                                     "--predictions", f"outputs/eval/{b}", "--metrics",
                                                     f"metrics/eval/{b}.json"])
    run(benchmark.main, benchmark.build_parser(), [])
    run(report.main, report.build_parser(), [])
    open_metrics = json.loads((tmp_path / "metrics/eval/toy_open.json").read_text())
    assert {"PQ", "PQ_unseen", "mIoU", "mIoU_unseen", "baseline", "oracle_classifier"} <= set(open_metrics)
    assert (tmp_path / "reports/README.md").is_file()
    bench = json.loads((tmp_path / "metrics/benchmark.json").read_text())
    assert set(bench["inference"]) == set(params["data"]["eval_benchmarks"]) and bench["large_vs_small_throughput"] > 0
