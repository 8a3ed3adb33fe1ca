"""Report tables, as Markdown and LaTeX (booktabs), from the metrics JSONs and the paper's numbers
(``pipeline/report/paper_tables.json``). :mod:`pipeline.report.build` assembles them with the figures.
One decimal everywhere; ``n/a`` where a value does not exist (no unseen classes, no PQ on a semantic-only
benchmark, a benchmark that was not evaluated).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NA = "n/a"
# paper column key -> (title, benchmark, metric); the paper's column order
TABLE1_COLUMNS = {
    "coco_PQ": ("COCO PQ", "coco_panoptic_val", "PQ"), "coco_mIoU": ("COCO mIoU", "coco_panoptic_val", "mIoU"),
    "ade20k_150_PQ": ("A-150 PQ", "ade20k_150", "PQ"), "ade20k_150_mIoU": ("A-150 mIoU", "ade20k_150", "mIoU"),
    "mapillary_vistas_PQ": ("MV PQ", "mapillary_vistas", "PQ"),
    "mapillary_vistas_mIoU": ("MV mIoU", "mapillary_vistas", "mIoU"),
    "ade20k_847_mIoU": ("A-847 mIoU", "ade20k_847", "mIoU"),
    "pascal_ctx_59_mIoU": ("PC-59 mIoU", "pascal_ctx_59", "mIoU"),
    "pascal_ctx_459_mIoU": ("PC-459 mIoU", "pascal_ctx_459", "mIoU"),
}
TABLE2_TITLES = {
    "train_gpu_hours": "GPU-hours", "train_iters_k": "iters (k)", "trainable_params_M": "trainable (M)",
    "ade20k_847_fps": "A-847 FPS", "ade20k_847_mem_GB": "A-847 mem (GB)", "ade20k_150_fps": "A-150 FPS",
    "ade20k_150_mem_GB": "A-150 mem (GB)", "ade20k_150_PQ": "A-150 PQ", "ade20k_150_mIoU": "A-150 mIoU",
}
TABLE4_KEYS = {"IV(a)": "a_modules_PQ", "IV(b)": "b_other_components_PQ", "IV(c)": "c_clip_params_PQ",
               "IV(d)": "d_classifier_backbone", "IV(e)": "e_generator_backbone", "IV(f)": "f_adapter_layers_PQ",
               "IV(g)": "g_lora_PQ", "IV(h)": "h_refcoco_preservation", "IV(i)": "i_teva_parts_PQ",
               "IV(j)": "j_oracle_generator"}
PAPER_ROW = "FOV-Seg"
FIGURES = "figures"
TOY_COLUMNS = ("PQ", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen")
MODELS = (("trained", None), ("baseline (untrained)", "baseline"), ("oracle classifier (Fig. 2a)", "oracle_classifier"),
          ("oracle generator (Fig. 2b)", "oracle_generator"))
MIOU_NOTE = ("mIoU follows detectron2's current formula: per-class IoU = TP/(TP+FP+FN), averaged over classes "
             "with ground-truth pixels; the ignore label (255, or 65535 for ADE-847/PC-459) is excluded, and a pixel "
             "no proposal covers is predicted as no class (a miss of its true class, a false positive of none). "
             "PQ follows the COCO panoptic API (IoU > 0.5 matching, void and crowd handling).")


def paper_tables() -> dict:
    """The paper's published numbers (a copy of its Tables I-IV and Fig. 2 text, packaged with the code)."""
    return json.loads((Path(__file__).parent / "paper_tables.json").read_text())


# ----------------------------------------------------------------------------- formatting
def num(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def fmt(v: Any, signed: bool = False) -> str:
    """One decimal for every number; ``n/a`` where there is none."""
    if isinstance(v, str):
        return v
    x = num(v)
    if x is None:
        return NA
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def delta(a: Any, b: Any) -> float | None:
    a, b = num(a), num(b)
    return None if a is None or b is None else a - b


def latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
            "−": "-", "→": r"$\rightarrow$"}
    return "".join(repl.get(ch, ch) for ch in text)


