"""Report tables and plots, regenerated from the metrics JSONs (``reports/`` is never edited by hand).

Table I (PQ/mIoU per benchmark) and Table II (efficiency) put the paper's numbers beside this run's;
the toy table shows seen vs unseen classes for the trained model and the untrained baseline (the same
classifier before training). Markdown and LaTeX for each, one entry page, PNG plots.
"""
from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TABLE1_COLUMNS = [  # (column title, benchmark, metric)
    ("A-847 mIoU", "ade20k_847", "mIoU"), ("PC-459 mIoU", "pascal_ctx_459", "mIoU"),
    ("A-150 PQ", "ade20k_150", "PQ"), ("A-150 mIoU", "ade20k_150", "mIoU"), ("PC-59 mIoU", "pascal_ctx_59", "mIoU"),
    ("MV PQ", "mapillary_vistas", "PQ"), ("COCO PQ", "coco_panoptic_val", "PQ"),
]
PAPER_KEYS = {"A-847 mIoU": "ade20k_847", "PC-459 mIoU": "pascal_ctx_459", "A-150 PQ": "ade20k_150_PQ",
              "A-150 mIoU": "ade20k_150", "PC-59 mIoU": "pascal_ctx_59", "MV PQ": "mapillary_vistas_PQ",
              "COCO PQ": "coco_panoptic_val_PQ"}
