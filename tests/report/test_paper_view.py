"""The report reads like the paper: toy analogues named in Tables I/II, Table IV in the paper's order, a
provenance line under every table, the recipe change paired by seed, inference classifier-only and end to end;
and the experiment table of `fovseg runs` from `dvc exp show --json`."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.report.build import build_report, load_benchmark
from pipeline.report.provenance import dvc_run_started
from pipeline.report.runs import dvc_exp_show, experiments_table

RUN_START = 1_800_000_000.0  # this dvc repro started here (2027-01-15T08:00:00Z)
NOW = "2027-01-15T08:05:00Z"  # produced by this run
EARLIER = "2026-12-01T10:00:00Z"  # produced by an earlier run
SHA_NOW, SHA_OLD = "1" * 40, "abcdef0123456789" + "0" * 24


def _produced(utc, commit, preset="toy"):
    return {"produced": {"utc": utc, "commit": commit, "preset": preset}}


def _eval(pq, miou, unseen_flags, panoptic=True, unseen=True):
    m = {"mIoU": miou, "mIoU_seen": miou + 1, "images": 8, "skipped_images": 0,
         "baseline": {"PQ": 1.0, "mIoU": 2.0}, "oracle_classifier": {"PQ": 50.0, "mIoU": 60.0},
         "oracle_generator": {"PQ": 30.0, "mIoU": 25.0},
         "per_class": {"class": ["a", "b"], "IoU": [10.0, 20.0], "IoU_baseline": [1.0, 5.0], "unseen": unseen_flags}}
    if unseen:
        m["mIoU_unseen"] = miou - 1
    if panoptic:
        m.update({"PQ": pq, "PQ_seen": pq + 1})
        if unseen:
            m["PQ_unseen"] = pq - 2
    return m


def _sweep(grid, paper_table, rows, preset="toy", produced=None):
    s = {"grid": grid, "paper_table": paper_table, "reference_row": rows[0][0], "preset": preset,
         "benchmarks": ["toy_open"], "seeds": [0, 1, 2], "failed_trials": 0,
         "rows": [{"label": label, "n": len(pq), "seeds": list(range(len(pq))),
                   "mean": {"toy_open/PQ": sum(pq) / len(pq), "toy_open/PQ_unseen": sum(pq) / len(pq) - 3},
                   "std": {}, "values": {"toy_open/PQ": pq, "toy_open/PQ_unseen": [v - 3 for v in pq]},
                   "failures": [], **({"x": float(label)} if label.isdigit() else {})} for label, pq in rows]}
    if produced:
        s["produced"] = produced
    return s


@pytest.fixture
def toy_metrics(tmp_path):
    """A toy run in the new layout: DVC metrics without timings, timings and `produced` in metrics/timings/."""
    m = tmp_path / "metrics"
    for d in ("eval", "sweeps", "timings/eval"):
        (m / d).mkdir(parents=True)
    evals = {"toy_val": _eval(25.6, 27.6, [False, False], unseen=False),  # no unseen classes: no *_unseen key
             "toy_open": _eval(31.1, 33.7, [False, True]),
             "toy_open_large": _eval(None, 20.0, [False, True], panoptic=False)}
    for name, v in evals.items():
        (m / "eval" / f"{name}.json").write_text(json.dumps(v))
        (m / "timings" / "eval" / f"{name}.json").write_text(json.dumps(
            {**_produced(NOW, SHA_NOW), "seconds_per_image": 0.004}))
    (m / "train.json").write_text(json.dumps({"trainable": 164914, "iterations": 1000, "loss": 2.0}))
    (m / "timings" / "train.json").write_text(json.dumps(
        {**_produced(NOW, SHA_NOW), "train_seconds": 72.6, "it_per_s": 13.8, "device": "cpu"}))
    (m / "train_curve.csv").write_text("step,loss\n1,3.0\n2,2.0\n")
    (m / "benchmark.json").write_text(json.dumps({
        "trainable": 164914, "train_iterations": 1000, "trainable_params_paper": 93617, "n_proposals": 100,
        "vocab_sizes": {"toy_val": 30, "toy_open": 24, "toy_open_large": 40},
        "small_vocab": "toy_open", "large_vocab": "toy_open_large",
        "accounting": {"paper_preset": {"model": "ViT-L-14-336-quickgelu", "image_size": 896, "teva_width": 0,
                                        "teva_shared": False, "trainable_kept": 25_200_000,
                                        "vocab_flops_share": {"150": 0.0009, "847": 0.005}}}}))
    (m / "timings" / "benchmark.json").write_text(json.dumps({
        **_produced(EARLIER, SHA_OLD), "device": "cpu", "precision": "fp32",
        "scope": "end to end (generator + classifier + panoptic merging), text embeddings cached",
        "inference": {"toy_val": {"images_per_s": 9.2, "peak_memory_mb": 900.0},
                      "toy_open": {"images_per_s": 12.5, "peak_memory_mb": 900.0},
                      "toy_open_large": {"images_per_s": 10.7, "peak_memory_mb": 900.0}},
        "end_to_end": {"toy_open": {"images_per_s": 22.2, "peak_memory_mb": 975.0},
                       "toy_open_large": {"images_per_s": 0.69, "peak_memory_mb": 987.0}},
        "large_vs_small_throughput": 0.85}))
    grids = {  # written in alphabetical order on disk; the report must not render them so
        "adapter_layers": _sweep("adapter_layers", "IV(f)", [("2", [25.0, 26.0, 25.5]), ("3", [28.0, 29.0, 28.5])]),
        "data_fraction": _sweep("data_fraction", "Fig. 9 (data fraction)", [("100", [25.0, 26.0, 25.5]),
                                                                            ("20", [24.0, 26.0, 25.0])]),
        "fiser_candidates": _sweep("fiser_candidates", "", [("image", [25.0, 26.0, 25.5]),
                                                            ("all", [25.0, 25.0, 25.0])]),
        "iterations": _sweep("iterations", "Fig. 9 (iterations)", [("1000", [30.0, 31.0, 30.5]),
                                                                    ("10", [7.0, 8.0, 7.5])]),
        "modules": _sweep("modules", "IV(a)", [("baseline (f_q tuned, frozen generator)", [28.5, 29.0, 28.0]),
                                               ("+ FiSeR + TeVA", [29.0, 30.0, 29.5])]),
        "modules_maskclip_recipe": _sweep("modules_maskclip_recipe", "",
                                          [("baseline (f_q tuned, frozen generator)", [26.0, 27.0, 25.0]),
                                           ("+ FiSeR + TeVA", [27.0, 28.5, 25.5])],
                                          produced={"utc": NOW, "commit": SHA_NOW, "preset": "toy"}),
        "modules_earlier_recipe": _sweep("modules_earlier_recipe", "",
                                         [("baseline (f_q tuned, frozen generator)", [28.0, 29.5, 27.5]),
                                          ("+ FiSeR + TeVA", [27.0, 29.0, 26.5])],
                                         produced={"utc": EARLIER, "commit": SHA_OLD, "preset": "toy"}),
        "recipe": _sweep("recipe", "", [("MaskCLIP recipe", [24.0, 24.5, 24.2]),
                                        ("earlier recipe", [27.0, 27.9, 27.3])]),
        "teva_parts": _sweep("teva_parts", "IV(i)", [("baseline", [25.0, 26.0, 25.5]),
                                                     ("+ TeVA (both)", [25, 26, 26])]),
        "lora": _sweep("lora", "IV(g)", [("tune f_q", [25.0, 26.0, 25.5])], preset="paper"),  # another preset's
    }
    for g, s in grids.items():
        (m / "sweeps" / f"{g}.json").write_text(json.dumps(s))
    return m


def _build(metrics, tmp_path, **kw):
    out = tmp_path / "reports"
    kw = {"preset": "toy", "expected": ["toy_val", "toy_open", "toy_open_large"], "train_benchmark": "toy_train",
          "run_started": RUN_START, **kw}
    result = build_report(metrics, out, kw.pop("preset"), **kw)
    return out, result


def _row(md: str, start: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {start}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table1_on_the_toy_shows_the_toy_analogues_named_and_no_delta(toy_metrics, tmp_path):
    out, _ = _build(toy_metrics, tmp_path)
    t1 = (out / "table1.md").read_text()
    row = _row(t1, "this run (toy:")
    assert row[0] == "this run (toy: COCO → toy_val; A-150, MV, PC-59 → toy_open; A-847, PC-459 → toy_open_large)"
    # COCO PQ/mIoU <- toy_val, A-150 PQ/mIoU <- toy_open, MV <- toy_open, A-847 <- toy_open_large, PC-59, PC-459
    assert row[1:] == ["25.6", "27.6", "31.1", "33.7", "31.1", "33.7", "20.0", "33.7", "20.0"]
    assert "Δ this run" not in t1 and "n/a | n/a | n/a | n/a | n/a" not in t1.split("FOV-Seg (paper)")[1]
    assert "other benchmarks than the paper's" in t1
    t3 = (out / "table3.md").read_text()
    assert "this run" not in t3.split("\n\n")[1]  # trained on the toy world, not COCO-Stuff


def test_table1_with_paper_benchmarks_keeps_the_delta_row(toy_metrics, tmp_path):
    (toy_metrics / "eval" / "ade20k_150.json").write_text(json.dumps(_eval(29.04, 36.55, [False, True])))
    out, _ = _build(toy_metrics, tmp_path, preset="paper", expected=["ade20k_150"],
                    train_benchmark="coco_panoptic_train")
    t1 = (out / "table1.md").read_text()
    assert "| this run | n/a | n/a | 29.0 | 36.5 | n/a |" in t1 and "this run (toy" not in t1
    assert "| Δ this run − FOV-Seg (paper) | n/a | n/a | +0.6 | -0.6 |" in t1


def test_table2_on_the_toy_has_its_own_figures_and_no_paper_deltas(toy_metrics, tmp_path):
    out, _ = _build(toy_metrics, tmp_path)
    t2 = (out / "table2.md").read_text()
    assert "Δ this run" not in t2 and "-45" not in t2 and "-24.9" not in t2
    row = _row(t2, "this run (toy:")
    assert row[0] == "this run (toy: A-847 → toy_open_large, A-150 → toy_open; cpu)"
    # no GPU-hours on CPU; 1k iterations; 0.09 M kept; end-to-end FPS / GB of the two vocabularies; toy_open PQ/mIoU
    assert row[1:] == ["n/a", "1.0", "0.1", "0.7", "1.0", "22.2", "1.0", "31.1", "33.7"]
    assert "trained 73 s on cpu" in t2 and "no Δ row" in t2
    index = (out / "README.md").read_text()
    table2_section = index[index.index("## Table II"):index.index("## Table III")]
    assert "### Table II accounting" in table2_section and "ViT-L-14-336-quickgelu at 896 px" in table2_section


def test_inference_table_is_headed_and_shows_classifier_only_and_end_to_end(toy_metrics, tmp_path):
    out, _ = _build(toy_metrics, tmp_path)
    index = (out / "README.md").read_text()
    assert "## Inference per benchmark: classifier only and end to end" in index
    inf = (out / "inference.md").read_text()
    assert "| toy_open | 24 | 12.5 | 0.9 | 22.2 | 1.0 |" in inf
    assert "| toy_val | 30 | 9.2 | 0.9 | not measured | not measured |" in inf
    assert "end-to-end images/s" in inf and "classifier images/s" in inf


def test_table4_parts_in_the_papers_order_and_fig9_headings(toy_metrics, tmp_path):
    out, result = _build(toy_metrics, tmp_path)
    index = (out / "README.md").read_text()
    heads = [h for h in re.findall(r"^### (.+)$", index, re.M) if not h.startswith(("Table II", "Recipe"))]
    assert heads == ["Table IV(a): which modules help (FiSeR, TeVA) (grid modules)",
                     "Table IV(f): Distribution Adapter layers (grid adapter_layers)",
                     "Table IV(i): TeVA's two cross-attentions (grid teva_parts)",
                     "Fig. 9: iterations (grid iterations)", "Fig. 9: data fraction (grid data_fraction)",
                     "Beyond the paper: FiSeR's candidate classes (eq. 6) (grid fiser_candidates)",
                     "Beyond the paper: MaskCLIP's recipe choices, one at a time (grid recipe)",
                     "Beyond the paper: Table IV(a) under the earlier recipe (grid modules_earlier_recipe)",
                     "Beyond the paper: Table IV(a) under MaskCLIP's recipe (the paper presets') "
                     "(grid modules_maskclip_recipe)"]
    assert "Table Fig." not in index and "Table Fig." not in "".join(p.read_text() for p in out.glob("*.md"))
    assert result["sweeps"][:3] == ["modules", "adapter_layers", "teva_parts"]
    # the recipe grid: a normal table, paired deltas to its reference row
    recipe = (out / "table4_recipe.md").read_text()
    assert "| MaskCLIP recipe (ref) | 3 |" in recipe and "| earlier recipe | 3 | 27.4 | +3.2 ± 0.2 |" in recipe


def test_a_sweep_of_another_preset_is_not_rendered_as_this_runs(toy_metrics, tmp_path):
    out, result = _build(toy_metrics, tmp_path)
    index = (out / "README.md").read_text()
    assert "`metrics/sweeps/lora.json` holds the paper preset's results, not this run's (toy): not rendered." in index
    assert not (out / "table4_lora.md").exists() and result["skipped_sweeps"] == ["lora"]


def test_recipe_change_before_after_paired_by_seed(toy_metrics, tmp_path):
    out, _ = _build(toy_metrics, tmp_path)
    t = (out / "recipe_change.md").read_text()
    assert _row(t, "row") == ["row", "paired seeds", "before toy_open/PQ", "after toy_open/PQ", "Δ toy_open/PQ",
                              "before toy_open/PQ_unseen", "after toy_open/PQ_unseen", "Δ toy_open/PQ_unseen"]
    # before (28.0, 29.5, 27.5), after (26.0, 27.0, 25.0): per seed -2.0, -2.5, -2.5 -> -2.33 ± 0.29
    assert _row(t, "baseline (f_q tuned") == ["baseline (f_q tuned, frozen generator)", "3", "28.3", "26.0",
                                             "-2.3 ± 0.3", "25.3", "23.0", "-2.3 ± 0.3"]
    # (27.0, 29.0, 26.5) -> (27.0, 28.5, 25.5): 0, -0.5, -1.0 -> -0.5 ± 0.5
    assert _row(t, "+ FiSeR + TeVA")[2:5] == ["27.5", "27.0", "-0.5 ± 0.5"]
    index = (out / "README.md").read_text()
    assert index.index("### Recipe change") > index.index("(grid modules_maskclip_recipe)")
    assert "`metrics/sweeps/modules_maskclip_recipe.json` regenerated by this run" in t
    assert "`metrics/sweeps/modules_earlier_recipe.json` from an earlier run: 2026-12-01T10:00:00Z, commit abcdef0" in t


def test_recipe_change_needs_both_files_of_the_same_preset(toy_metrics, tmp_path):
    before = json.loads((toy_metrics / "sweeps" / "modules_earlier_recipe.json").read_text())
    (toy_metrics / "sweeps" / "modules_earlier_recipe.json").write_text(json.dumps({**before, "preset": "paper"}))
    out, _ = _build(toy_metrics, tmp_path)
    assert not (out / "recipe_change.md").exists() and "Recipe change" not in (out / "README.md").read_text()
    (toy_metrics / "sweeps" / "modules_earlier_recipe.json").unlink()
    out, _ = _build(toy_metrics, tmp_path)
    assert not (out / "recipe_change.md").exists()


def test_every_table_says_where_its_numbers_come_from(toy_metrics, tmp_path):
    out, _ = _build(toy_metrics, tmp_path)
    for md in out.glob("*.md"):
        if md.name != "README.md":
            assert "Produced: " in md.read_text(), md.name
    t1 = (out / "table1.md").read_text()
    assert ("Produced: `metrics/eval/toy_open.json`, `metrics/eval/toy_open_large.json`, `metrics/eval/toy_val.json` "
            f"regenerated by this run ({NOW}, commit 1111111).") in t1
    inf = (out / "inference.md").read_text()
    assert f"Produced: `metrics/benchmark.json` from an earlier run: {EARLIER}, commit abcdef0." in inf
    t2 = (out / "table2.md").read_text()  # mixed: the benchmark stage's file is older than this run's training
    assert "`metrics/benchmark.json` from an earlier run: 2026-12-01T10:00:00Z, commit abcdef0" in t2
    assert f"`metrics/train.json`, `metrics/eval/toy_open.json` regenerated by this run ({NOW}, commit 1111111)" in t2
    adapter = (out / "table4_adapter_layers.md").read_text()  # no `produced` block: said so
    assert "Produced: `metrics/sweeps/adapter_layers.json` from an earlier run: not recorded." in adapter
    assert "Produced: the paper's numbers only" in (out / "table3.md").read_text()
    assert "This `dvc repro` started 2027-01-15T08:00:00Z" in (out / "README.md").read_text()


def test_outside_dvc_nothing_is_marked_regenerated(toy_metrics, tmp_path):
    out, _ = _build(toy_metrics, tmp_path, run_started=None)
    body = "".join(p.read_text() for p in out.glob("*.md"))
    assert "regenerated by this run (" not in body and f"from an earlier run: {NOW}, commit 1111111" in body
    assert "Built outside `dvc repro`" in (out / "README.md").read_text()


def test_absent_unseen_is_na_and_a_real_zero_stays(toy_metrics, tmp_path):
    m = json.loads((toy_metrics / "eval" / "toy_open.json").read_text())
    m["PQ_unseen"] = 0.0  # a real 0.0 on a benchmark with unseen classes
    (toy_metrics / "eval" / "toy_open.json").write_text(json.dumps(m))
    out, _ = _build(toy_metrics, tmp_path)
    toy = (out / "toy.md").read_text()
    assert "| toy_val | trained | 25.6 | 26.6 | n/a | 27.6 | 28.6 | n/a |" in toy  # no key: n/a
    assert "| toy_open | trained | 31.1 | 32.1 | 0.0 | 33.7 | 34.7 | 32.7 |" in toy


def test_benchmark_figures_are_read_from_the_timings_files(toy_metrics, tmp_path):
    bench = load_benchmark(toy_metrics)
    assert bench["end_to_end"]["toy_open"]["images_per_s"] == 22.2 and bench["train_seconds"] == 72.6
    assert "gpu_hours" not in bench and "produced" not in bench and bench["accounting"]
    # the earlier layout (timings inside benchmark.json, 0.0 GPU-hours on CPU) still reads, without the fake 0.0
    old = {**json.loads((toy_metrics / "benchmark.json").read_text()), "gpu_hours": 0.0, "device": "cpu",
           "train_seconds": 70.0, "inference": {"toy_open": {"images_per_s": 1.0}}}
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "benchmark.json").write_text(json.dumps(old))
    bench = load_benchmark(legacy)
    assert "gpu_hours" not in bench and bench["train_seconds"] == 70.0 and bench["inference"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_dvc_run_started_is_the_first_ancestor_outside_the_stage_environment():
    assert dvc_run_started({}) is None  # not under DVC
    t0 = time.time()
    code = "from pipeline.report.provenance import dvc_run_started; print(dvc_run_started())"
    # bash stands in for DVC: it sets DVC_STAGE for its child only, as DVC does for a stage's command
    res = subprocess.run(["bash", "-c", f"DVC_STAGE=report {sys.executable} -c '{code}'; true"],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                         env={k: v for k, v in os.environ.items() if k != "DVC_STAGE"})
    started = float(res.stdout.strip())
    assert t0 - 2 <= started <= time.time() + 1, (t0, started)


# ----------------------------------------------------------------------------- fovseg runs
def _state(rev, params, metrics, ts="2026-12-07T10:00:00", name=None):
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "timestamp": ts, "params": {"params.yaml": {"data": params}},
                     "metrics": {k: {"data": v} for k, v in metrics.items()}, "deps": {}, "outs": {}, "meta": {}}}


def _canned_exp_show():
    params = {"seed": 0, "preset": "toy", "train": {"lr": 0.001, "iterations": 1000},
              "model": {"fiser": {"enabled": True}}, "data": {"eval_benchmarks": ["toy_val", "toy_open"]}}

    def metrics(pq):
        return {"metrics/eval/toy_val.json": {"PQ": pq, "mIoU": pq + 2, "SQ": 60.0, "baseline": {"PQ": 7.0}},
                "metrics/eval/toy_open.json": {"PQ": pq + 5, "PQ_unseen": pq + 3, "mIoU": pq + 7,
                                               "mIoU_unseen": pq + 4},
                "metrics/eval/toy_open_large.json": {"mIoU": 20.04, "mIoU_unseen": 18.8},
                "metrics/train.json": {"loss": 2.0}, "metrics/benchmark.json": {"trainable": 164914}}

    base = _state("c11d38becd5fe51f018691d19532abde7b236257", params, metrics(25.64), name="main")
    lr = json.loads(json.dumps(params))
    lr["train"]["lr"] = 0.0005
    nofiser = json.loads(json.dumps(params))
    nofiser["model"]["fiser"]["enabled"] = False
    base["experiments"] = [
        {"name": "lr-half", "executor": None, "revs": [_state("182f4230" + "0" * 32, lr, metrics(24.0))]},
        {"name": "no-fiser", "executor": {"state": "success", "name": None, "local": None},
         "revs": [_state("c1fa81a0" + "0" * 32, nofiser, metrics(23.0))]},
        {"name": "queued-one", "executor": {"state": "queued"}, "revs": [{"rev": "d" * 40, "name": None,
                                                                         "data": None, "error": None}]}]
    workspace = _state("workspace", params, metrics(25.64), ts=None)
    return [workspace, base]


def test_experiments_table_has_the_headline_columns_and_only_the_params_that_differ():
    text = experiments_table(_canned_exp_show())
    header = _row(text, "experiment")
    assert header == ["experiment", "rev", "created", "toy_val PQ", "toy_val mIoU", "toy_open PQ", "toy_open PQ_unseen",
                      "toy_open mIoU", "toy_open mIoU_unseen", "toy_open_large mIoU", "toy_open_large mIoU_unseen",
                      "train.lr", "model.fiser.enabled"]
    assert _row(text, "workspace") == ["workspace", "workspace", "n/a", "25.6", "27.6", "30.6", "28.6", "32.6", "29.6",
                                       "20.0", "18.8", "0.001", "True"]
    assert _row(text, "main")[:4] == ["main", "c11d38b", "2026-12-07 10:00", "25.6"]
    assert _row(text, "lr-half")[-2:] == ["0.0005", "True"] and _row(text, "no-fiser")[-2:] == ["0.001", "False"]
    assert _row(text, "queued-one")[3:] == ["n/a"] * 10  # no results yet: n/a, never 0.0
    assert "SQ" not in text and "baseline" not in text and "seed" not in text  # headline only; unchanged params out


def test_experiments_table_runs_dvc_exp_show_without_a_shell(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, json.dumps(_canned_exp_show()), "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    text = experiments_table(repo=tmp_path, dvc_args=["-A"], tablefmt="simple")
    (cmd, kw), = calls
    assert cmd == [sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"] and not kw.get("shell")
    assert kw["cwd"] == str(tmp_path) and "toy_open PQ_unseen" in text
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "not a DVC repo"))
    with pytest.raises(RuntimeError, match="not a DVC repo"):
        dvc_exp_show(tmp_path)
