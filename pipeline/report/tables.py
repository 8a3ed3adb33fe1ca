"""Report tables, as Markdown and LaTeX (booktabs), from the metrics JSONs and the paper's numbers
(``pipeline/report/paper_tables.json``). :mod:`pipeline.report.build` assembles them with the figures.
One decimal everywhere; ``n/a`` where a value does not exist (no unseen classes, no PQ on a semantic-only
benchmark, a benchmark that was not evaluated).
"""
from __future__ import annotations

import json
import math
import re
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
# the toy benchmark that plays each paper benchmark's role in a toy run's "this run" rows: the closed-vocabulary
# training domain (COCO) -> toy_val; panoptic open vocabulary (A-150, MV) and PC-59's small open vocabulary ->
# toy_open; many-class semantic (A-847, PC-459) -> toy_open_large
TOY_ANALOGUE = {"coco_panoptic_val": "toy_val", "ade20k_150": "toy_open", "mapillary_vistas": "toy_open",
                "pascal_ctx_59": "toy_open", "ade20k_847": "toy_open_large", "pascal_ctx_459": "toy_open_large"}
TOY_NOTE = ("Toy analogues in 'this run (toy: ...)': each paper column shows the toy benchmark that plays its role "
            "(the closed-vocabulary training domain COCO: toy_val; panoptic open vocabulary A-150 and MV, and "
            "PC-59's small open vocabulary: toy_open; many-class semantic A-847 and PC-459: toy_open_large). No Δ "
            "row: these are other benchmarks than the paper's, so a difference would compare different quantities.")
# Table IV parts in the paper's order, then Fig. 9, then the grids beyond the paper
PART_TITLES = {"IV(a)": "which modules help (FiSeR, TeVA)", "IV(b)": "tuning other components",
               "IV(c)": "which CLIP parameters to tune", "IV(d)": "classifier backbone",
               "IV(e)": "mask generator backbone", "IV(f)": "Distribution Adapter layers",
               "IV(g)": "LoRA instead of tuning f_q", "IV(h)": "RefCOCO preservation",
               "IV(i)": "TeVA's two cross-attentions", "IV(j)": "oracle mask generator"}
FIG9_ORDER = ("iterations", "data_fraction")
BEYOND_PAPER = {"fiser_candidates": "FiSeR's candidate classes (eq. 6)",
                "recipe": "MaskCLIP's recipe choices, one at a time",
                "modules_earlier_recipe": "Table IV(a) under the earlier recipe"}
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


def is_toy(name: str) -> bool:
    return name.startswith("toy_")


def this_run_rows(evals: dict[str, dict], keys: list[str], paper: list) -> tuple[list[list[str] | None], list[str]]:
    """This run's row under a paper table (columns ``keys`` of :data:`TABLE1_COLUMNS`) and the Δ row to the paper's
    FOV-Seg row. A run that evaluated no paper benchmark but toy ones gets the toy analogues instead
    (:data:`TOY_ANALOGUE`), named in the row label, and no Δ row (not the same benchmarks)."""
    real = {n: m for n, m in evals.items() if not is_toy(n)}
    if real or not evals:
        ours = [metric_value(real.get(TABLE1_COLUMNS[k][1], {}), real.get(TABLE1_COLUMNS[k][1]), TABLE1_COLUMNS[k][2])
                for k in keys]
        return [None, ["this run", *[fmt(v) for v in ours]],
                ["Δ this run − FOV-Seg (paper)", *[fmt(delta(a, b), signed=True) for a, b in zip(ours, paper)]]], []
    cells, used = [], {}
    for k in keys:
        title, bench, metric = TABLE1_COLUMNS[k]
        toy = TOY_ANALOGUE.get(bench)
        m = evals.get(toy) if toy else None
        v = metric_value(m or {}, m, metric)
        cells.append(v)
        if num(v) is not None:
            used.setdefault(toy, {})[title.rsplit(" ", 1)[0]] = None
    label = "this run (toy: " + "; ".join(f"{', '.join(cols)} → {toy}" for toy, cols in used.items()) + ")"
    return [None, [label if used else "this run (toy: no toy benchmark evaluated)", *[fmt(v) for v in cells]]], \
        [TOY_NOTE]