TOY_COLUMNS = ("PQ", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen")
MIOU_NOTE = ("mIoU follows detectron2's current formula: per-class IoU = TP/(TP+FP+FN), averaged over classes "
             "with ground-truth pixels; the ignore label (255, or 65535 for ADE-847/PC-459) is excluded. "
             "PQ follows the COCO panoptic API (IoU > 0.5 matching, void and crowd handling).")


def paper_numbers() -> dict:
    return json.loads((resources.files("pipeline") / "paper_numbers.json").read_text())


def load_eval(metrics_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((metrics_dir / "eval").glob("*.json"))}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "n/a"
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 100:
            return str(int(v))
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table1(evals: dict[str, dict]) -> pd.DataFrame:
    rows = {name: {col: vals.get(PAPER_KEYS[col]) for col, _, _ in TABLE1_COLUMNS}
            for name, vals in paper_numbers()["table1"].items()}
    rows["this run"] = {col: evals.get(b, {}).get(m) for col, b, m in TABLE1_COLUMNS}
    return pd.DataFrame(rows).T


def table2(bench: dict | None, train: dict | None) -> pd.DataFrame:
    rows = {name: dict(vals) for name, vals in paper_numbers()["table2"].items()}
    if bench:
        inf = bench["inference"]
        small, large = bench.get("small_vocab"), bench.get("large_vocab")
        small, large = (small if small in inf else None), (large if large in inf else None)
        rows["this run"] = {
            "gpu_hours": bench.get("gpu_hours"), "iterations": bench.get("train_iterations"),
            "trainable_params_M": bench["trainable"] / 1e6,
            "fps_ade20k_847": inf[large]["images_per_s"] if large else None,
            "fps_ade20k_150": inf[small]["images_per_s"] if small else None,
            "memory_ade20k_847_MB": inf[large]["peak_memory_mb"] if large else None,
            "memory_ade20k_150_MB": inf[small]["peak_memory_mb"] if small else None,
        }
        rows["this run"]["train_wall_s"] = (train or {}).get("train_seconds")
    return pd.DataFrame(rows).T


def inference_table(bench: dict | None) -> pd.DataFrame:
    """Images/s and peak memory for every evaluated benchmark."""
    if not bench:
        return pd.DataFrame()
    rows = {name: {"classes": (bench.get("vocab_sizes") or {}).get(name), "images/s": v["images_per_s"],
                   "peak memory (MB)": v["peak_memory_mb"]} for name, v in bench["inference"].items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def toy_table(evals: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for name, m in evals.items():
        for model, vals in (("trained", m), ("baseline (untrained)", m.get("baseline", {})),
                            ("oracle classifier (Fig. 2a)", m.get("oracle_classifier")),
                            ("oracle generator (Fig. 2b)", m.get("oracle_generator"))):
            if vals is None:
                continue
            rows.append({"benchmark": name, "model": model,
                         **{k: vals.get(k) for k in TOY_COLUMNS}})
    return pd.DataFrame(rows)


def _write_table(df: pd.DataFrame, out: Path, stem: str, caption: str, index: bool = True) -> str:
    shown = df.map(_fmt)
    md = shown.to_markdown(index=index, disable_numparse=True)
    (out / f"{stem}.md").write_text(f"# {caption}\n\n{md}\n\n{MIOU_NOTE}\n")
    (out / f"{stem}.tex").write_text(shown.to_latex(index=index, caption=caption, label=f"tab:{stem}"))
    return md


def plot_curve(curve_csv: Path, out: Path) -> bool:
    if not curve_csv.is_file():
        return False
    df = pd.read_csv(curve_csv)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for col in [c for c in df.columns if c.startswith("loss")]:
        ax.plot(df["step"], df[col].rolling(10, min_periods=1).mean(), label=col)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (10-step mean)")
    ax.legend()
    ax.set_title("Training curve")
    fig.tight_layout()
    fig.savefig(out / "train_curve.png", dpi=120)
    plt.close(fig)
    return True


def plot_per_class(name: str, m: dict, out: Path) -> str | None:
    pc = m.get("per_class")
    if not pc:
        return None
    unseen = pc.get("unseen") or [False] * len(pc["class"])
    names = [f"{n} *" if u else n for n, u in zip(pc["class"], unseen)]
    df = pd.DataFrame({"class": names, "trained": pc["IoU"], "baseline": pc["IoU_baseline"]}).dropna()
    if df.empty:
        return None
    df = df.sort_values("trained")
    fig, ax = plt.subplots(figsize=(6, max(3, 0.16 * len(df))))
    y = range(len(df))
    ax.barh([i + 0.2 for i in y], df["trained"], height=0.4, label="trained")
    ax.barh([i - 0.2 for i in y], df["baseline"], height=0.4, label="untrained baseline")
    ax.set_yticks(list(y), df["class"], fontsize=6)
    ax.set_xlabel("IoU (%)")
    ax.set_title(f"Per-class IoU, {name}" + (" (* = unseen in training)" if any(unseen) else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    file = f"per_class_iou_{name}.png"
    fig.savefig(out / file, dpi=120)
    plt.close(fig)
    return file


def build_report(metrics_dir: str | Path, out_dir: str | Path, preset: str) -> dict:
    """Write the whole report into ``out_dir`` atomically (built beside it, then swapped in)."""
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    evals = load_eval(metrics_dir)
    bench = _read(metrics_dir / "benchmark.json")
    train = _read(metrics_dir / "train.json")
    t1 = _write_table(table1(evals), tmp, "table1", "Table I: open-vocabulary panoptic/semantic results")
    t2 = _write_table(table2(bench, train), tmp, "table2",
                      "Table II: efficiency (FPS and memory on the large/small-vocabulary benchmarks)")
    inference = inference_table(bench)
    t3 = _write_table(inference, tmp, "inference", f"Inference per benchmark ({(bench or {}).get('device', '?')})") \
        if not inference.empty else ""
    toy = _write_table(toy_table(evals), tmp, "toy", "Toy world: seen vs unseen classes, trained vs untrained",
                       index=False) if evals else ""
    plots = (["train_curve.png"] if plot_curve(metrics_dir / "train_curve.csv", tmp) else []) + \
        [p for name, m in evals.items() if (p := plot_per_class(name, m, tmp))]
    lines = [f"# FOV-Seg report ({preset} preset)", "", "Generated by `dvc repro report` from `metrics/`; do not edit.",
             "", "## Table I", "", "Real benchmarks only (n/a where this run did not evaluate them; the toy preset's "
             "results are in the seen/unseen table below).", "", t1, "", "## Table II", "",
             "This run's FPS/memory columns are measured on `benchmark.large_vocab` / `benchmark.small_vocab` "
             "(the toy analogues of ADE-847 / ADE-150 in the toy preset).", "", t2, "", t3, ""]
    if toy:
        lines += ["## Seen vs unseen (trained vs untrained baseline)", "", toy, ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + ["", MIOU_NOTE,
              "", "LaTeX versions: `table1.tex`, `table2.tex`, `toy.tex`. Paper cells marked n/a are not "
              "filled in `pipeline/paper_numbers.json` yet.", ""]
    (tmp / "README.md").write_text("\n".join(lines))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return {"benchmarks": sorted(evals), "plots": plots}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
