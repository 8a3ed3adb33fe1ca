import json
import shutil
import subprocess

import pytest

from pipeline.report.build import build_report
from pipeline.report.table_format import fmt, latex_escape
from pipeline.report.table_inputs import paper_tables

BASE = {"PQ": 1.0, "PQ_seen": 1.0, "PQ_unseen": 2.0, "mIoU": 3.0, "mIoU_seen": 3.0, "mIoU_unseen": 4.0}


def _eval(pq, miou, unseen_flags, images=10, skipped=0, panoptic=True):
    m = {"mIoU": miou, "mIoU_seen": miou + 1, "mIoU_unseen": 0.0, "images": images, "skipped_images": skipped,
         "baseline": dict(BASE), "oracle_classifier": {"PQ": 50.0, "mIoU": 60.0},
         "oracle_generator": {"PQ": 30.0, "mIoU": 25.0},
         "per_class": {"class": ["a", "b"], "IoU": [10.0, 20.0], "IoU_baseline": [1.0, 5.0], "unseen": unseen_flags}}
    if panoptic:
        m.update({"PQ": pq, "PQ_seen": pq, "PQ_unseen": 0.0})
    return m


@pytest.fixture
def metrics(tmp_path):
    m = tmp_path / "metrics"
    (m / "eval").mkdir(parents=True)
    (m / "sweeps").mkdir()
    evals = {"toy_val": _eval(14.46, 14.6, [False, False], skipped=2),
             "toy_open_large": _eval(None, 11.2, [False, True], panoptic=False),
             "ade20k_150": _eval(29.04, 36.55, [False, True]), "ade20k_847": _eval(None, 15.0, [True, True],
                                                                                  panoptic=False)}
    for name, v in evals.items():
        (m / "eval" / f"{name}.json").write_text(json.dumps(v))
    (m / "train_curve.csv").write_text("step,loss,loss_ce\n1,3.0,2.0\n2,2.0,1.5\n")
    (m / "benchmark.json").write_text(json.dumps({
        "trainable": 25_300_000, "gpu_hours": 40.0, "train_iterations": 25000, "device": "cuda:0",
        "precision": "fp16", "vocab_sizes": {"ade20k_150": 150, "ade20k_847": 847},
        "inference": {"ade20k_150": {"images_per_s": 2.71, "peak_memory_mb": 10240.0},
                      "ade20k_847": {"images_per_s": 2.5, "peak_memory_mb": 11264.0}}}))
    sweep = {"grid": "modules", "paper_table": "IV(a)", "reference_row": "+ FiSeR + TeVA", "benchmarks": ["ade20k_150"],
             "seeds": [0, 1], "wall_seconds": 12.0, "failed_trials": 1,
             "rows": [{"label": "baseline (f_q tuned, frozen generator)", "overrides": {"model.fiser.enabled": False},
                       "n": 2, "mean": {"ade20k_150/PQ": 20.0, "ade20k_150/SQ": 70.0, "train/loss": 1.2},
                       "std": {"ade20k_150/PQ": 0.5},
                       "values": {"ade20k_150/PQ": [19.5, 20.5]}, "failures": []},
                      {"label": "+ FiSeR + TeVA", "overrides": {}, "n": 1, "mean": {"ade20k_150/PQ": 23.0},
                       "std": {"ade20k_150/PQ": 0.0}, "values": {"ade20k_150/PQ": [23.0]},
                       "failures": [{"seed": 1, "error": "OOM"}]}]}
    (m / "sweeps" / "modules.json").write_text(json.dumps(sweep))
    iters = {"grid": "iterations", "paper_table": "Fig. 9", "reference_row": "1000", "benchmarks": ["toy_open"],
             "seeds": [0], "wall_seconds": 3.0, "failed_trials": 0,
             "rows": [{"label": str(x), "x": x, "overrides": {"train.iterations": x}, "n": 1,
                       "mean": {"toy_open/PQ": 5.0 + x / 100}, "std": {}, "values": {}, "failures": []}
                      for x in (10, 100, 1000)]}
    (m / "sweeps" / "iterations.json").write_text(json.dumps(iters))
    return m