def table1(evals: dict[str, dict], this_run: bool, train_benchmark: str) -> Table:
    """Table I; this run's row (or its toy analogues, see :func:`this_run_rows`) when trained on COCO-Panoptic or
    the toy world."""
    spec = paper_tables()["table1_open_vocab_panoptic"]
    keys = spec["columns"]
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    notes = [f"Peers and FOV-Seg (paper): the paper's Table I. {spec['note']}"]
    if this_run:
        ours, extra = this_run_rows(evals, keys, spec["rows"][PAPER_ROW])
        rows += ours
        notes += extra
    else:
        notes.append(f"No 'this run' row: this run trained on {train_benchmark}, not COCO-Panoptic (see Table III).")
    return Table("table1", "Table I: open-vocabulary panoptic and semantic segmentation (trained on COCO-Panoptic)",
                 ["method", *[TABLE1_COLUMNS[k][0] for k in keys]], rows, notes)


def table3(evals: dict[str, dict], this_run: bool, train_benchmark: str) -> Table:
    spec = paper_tables()["table3_open_vocab_semantic_coco_stuff_training"]
    keys = spec["columns"]  # mIoU columns of TABLE1_COLUMNS
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    notes = [f"Peers and FOV-Seg (paper): the paper's Table III. {spec['note']}"]
    if this_run:
        ours, extra = this_run_rows(evals, keys, spec["rows"][PAPER_ROW])
        rows += ours
        notes += extra
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


def table2_this_run(bench: dict | None, evals: dict[str, dict], small: str = "ade20k_150",
                     large: str = "ade20k_847") -> list[Any]:
    """This run's Table II cells (paper column order); None where not measured. ``small`` / ``large``: the
    benchmarks in the A-150 / A-847 columns (a toy run: ``benchmark.small_vocab`` / ``large_vocab``)."""
    bench = bench or {}
    e2e, cls = bench.get("end_to_end") or {}, bench.get("inference") or {}
    inf = e2e if e2e else cls  # end to end when measured
    trainable = bench.get("trainable_params_paper", bench.get("trainable"))
    iters = bench.get("train_iterations")
    a150 = evals.get(small) or {}
    return [bench.get("gpu_hours"), None if iters is None else iters / 1000,
            None if trainable is None else trainable / 1e6,
            (inf.get(large) or {}).get("images_per_s"), _mem_gb(inf.get(large)),
            (inf.get(small) or {}).get("images_per_s"), _mem_gb(inf.get(small)),
            a150.get("PQ"), a150.get("mIoU")]


