"""Report figures (PNG): Fig. 2 (oracle classifier vs oracle generator), a Fig. 3 analogue (per-class gain over
the untrained classifier), Fig. 6 (attention maps from the ``attention`` stage), Fig. 9 curves (sweeps whose
rows carry a numeric ``x``) and the training curve."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.report.ablation_tables import sweep_metrics  # noqa: E402
from pipeline.report.table_format import num  # noqa: E402
from pipeline.report.table_inputs import MODELS, paper_tables  # noqa: E402


def plot_fig9(grid: str, sweep: dict, out: Path) -> str | None:
    rows = [r for r in sweep.get("rows", []) if num(r.get("x")) is not None]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: r["x"])
    metrics = sweep_metrics(sweep)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in metrics:
        xs = [r["x"] for r in rows if k in r.get("mean", {})]
        ys = [r["mean"][k] for r in rows if k in r.get("mean", {})]
        err = [r.get("std", {}).get(k) or 0.0 for r in rows if k in r.get("mean", {})]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=k)
    if min(r["x"] for r in rows) > 0 and max(r["x"] for r in rows) / min(r["x"] for r in rows) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel(grid.replace("_", " "))
    ax.set_ylabel("%")
    ax.set_title(f"Fig. 9 analogue: {grid}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    file = f"fig9_{grid}.png"
    fig.savefig(out / file, dpi=120)
    plt.close(fig)
    return file


# ----------------------------------------------------------------------------- figures
def plot_fig2(evals: dict[str, dict], out: Path) -> str | None:
    benches = [n for n, m in evals.items() if m.get("oracle_classifier") or m.get("oracle_generator")]
    if not benches:
        return None
    fig2 = paper_tables()["figure2_maskclip_oracles_ade20k_150"]
    j = paper_tables()["table4_ablations"]["j_oracle_generator"]["MaskCLIP with OMG"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("PQ", "mIoU")):
        labels, groups = ["paper ADE-150 (MaskCLIP)"], [[None, None, fig2["oracle_generator"][metric],
                                                          fig2["oracle_classifier"][metric]]]
        for name in benches:
            m = evals[name]
            labels.append(name)
            oracles = [(m.get(k) or {}).get(metric) for k in ("oracle_generator", "oracle_classifier")]
            groups.append([(m if key is None else m.get(key) or {}).get(metric) for _, key in MODELS[:2]] + oracles)
        names = ["trained", "untrained baseline", "oracle generator", "oracle classifier"]
        width = 0.2
        for k, series in enumerate(names):
            xs = [i + (k - 1.5) * width for i in range(len(groups))]
            ys = [g[k] if num(g[k]) is not None else 0.0 for g in groups]
            ax.bar(xs, ys, width, label=series)
        ax.plot([0 + 0.5 * width], [j[metric]], "k*", markersize=9, label="paper Table IV(j) oracle generator")
        ax.set_xticks(range(len(groups)), labels, fontsize=7, rotation=15)
        ax.set_ylabel(metric)
        ax.set_title(f"Fig. 2 analogue: {metric}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "fig2_oracles.png", dpi=120)
    plt.close(fig)
    return "fig2_oracles.png"


def plot_fig3(name: str, m: dict, out: Path) -> str | None:
    """Fig. 3 analogue: per-class IoU gain of the trained classifier over the untrained one; unseen hatched."""
    pc = m.get("per_class")
    if not pc or "IoU_baseline" not in pc:
        return None
    unseen = pc.get("unseen") or [False] * len(pc["class"])
    df = pd.DataFrame({"class": pc["class"], "trained": pc["IoU"], "baseline": pc["IoU_baseline"],
                       "unseen": unseen}).dropna()
    if df.empty:
        return None
    df["gain"] = df["trained"] - df["baseline"]
    df = df.sort_values("gain")
    fig, ax = plt.subplots(figsize=(6, max(3, 0.16 * len(df))))
    y = list(range(len(df)))
    colours = ["tab:orange" if u else "tab:blue" for u in df["unseen"]]
    ax.barh(y, df["gain"], color=colours, hatch=None)
    ax.set_yticks(y, [f"{c} *" if u else c for c, u in zip(df["class"], df["unseen"])], fontsize=6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("IoU gain over the untrained classifier (points)")
    ax.set_title(f"Fig. 3 analogue, {name}" + (" (orange * = unseen in training)" if any(df["unseen"]) else ""))
    fig.tight_layout()
    file = f"fig3_gain_{name}.png"
    fig.savefig(out / file, dpi=120)
    plt.close(fig)
    return file


def plot_curve(curve_csv: Path, out: Path) -> str | None:
    if not curve_csv.is_file():
        return None
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
    return "train_curve.png"


def copy_attention(attention_dir: Path | None, out: Path) -> list[str]:
    """Fig. 6: the heatmaps the ``attention`` stage wrote (``index.json`` lists them)."""
    if attention_dir is None or not (attention_dir / "index.json").is_file():
        return []
    files = []
    for item in json.loads((attention_dir / "index.json").read_text())["images"]:
        src = attention_dir / item["file"]
        if src.is_file():
            shutil.copy(src, out / f"fig6_{src.name}")
            files.append(f"fig6_{src.name}")
    return files


# ----------------------------------------------------------------------------- entry