def test_paper_tables_hold_every_peer_and_this_run_with_deltas(metrics, tmp_path):
    out = tmp_path / "reports"
    result = build_report(metrics, out, "paper", expected=["ade20k_150", "ade20k_847", "mapillary_vistas"],
                          train_benchmark="coco_panoptic_train")
    t1 = (out / "table1.md").read_text()
    for peer in paper_tables()["table1_open_vocab_panoptic"]["rows"]:
        assert f"| {peer}" in t1
    assert "| FOV-Seg (paper) | 56.6 | 67.4 | 28.4 | 37.1 | 19.1 | 30.1 | 16.5 | 62.5 | 23.9 |" in t1
    assert "| this run | n/a | n/a | 29.0 | 36.5 | n/a | n/a | 15.0 |" in t1
    assert "| Δ this run − FOV-Seg (paper) | n/a | n/a | +0.6 | -0.6 | n/a | n/a | -1.5 |" in t1
    t2 = (out / "table2.md").read_text()
    assert "| ODISE | 4760.0 | 369.0 | 28.0 | 0.4 | 23.2 | 0.4 | 23.2 | 22.6 | 29.9 |" in t2
    assert "| this run | 40.0 | 25.0 | 25.3 | 2.5 | 11.0 | 2.7 | 10.0 | 29.0 | 36.5 |" in t2  # memory in GB
    assert "device cuda:0, precision fp16, classifier only" in t2
    bench = json.loads((metrics / "benchmark.json").read_text())
    bench["end_to_end"] = {"ade20k_150": {"images_per_s": 2.04, "peak_memory_mb": 12288.0},
                           "ade20k_847": {"images_per_s": 1.96, "peak_memory_mb": 12800.0}}
    bench["scope"] = "end to end (generator + classifier + panoptic merging)"
    (metrics / "benchmark.json").write_text(json.dumps(bench))
    build_report(metrics, out, "paper", expected=["ade20k_150", "ade20k_847", "mapillary_vistas"],
                 train_benchmark="coco_panoptic_train")
    t2 = (out / "table2.md").read_text()
    assert "| this run | 40.0 | 25.0 | 25.3 | 2.0 | 12.5 | 2.0 | 12.0 |" in t2 and "end to end (generator" in t2
    t3 = (out / "table3.md").read_text()
    assert "CAT-Seg | 37.9 | 16.0 | 63.3 | 23.8" in t3 and "this run" not in t3.split("\n\n")[1]
    index = (out / "README.md").read_text()
    assert "| mapillary_vistas | missing (no metrics/eval file) |" in index
    assert result["missing"] == ["mapillary_vistas"]
    assert "| toy_val |" not in index  # another preset's benchmark file: not this run's
    assert "inconsistent" in (out / "fig2.md").read_text() and "| 28.4 | 31.9 |" in (out / "fig2.md").read_text()
    build_report(metrics, out, "paper", expected=["ade20k_150"], train_benchmark="coco_stuff_train")
    t2 = (out / "table2.md").read_text()  # a COCO-Stuff run: no A-150 accuracy beside the panoptic-trained rows
    assert "| this run | 40.0 | 25.0 | 25.3 | 2.0 | 12.5 | 2.0 | 12.0 | n/a | n/a |" in t2
    assert "trained on coco_stuff_train, not COCO-Panoptic" in t2


