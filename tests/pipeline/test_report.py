import json

from pipeline.report import build_report


def test_report_from_metrics(tmp_path):
    m = tmp_path / "metrics"
    (m / "eval").mkdir(parents=True)
    base = {"PQ": 1.0, "PQ_seen": 1.0, "PQ_unseen": 2.0, "mIoU": 3.0, "mIoU_seen": 3.0, "mIoU_unseen": 4.0}
    for name in ("toy_open", "ade20k_150"):
        (m / "eval" / f"{name}.json").write_text(json.dumps({
            "PQ": 20.5, "PQ_seen": 25.0, "PQ_unseen": 10.0, "mIoU": 30.0, "mIoU_seen": 35.0, "mIoU_unseen": 12.0,
            "baseline": base, "per_class": {"class": ["a", "b"], "IoU": [10.0, None], "IoU_baseline": [1.0, None]}}))
    (m / "train.json").write_text(json.dumps({"train_seconds": 12.0}))
    (m / "train_curve.csv").write_text("step,loss,loss_ce\n1,3.0,2.0\n2,2.0,1.5\n")
    (m / "benchmark.json").write_text(json.dumps({
        "trainable": 1000, "gpu_hours": 0.0, "train_iterations": 2, "small_vocab": "small", "large_vocab": "large",
        "vocab_sizes": {"small": 150, "large": 847}, "device": "cpu",
        "inference": {"small": {"images_per_s": 10.0, "peak_memory_mb": 100.0},
                      "large": {"images_per_s": 9.0, "peak_memory_mb": 110.0}}}))
    out = tmp_path / "reports"
    result = build_report(m, out, "toy")
    index = (out / "README.md").read_text()
    assert "Table I" in index and "Table II" in index and "2.42" in index  # the paper's ADE-847 FPS sits beside ours
    t1 = (out / "table1.md").read_text()
    assert "20.5" in t1 and "30.0" in t1 and "n/a" in t1
    assert "\\begin{table}" in (out / "table1.tex").read_text()
    assert "847" in (out / "inference.md").read_text()
    t2 = (out / "table2.md").read_text()
    import re
    assert re.search(r"\| this run .*\| 9\.00 +\| 10\.0 +\| 110 +\| 100 ", t2)  # large then small vocabulary
    toy = (out / "toy.md").read_text()
    assert "baseline (untrained)" in toy and "10.0" in toy
    assert set(result["plots"]) == {"train_curve.png", "per_class_iou_toy_open.png", "per_class_iou_ade20k_150.png"}
    assert all((out / p).stat().st_size > 1000 for p in result["plots"])
    assert not (tmp_path / "reports.partial").exists()