@dataclass
class Table:
    """A rendered table: string cells, optional rule lines (``None`` row) between row groups."""

    stem: str
    caption: str
    columns: list[str]
    rows: list[list[str] | None]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        body = [r for r in self.rows if r is not None]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "|".join(":---" if i == 0 else "---:"
                                                                       for i in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
        return "\n".join(lines)

    def latex(self) -> str:
        spec = "l" + "r" * (len(self.columns) - 1)
        out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(self.caption)}}}",
               rf"\label{{tab:{self.stem.replace('_', '-')}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
               " & ".join(latex_escape(c) for c in self.columns) + r" \\", r"\midrule"]
        for r in self.rows:
            out.append(r"\midrule" if r is None else " & ".join(latex_escape(c) for c in r) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        return "\n".join(out)

    def write(self, out: Path) -> str:
        md = self.markdown()
        notes = "".join(f"\n\n{n}" for n in self.notes)
        (out / f"{self.stem}.md").write_text(f"# {self.caption}\n\n{md}{notes}\n")
        (out / f"{self.stem}.tex").write_text(self.latex())
        return md + notes


# ----------------------------------------------------------------------------- inputs
def has_group(m: dict, group: str) -> bool | None:
    """Whether a benchmark has seen (``group='seen'``) / unseen classes; None when the metrics do not say."""
    flags = (m.get("per_class") or {}).get("unseen")
    if not flags:
        return None
    return any(flags) if group == "unseen" else not all(flags)


def metric_value(m: dict, vals: dict | None, key: str) -> Any:
    """``vals[key]``, or None where the value cannot exist (no unseen/seen classes in the benchmark)."""
    if vals is None:
        return None
    for group in ("unseen", "seen"):
        if key.endswith(f"_{group}") and has_group(m, group) is False:
            return None
    return vals.get(key)


# ----------------------------------------------------------------------------- paper tables
def _peer_block(rows: dict[str, list], n_cols: int) -> list[list[str]]:
    return [[name if name != PAPER_ROW else f"{PAPER_ROW} (paper)", *[fmt(v) for v in vals[:n_cols]]]
            for name, vals in rows.items()]


def table1(evals: dict[str, dict], this_run: bool, train_benchmark: str) -> Table:
    spec = paper_tables()["table1_open_vocab_panoptic"]
    keys = spec["columns"]
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    notes = [f"Peers and FOV-Seg (paper): the paper's Table I. {spec['note']}"]
    if this_run:
        ours = [metric_value(evals.get(TABLE1_COLUMNS[k][1], {}), evals.get(TABLE1_COLUMNS[k][1]),
                             TABLE1_COLUMNS[k][2]) for k in keys]
        paper = spec["rows"][PAPER_ROW]
        rows += [None, ["this run", *[fmt(v) for v in ours]],
                 ["Δ this run − FOV-Seg (paper)", *[fmt(delta(a, b), signed=True) for a, b in zip(ours, paper)]]]
    else:
        notes.append(f"No 'this run' row: this run trained on {train_benchmark}, not COCO-Panoptic (see Table III).")
    return Table("table1", "Table I: open-vocabulary panoptic and semantic segmentation (trained on COCO-Panoptic)",
                 ["method", *[TABLE1_COLUMNS[k][0] for k in keys]], rows, notes)


def table3(evals: dict[str, dict], this_run: bool, train_benchmark: str) -> Table:
    spec = paper_tables()["table3_open_vocab_semantic_coco_stuff_training"]
    bench = {"ade20k_150_mIoU": "ade20k_150", "ade20k_847_mIoU": "ade20k_847", "pascal_ctx_59_mIoU": "pascal_ctx_59",
             "pascal_ctx_459_mIoU": "pascal_ctx_459"}
    keys = spec["columns"]
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    notes = [f"Peers and FOV-Seg (paper): the paper's Table III. {spec['note']}"]
    if this_run:
        ours = [(evals.get(bench[k]) or {}).get("mIoU") for k in keys]
        rows += [None, ["this run", *[fmt(v) for v in ours]],
                 ["Δ this run − FOV-Seg (paper)",
                  *[fmt(delta(a, b), signed=True) for a, b in zip(ours, spec["rows"][PAPER_ROW])]]]
    else:
        notes.append(f"No 'this run' row: this run trained on {train_benchmark}, not COCO-Stuff (see Table I).")
    return Table("table3", "Table III: open-vocabulary semantic segmentation (trained on COCO-Stuff)",
                 ["method", *[TABLE1_COLUMNS[k][0] for k in keys]], rows, notes)


def _mem_gb(entry: dict | None) -> float | None:
    if not entry:
        return None
    if "peak_memory_gb" in entry:
        return entry["peak_memory_gb"]
    mb = entry.get("peak_memory_mb")
    return None if mb is None else mb / 1024


def table2_this_run(bench: dict | None, evals: dict[str, dict]) -> list[Any]:
    """This run's Table II cells (paper column order); None where not measured."""
    bench = bench or {}
    inf = bench.get("end_to_end") or bench.get("inference") or {}  # end to end when measured
    trainable = bench.get("trainable_params_paper", bench.get("trainable"))
    iters = bench.get("train_iterations")
    a150 = evals.get("ade20k_150") or {}
    return [bench.get("gpu_hours"), None if iters is None else iters / 1000,
            None if trainable is None else trainable / 1e6,
            (inf.get("ade20k_847") or {}).get("images_per_s"), _mem_gb(inf.get("ade20k_847")),
            (inf.get("ade20k_150") or {}).get("images_per_s"), _mem_gb(inf.get("ade20k_150")),
            a150.get("PQ"), a150.get("mIoU")]


def table2(bench: dict | None, evals: dict[str, dict], panoptic_trained: bool = True, train_benchmark: str = ""
           ) -> Table:
    """Table II; a run not trained on COCO-Panoptic keeps its cost and speed cells but not the A-150 PQ/mIoU
    ones (the paper's are after COCO-Panoptic training; such a run's accuracy is in Table III)."""
    spec = paper_tables()["table2_efficiency"]
    keys = spec["columns"]
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    ours = table2_this_run(bench, evals)
    if not panoptic_trained:
        ours[-2:] = [None, None]
    rows += [None, ["this run", *[fmt(v) for v in ours]],
             ["Δ this run − FOV-Seg (paper)", *[fmt(delta(a, b), signed=True)
                                                for a, b in zip(ours, spec["rows"][PAPER_ROW])]]]
    b = bench or {}
    scope = b.get("scope") if "end_to_end" in b else "classifier only, on cached proposals"
    counted = "kept after training (FiSeR predictor excluded)" if "trainable_params_paper" in b else \
        "of the classifier"
    this_run = (f"device {b.get('device', NA)}, precision {b.get('precision', 'not recorded')}, {scope}; FPS = "
                f"images/s, memory = peak allocated GB; trainable parameters {counted}" if bench else
                "metrics/benchmark.json is missing: run `dvc repro benchmark`.")
    notes = [f"Peers and FOV-Seg (paper): the paper's Table II. {spec['note']}", "This run: " + this_run,
             "A-847/A-150 cells are n/a unless those benchmarks were measured (toy analogues: inference table)."]
    if not panoptic_trained:
        notes.append(f"This run trained on {train_benchmark}, not COCO-Panoptic: its A-150 PQ/mIoU cells are left "
                     "out (see Table III for its accuracy); the cost and speed cells compare as they are.")
    return Table("table2", "Table II: training cost, trainable parameters, inference speed and memory",
                 ["method", *[TABLE2_TITLES[k] for k in keys]], rows, notes)


def accounting_table(bench: dict | None) -> Table | None:
    """Table II's trainable parameters and the vocabulary-dependent FLOPs share (Sec. V-D: about 0.09%),
    computed from the built classifiers (meta device): the paper preset's and this run's."""
    acc = (bench or {}).get("accounting")
    if not acc:
        return None
    paper = paper_tables()["table2_efficiency"]["rows"][PAPER_ROW]
    paper_trainable = paper[paper_tables()["table2_efficiency"]["columns"].index("trainable_params_M")]
    rows = [["FOV-Seg (paper)", "ViT-L/14-336", fmt(paper_trainable), NA, "0.09"]]
    for label, key in (("paper preset, built here", "paper_preset"), ("this run's classifier", "this_run")):
        a = acc.get(key)
        if a:
            share = a["vocab_flops_share"]
            teva = f"TeVA width {a['teva_width'] or 'full'}{', shared' if a['teva_shared'] else ''}"
            rows.append([label, f"{a['model']} at {a['image_size']} px, {teva}", fmt(a["trainable_kept"] / 1e6),
                         f"{100 * share['150']:.3f}", f"{100 * share['847']:.3f}"])
    return Table("table2_accounting", "Table II accounting: trainable parameters and vocabulary FLOPs",
                 ["classifier", "configuration", "trainable kept (M)", "vocab FLOPs % (150)",
                  "vocab FLOPs % (847)"], rows,
                 ["Trainable parameters kept after training (the FiSeR predictor is discarded); vocabulary-dependent "
                  "FLOPs: TeVA's attention over the targets and the final classification, as a share of the "
                  "classifier's per-image FLOPs with 100 proposals (the paper: about 0.09%). Counted on the meta "
                  "device (pipeline/eval/efficiency.py)."])


def inference_table(bench: dict | None) -> Table | None:
    """Images/s and peak memory for every benchmark the benchmark stage measured (toy ones included)."""
    if not bench or not bench.get("inference"):
        return None
    sizes = bench.get("vocab_sizes") or {}
    rows = [[name, str(sizes.get(name, NA)), fmt(v.get("images_per_s")), fmt(_mem_gb(v))]
            for name, v in bench["inference"].items()]
    return Table("inference", "Classifier inference per benchmark, cached proposals (device "
                              f"{bench.get('device', NA)}, precision {bench.get('precision', 'not recorded')})",
                 ["benchmark", "classes", "images/s", "peak memory (GB)"], rows)


def status_table(evals: dict[str, dict], expected: list[str]) -> Table:
    """Every expected benchmark: evaluated or missing, images scored, images skipped."""
    rows = []
    for name in list(expected) + [n for n in evals if n not in expected]:
        m = evals.get(name)
        if m is None:
            rows.append([name, "missing (no metrics/eval file)", NA, NA])
        else:
            rows.append([name, "evaluated", str(m.get("images", NA)), str(m.get("skipped_images", NA))])
    return Table("benchmarks", "Benchmarks of this run", ["benchmark", "status", "images", "skipped images"], rows)


def toy_table(evals: dict[str, dict]) -> Table:
    rows: list[list[str] | None] = []
    for name, m in evals.items():
        if rows:
            rows.append(None)
        for label, key in MODELS:
            vals = m if key is None else m.get(key)
            if vals is not None:
                rows.append([name, label, *[fmt(metric_value(m, vals, k)) for k in TOY_COLUMNS]])
    return Table("toy", "Seen vs unseen classes: trained, untrained baseline and the two oracles",
                 ["benchmark", "model", *TOY_COLUMNS], rows,
                 ["n/a: the benchmark has no such classes (e.g. no unseen classes in toy_val) or no panoptic "
                  "ground truth (semantic-only benchmarks have no PQ)."])


# ----------------------------------------------------------------------------- Table IV
def _paper_row(part: dict, label: str) -> dict | None:
    hit = part.get(label)
    if hit is None:
        norm = {k.lower().replace(" ", ""): v for k, v in part.items() if not k.startswith("_")}
        hit = norm.get(label.lower().replace(" ", ""))
    if hit is None:
        return None
    return hit if isinstance(hit, dict) else {"PQ": hit}


def sweep_metrics(sweep: dict, shown: tuple[str, ...] = ("PQ", "mIoU")) -> list[str]:
    """The ``<bench>/<metric>`` keys a Table IV part shows: the paper's metrics on the grid's benchmarks (the
    sweep file keeps every metric and the training losses)."""
    benches = set(sweep.get("benchmarks") or [])
    keys = dict.fromkeys(k for r in sweep.get("rows", []) for k in r.get("mean", {}))
    return [k for k in keys if "/" in k and k.rsplit("/", 1)[1] in shown
            and (not benches or k.split("/")[0] in benches)]


def per_seed(row: dict, key: str) -> dict[int, float]:
    """A sweep row's values of ``key`` by seed (empty when the file does not pair them up)."""
    seeds, values = row.get("seeds") or [], (row.get("values") or {}).get(key) or []
    return dict(zip(seeds, values)) if len(seeds) == len(values) else {}


def paired_delta(row: dict, ref: dict, key: str) -> tuple[float | None, float | None, int]:
    """(mean, sample std, n) of ``row - ref`` per seed over the seeds both finished: a seed is the same
    initialisation and batch order in every row and the benchmark the same images, so the seed-to-seed spread
    that both rows share cancels. Without per-seed values: the difference of the means, no std, n = 0."""
    a, b = per_seed(row, key), per_seed(ref, key)
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not diffs:
        return delta(row.get("mean", {}).get(key), ref.get("mean", {}).get(key)), None, 0
    mean = sum(diffs) / len(diffs)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else None
    return mean, std, len(diffs)


def table4(grid: str, sweep: dict) -> Table:
    """One Table IV part: this run's mean (± std over seeds) per row, its difference to the reference row
    (paired by seed: mean ± std of the per-seed differences), the paper's values and difference."""
    key = TABLE4_KEYS.get(sweep.get("paper_table", ""))
    part = paper_tables()["table4_ablations"].get(key, {}) if key else {}
    rows_in = sweep.get("rows", [])
    metrics = sweep_metrics(sweep)
    paper_metrics = list(dict.fromkeys(k for r in rows_in for k in (_paper_row(part, r["label"]) or {})))
    ref = next((r for r in rows_in if r["label"] == sweep.get("reference_row")), None)
    ref_paper = _paper_row(part, ref["label"]) if ref else None
    cols = ["row", "seeds"]
    for k in metrics:
        cols += [k, f"Δ ref {k}"]
    for k in paper_metrics:
        cols += [f"paper {k}", f"paper Δ ref {k}"]
    cols.append("failed")
    rows = []
    for r in rows_in:
        cells = [r["label"] + (" (ref)" if r is ref else ""), str(r.get("n", NA))]
        for k in metrics:
            mean, std = r.get("mean", {}).get(k), r.get("std", {}).get(k)
            cells.append(fmt(mean) + (f" ± {fmt(std)}" if num(std) is not None and r.get("n", 1) > 1 else ""))
            d_mean, d_std, _ = paired_delta(r, ref or {}, k)
            cells.append(fmt(d_mean, signed=True) + (f" ± {fmt(d_std)}" if d_std is not None and r is not ref else ""))
        p = _paper_row(part, r["label"]) or {}
        for k in paper_metrics:
            cells += [fmt(p.get(k)), fmt(delta(p.get(k), (ref_paper or {}).get(k)), signed=True)]
        cells.append(str(len(r.get("failures", []))))
        rows.append(cells)
    notes = [f"From metrics/sweeps/{grid}.json: benchmarks {', '.join(sweep.get('benchmarks', []))}, seeds "
             f"{sweep.get('seeds', [])}, {sweep.get('failed_trials', 0)} failed trial(s), "
             f"{fmt(sweep.get('wall_seconds'))} s. Reference row: {sweep.get('reference_row', NA)}. Δ ref: the "
             "mean ± std over seeds of (row - reference) on the same seed (same initialisation, batches and "
             "images): the std is how much the difference itself moves from seed to seed."]
    if key:
        notes.append(f"Paper: Table {sweep['paper_table']} ({paper_tables()['table4_ablations']['_note']})")
    title = (f"Table {sweep['paper_table']} analogue: sweep '{grid}'" if sweep.get("paper_table")
             else f"Ablation beyond the paper: sweep '{grid}'")
    return Table(f"table4_{grid}", title, cols, rows, notes)


def fig2_table(evals: dict[str, dict]) -> Table:
    """Fig. 2's numbers: this run's oracles per benchmark, and the paper's two inconsistent versions."""
    fig2 = paper_tables()["figure2_maskclip_oracles_ade20k_150"]
    j = paper_tables()["table4_ablations"]["j_oracle_generator"]["MaskCLIP with OMG"]
    rows: list[list[str] | None] = [
        ["paper: MaskCLIP, ADE-150", "oracle classifier (Sec. III text)", fmt(fig2["oracle_classifier"]["PQ"]),
         fmt(fig2["oracle_classifier"]["mIoU"])],
        ["paper: MaskCLIP, ADE-150", "oracle generator (Sec. III text: 44.6−12.7, 60.5−32.1)",
         fmt(fig2["oracle_generator"]["PQ"]), fmt(fig2["oracle_generator"]["mIoU"])],
        ["paper: MaskCLIP, ADE-150", "oracle generator (Table IV(j), 'with OMG')", fmt(j["PQ"]), fmt(j["mIoU"])],
        None]
    for name, m in evals.items():
        for label, key in MODELS:
            vals = m if key is None else m.get(key)
            if vals is not None:
                rows.append([f"this run: {name}", label, fmt(vals.get("PQ")), fmt(vals.get("mIoU"))])
    return Table("fig2", "Fig. 2: oracle classifier vs oracle generator", ["source", "model", "PQ", "mIoU"], rows,
                 ["**The paper is inconsistent here**: Sec. III's text implies MaskCLIP with an oracle generator "
                  "reaches PQ 31.9 / mIoU 28.4, while Table IV(j) lists PQ 28.4 / mIoU 31.9 (the same two numbers "
                  "swapped). Both are shown; neither is chosen."])