def test_toy_unseen_and_semantic_pq_are_na(metrics, tmp_path):
    out = tmp_path / "reports"
    build_report(metrics, out, "toy", train_benchmark="toy_train")
    assert "| toy_val | evaluated | 10 | 2 |" in (out / "README.md").read_text()  # skipped images shown
    toy = (out / "toy.md").read_text()
    assert "| toy_val | trained | 14.5 | 14.5 | n/a | 14.6 | 15.6 | n/a |" in toy
    assert "| toy_open_large | trained | n/a | n/a | n/a | 11.2 | 12.2 | 0.0 |" in toy
    assert "| ade20k_847 | trained | n/a | n/a | n/a | 15.0 | n/a | 0.0 |" in toy  # no seen classes either


def test_table4_and_fig9_from_sweep_files(metrics, tmp_path):
    out = tmp_path / "reports"
    result = build_report(metrics, out, "paper", train_benchmark="coco_panoptic_train")
    t4 = (out / "table4_modules.md").read_text()
    assert "| baseline (f_q tuned, frozen generator) | 2 | 20.0 ± 0.5 | -3.0 | 24.6 | -3.2 | 0 |" in t4
    assert "| + FiSeR + TeVA (ref) | 1 | 23.0 | +0.0 | 27.8 | +0.0 | 1 |" in t4
    assert "train/loss" not in t4 and "SQ" not in t4  # the paper's metric only; the JSON keeps the rest
    assert "figures/fig9_iterations.png" in result["plots"]
    assert (out / "figures" / "fig9_iterations.png").stat().st_size > 1000
    assert {"figures/fig2_oracles.png", "figures/fig3_gain_ade20k_150.png", "figures/train_curve.png"} <= set(
        result["plots"])
    assert {p.suffix for p in (out / "figures").iterdir()} == {".png"}
    assert not (tmp_path / "reports.partial").exists()


def test_table4_delta_is_paired_by_seed(metrics, tmp_path):
    """Rows that vary together across seeds: the per-seed difference has a small spread although each row's
    own std is large; a seed only one row finished is left out of the pairing."""
    sweep = json.loads((metrics / "sweeps" / "modules.json").read_text())
    sweep["reference_row"] = "baseline (f_q tuned, frozen generator)"
    base, both = sweep["rows"]
    base.update(seeds=[0, 1, 2], n=3, values={"ade20k_150/PQ": [19.0, 23.2, 30.0]},
                mean={"ade20k_150/PQ": 24.07}, std={"ade20k_150/PQ": 5.56})
    both.update(seeds=[0, 1], n=2, values={"ade20k_150/PQ": [20.0, 24.0]}, mean={"ade20k_150/PQ": 22.0},
                std={"ade20k_150/PQ": 2.83})
    (metrics / "sweeps" / "modules.json").write_text(json.dumps(sweep))
    out = tmp_path / "reports"
    build_report(metrics, out, "paper", train_benchmark="coco_panoptic_train")
    t4 = (out / "table4_modules.md").read_text()
    assert "| + FiSeR + TeVA | 2 | 22.0 ± 2.8 | +0.9 ± 0.1 |" in t4  # (1.0, 0.8) on seeds 0 and 1
    assert "| baseline (f_q tuned, frozen generator) (ref) | 3 | 24.1 ± 5.6 | +0.0 |" in t4


def test_latex_escapes_and_compiles(metrics, tmp_path):
    assert latex_escape("PQ_seen 5% & #1") == r"PQ\_seen 5\% \& \#1"
    assert fmt(None) == "n/a" and fmt(2.36) == "2.4" and fmt(0.04, signed=True) == "+0.0"
    out = tmp_path / "reports"
    build_report(metrics, out, "toy", train_benchmark="toy_train")
    texs = sorted(out.glob("*.tex"))
    body = "\n".join(p.read_text() for p in texs)
    assert r"\toprule" in body and r"PQ\_unseen" in body and "PQ_unseen" not in body.replace(r"PQ\_unseen", "")
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex here: structural checks above only")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
                   "\\usepackage{graphicx}\n\\begin{document}\n" +
                   "".join(f"\\input{{{p}}}\n" for p in texs) +
                   "\\end{document}\n")
    res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