def table2(bench: dict | None, evals: dict[str, dict], panoptic_trained: bool = True, train_benchmark: str = "",
           toy: bool = False) -> Table:
    """Table II; a run not trained on COCO-Panoptic keeps its cost and speed cells but not the A-150 PQ/mIoU
    ones (the paper's are after COCO-Panoptic training; such a run's accuracy is in Table III). A toy run
    (``toy``) shows its own figures, labelled as toy, with no Δ row: a tiny classifier on CPU and toy images
    are not comparable with the paper's GPU-hours, parameters and FPS (the paper-size classifier's accounting is
    the table beside it)."""
    spec = paper_tables()["table2_efficiency"]
    keys = spec["columns"]
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    b = bench or {}
    if toy:
        small, large = b.get("small_vocab") or "toy_open", b.get("large_vocab") or "toy_open_large"
        ours = table2_this_run(bench, evals, small, large)
        rows += [None, [f"this run (toy: A-847 → {large}, A-150 → {small}; {b.get('device', NA)})",
                        *[fmt(v) for v in ours]]]
    else:
        ours = table2_this_run(bench, evals)
        if not panoptic_trained:
            ours[-2:] = [None, None]
        rows += [None, ["this run", *[fmt(v) for v in ours]],
                 ["Δ this run − FOV-Seg (paper)", *[fmt(delta(a, c), signed=True)
                                                    for a, c in zip(ours, spec["rows"][PAPER_ROW])]]]
    scope = b.get("scope") if b.get("end_to_end") else "classifier only, on cached proposals"
    counted = "kept after training (FiSeR predictor excluded)" if "trainable_params_paper" in b else \
        "of the classifier"
    this_run = (f"device {b.get('device', NA)}, precision {b.get('precision', 'not recorded')}, {scope}; FPS = "
                f"images/s, memory = peak allocated GB; trainable parameters {counted}" if bench else
                "metrics/benchmark.json is missing: run `dvc repro benchmark`.")
    notes = [f"Peers and FOV-Seg (paper): the paper's Table II. {spec['note']}", "This run: " + this_run]
    if toy:
        secs = num(b.get("train_seconds"))
        trained = f"trained {secs:.0f} s on {b.get('device', NA)}" if secs is not None else "training time not recorded"
        gpu = "" if num(b.get("gpu_hours")) is not None else "; GPU-hours n/a without a GPU"
        notes.append(f"Toy run ({trained}{gpu}): its own figures, not comparable with the "
                     "paper's, so no Δ row. FPS and memory on the toy benchmarks that play A-847's and A-150's roles "
                     "(all benchmarks, classifier only and end to end: 'Inference per benchmark'); the paper-size "
                     "classifier's trainable parameters and vocabulary FLOPs, built here: the accounting table.")
    else:
        notes.append("A-847/A-150 cells are n/a unless those benchmarks were measured (toy analogues: "
                     "'Inference per benchmark').")
    if not panoptic_trained and not toy:
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
    """Images/s and peak memory for every benchmark the benchmark stage measured (toy ones included): the classifier
    alone on cached proposals, and end to end (generator + classifier + panoptic merging on raw images, what
    Table II reports) where measured (``benchmark.small_vocab`` and ``large_vocab``)."""
    if not bench or not (bench.get("inference") or bench.get("end_to_end")):
        return None
    sizes = bench.get("vocab_sizes") or {}
    cls, e2e = bench.get("inference") or {}, bench.get("end_to_end") or {}
    rows = []
    for name in list(cls) + [n for n in e2e if n not in cls]:
        c, e = cls.get(name), e2e.get(name)
        rows.append([name, str(sizes.get(name, NA)),
                     fmt(c.get("images_per_s")) if c else "not measured", fmt(_mem_gb(c)) if c else "not measured",
                     fmt(e.get("images_per_s")) if e else "not measured", fmt(_mem_gb(e)) if e else "not measured"])
    notes = [f"Device {bench.get('device', NA)}, precision {bench.get('precision', 'not recorded')}. Classifier only: "
             "mask classification of the stored proposals (text embeddings cached). End-to-end columns: "
             f"{bench.get('scope') or 'generator + classifier + panoptic merging on raw images'}, measured on "
             "benchmark.small_vocab and benchmark.large_vocab; Table II's FPS and memory are these."]
    return Table("inference", "Inference per benchmark: classifier only and end to end",
                 ["benchmark", "classes", "classifier images/s", "classifier peak memory (GB)", "end-to-end images/s",
                  "end-to-end peak memory (GB)"], rows, notes)


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


def part_order(grid: str, sweep: dict) -> tuple:
    """Sort key of the Table IV parts: the paper's order (a)-(j), then Fig. 9 (iterations, data fraction), then the
    grids beyond the paper (:data:`BEYOND_PAPER` first, in that order)."""
    pt = sweep.get("paper_table") or ""
    if pt.startswith("IV("):
        return (0, pt, grid)
    if pt.startswith("Fig. 9"):
        return (1, FIG9_ORDER.index(grid) if grid in FIG9_ORDER else len(FIG9_ORDER), pt, grid)
    beyond = list(BEYOND_PAPER)
    return (2, beyond.index(grid) if grid in beyond else len(beyond), grid)


