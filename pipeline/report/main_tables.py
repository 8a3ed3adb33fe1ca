"""The paper's main-results tables beside this run's: Table I (open-vocabulary panoptic and semantic, COCO-Panoptic
training), Table II (training cost, trainable parameters, speed and memory) with its accounting and the inference
per benchmark it draws on, and Table III (COCO-Stuff training). A toy run's row shows the toy benchmark that plays
each paper column's role (:data:`TOY_ANALOGUE`)."""
from __future__ import annotations

from typing import Any

from pipeline.report.table_format import NA, Table, delta, fmt, num
from pipeline.report.table_inputs import is_toy, metric_value, paper_tables

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
# the toy benchmark that plays each paper benchmark's role in a toy run's "this run" rows: the closed-vocabulary
# training domain (COCO) -> toy_val; panoptic open vocabulary (A-150, MV) and PC-59's small open vocabulary ->
# toy_open; many-class semantic (A-847, PC-459) -> toy_open_large
TOY_ANALOGUE = {"coco_panoptic_val": "toy_val", "ade20k_150": "toy_open", "mapillary_vistas": "toy_open",
                "pascal_ctx_59": "toy_open", "ade20k_847": "toy_open_large", "pascal_ctx_459": "toy_open_large"}
TOY_NOTE = ("Toy analogues in 'this run (toy: ...)': each paper column shows the toy benchmark that plays its role "
            "(the closed-vocabulary training domain COCO: toy_val; panoptic open vocabulary A-150 and MV, and "
            "PC-59's small open vocabulary: toy_open; many-class semantic A-847 and PC-459: toy_open_large). No Δ "
            "row: these are other benchmarks than the paper's, so a difference would compare different quantities.")
PAPER_ROW = "FOV-Seg"


def _peer_block(rows: dict[str, list], n_cols: int) -> list[list[str]]:
    return [[name if name != PAPER_ROW else f"{PAPER_ROW} (paper)", *[fmt(v) for v in vals[:n_cols]]]
            for name, vals in rows.items()]


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


def _paper_table(name: str, spec_key: str, title: str, trained_on: str, other: str, evals: dict[str, dict],
                 this_run: bool, train_benchmark: str) -> Table:
    """One of the open-vocabulary result tables: the paper's rows, then this run's (see :func:`this_run_rows`)
    when it trained on ``trained_on``; otherwise a note pointing to the ``other`` table."""
    spec = paper_tables()[spec_key]
    keys = spec["columns"]  # columns of TABLE1_COLUMNS
    rows: list[list[str] | None] = _peer_block(spec["rows"], len(keys))
    notes = [f"Peers and FOV-Seg (paper): the paper's {title.split(':')[0]}. {spec['note']}"]
    if this_run:
        ours, extra = this_run_rows(evals, keys, spec["rows"][PAPER_ROW])
        rows += ours
        notes += extra
    else:
        notes.append(f"No 'this run' row: this run trained on {train_benchmark}, not {trained_on} (see {other}).")
    return Table(name, title, ["method", *[TABLE1_COLUMNS[k][0] for k in keys]], rows, notes)


def table1(evals: dict[str, dict], this_run: bool, train_benchmark: str) -> Table:
    """Table I; this run's row (or its toy analogues) when trained on COCO-Panoptic or the toy world."""
    return _paper_table("table1", "table1_open_vocab_panoptic",
                        "Table I: open-vocabulary panoptic and semantic segmentation (trained on COCO-Panoptic)",
                        "COCO-Panoptic", "Table III", evals, this_run, train_benchmark)


def table3(evals: dict[str, dict], this_run: bool, train_benchmark: str) -> Table:
    """Table III; this run's row when it trained on COCO-Stuff."""
    return _paper_table("table3", "table3_open_vocab_semantic_coco_stuff_training",
                        "Table III: open-vocabulary semantic segmentation (trained on COCO-Stuff)",
                        "COCO-Stuff", "Table I", evals, this_run, train_benchmark)


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
