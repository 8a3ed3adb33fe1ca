"""Tables of this run alone (and Fig. 2's numbers beside the paper's): which benchmarks were evaluated, seen vs
unseen classes for the trained model, the untrained baseline and the two oracles, and Fig. 2's oracles."""
from __future__ import annotations

from pipeline.report.table_format import NA, Table, fmt
from pipeline.report.table_inputs import MODELS, metric_value, paper_tables

TOY_COLUMNS = ("PQ", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen")


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
    """Seen vs unseen PQ and mIoU per benchmark for each model variant the evaluation reports."""
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