def part_title(grid: str, sweep: dict) -> str:
    """``Table IV(a): which modules help (FiSeR, TeVA)``, ``Fig. 9: iterations``, ``Beyond the paper: ...``."""
    pt = sweep.get("paper_table") or ""
    if pt.startswith("IV("):
        return f"Table {pt}: {PART_TITLES.get(pt, grid.replace('_', ' '))} (grid {grid})"
    fig9 = re.match(r"Fig\.\s*9\s*(?:\((.+)\))?$", pt)
    if fig9:
        return f"Fig. 9: {fig9.group(1) or grid.replace('_', ' ')} (grid {grid})"
    if pt:
        return f"{pt}: grid {grid}"
    return f"Beyond the paper: {BEYOND_PAPER.get(grid, grid.replace('_', ' '))} (grid {grid})"


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
    wall = f", {fmt(sweep['wall_seconds'])} s" if num(sweep.get("wall_seconds")) is not None else ""
    notes = [f"From metrics/sweeps/{grid}.json (preset {sweep.get('preset') or 'not recorded'}): benchmarks "
             f"{', '.join(sweep.get('benchmarks', []))}, seeds {sweep.get('seeds', [])}, "
             f"{sweep.get('failed_trials', 0)} failed trial(s){wall}. Reference row: "
             f"{sweep.get('reference_row', NA)}. Δ ref: the "
             "mean ± std over seeds of (row - reference) on the same seed (same initialisation, batches and "
             "images): the std is how much the difference itself moves from seed to seed."]
    if key:
        notes.append(f"Paper: Table {sweep['paper_table']} ({paper_tables()['table4_ablations']['_note']})")
    return Table(f"table4_{grid}", part_title(grid, sweep), cols, rows, notes)


def recipe_change_table(before: dict, after: dict, before_name: str = "modules_earlier_recipe",
                        after_name: str = "modules") -> Table | None:
    """Before/after the recipe change: Table IV(a)'s rows under the earlier recipe (``before``) and under the
    current one (``after``), matched by row label; per row the mean PQ (and unseen PQ) before and after and the
    mean ± sample std over seeds of (after − before) on the same seed. None without a common row."""
    if (before.get("preset") or None) != (after.get("preset") or None):
        return None
    by_label = {r["label"]: r for r in before.get("rows", [])}
    pairs = [(r, by_label[r["label"]]) for r in after.get("rows", []) if r["label"] in by_label]
    if not pairs:
        return None
    benches = [b for b in after.get("benchmarks") or [] if b in set(before.get("benchmarks") or [])]
    keys = [f"{b}/{m}" for b in benches for m in ("PQ", "PQ_unseen")
            if any(f"{b}/{m}" in r.get("mean", {}) and f"{b}/{m}" in p.get("mean", {}) for r, p in pairs)]
    cols = ["row", "paired seeds"]
    for k in keys:
        cols += [f"before {k}", f"after {k}", f"Δ {k}"]
    rows = []
    for r, p in pairs:
        n = len(set(r.get("seeds") or []) & set(p.get("seeds") or []))
        cells = [r["label"], str(n)]
        for k in keys:
            d_mean, d_std, n_pairs = paired_delta(r, p, k)
            cells += [fmt(p.get("mean", {}).get(k)), fmt(r.get("mean", {}).get(k)),
                      fmt(d_mean, signed=True) + (f" ± {fmt(d_std)}" if d_std is not None else "")
                      + ("" if n_pairs else " (means, unpaired)")]
        rows.append(cells)
    notes = [f"Before: metrics/sweeps/{before_name}.json (the recipe before MaskCLIP's: IoU targets, objectness × "
             f"class score, aspect-kept classifier input, residual TeVA, no decay for 1-D parameters); after: "
             f"metrics/sweeps/{after_name}.json (MaskCLIP's recipe). Δ: mean ± sample std over seeds of "
             "(after − before) on the same seed (same initialisation, batches and images), so the seed-to-seed "
             "spread both share cancels; no std with a single paired seed."]
    return Table("recipe_change", "Recipe change: Table IV(a) before (earlier recipe) and after (MaskCLIP's recipe), "
                 "paired by seed", cols, rows, notes)


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


