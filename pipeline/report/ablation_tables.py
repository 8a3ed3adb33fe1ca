"""Table IV and the other sweep tables, from ``metrics/sweeps/<grid>.json``: one table per grid (the paper's
ablation parts (a)-(j), Fig. 9's sweeps, the grids beyond the paper) with each row's mean ± sd over seeds, its
difference to the reference row paired by seed (:func:`paired_delta`) and the paper's numbers; and the recipe
change (Table IV(a) under the earlier recipe vs MaskCLIP's), paired by seed."""
from __future__ import annotations

import math
import re

from pipeline.report.table_format import NA, Table, delta, fmt, num
from pipeline.report.table_inputs import paper_tables

TABLE4_KEYS = {"IV(a)": "a_modules_PQ", "IV(b)": "b_other_components_PQ", "IV(c)": "c_clip_params_PQ",
               "IV(d)": "d_classifier_backbone", "IV(e)": "e_generator_backbone", "IV(f)": "f_adapter_layers_PQ",
               "IV(g)": "g_lora_PQ", "IV(h)": "h_refcoco_preservation", "IV(i)": "i_teva_parts_PQ",
               "IV(j)": "j_oracle_generator"}
# Table IV parts in the paper's order, then Fig. 9, then the grids beyond the paper
PART_TITLES = {"IV(a)": "which modules help (FiSeR, TeVA)", "IV(b)": "tuning other components",
               "IV(c)": "which CLIP parameters to tune", "IV(d)": "classifier backbone",
               "IV(e)": "mask generator backbone", "IV(f)": "Distribution Adapter layers",
               "IV(g)": "LoRA instead of tuning f_q", "IV(h)": "RefCOCO preservation",
               "IV(i)": "TeVA's two cross-attentions", "IV(j)": "oracle mask generator"}
FIG9_ORDER = ("iterations", "data_fraction")
BEYOND_PAPER = {"fiser_candidates": "FiSeR's candidate classes (eq. 6)",
                "recipe": "MaskCLIP's recipe choices, one at a time",
                "modules_earlier_recipe": "Table IV(a) under the earlier recipe",
                "modules_maskclip_recipe": "Table IV(a) under MaskCLIP's recipe (the paper presets')"}


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
                        after_name: str = "modules_maskclip_recipe") -> Table | None:
    """Before/after the recipe change: Table IV(a)'s rows under the earlier recipe (``before``) and under MaskCLIP's
    as the paper presets run it (``after``), matched by row label; per row the mean PQ (and unseen PQ) before and
    after and the mean ± sample std over seeds of (after − before) on the same seed. None without a common row."""
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
             f"metrics/sweeps/{after_name}.json (MaskCLIP's recipe, as the paper presets run it: Hungarian targets, "
             "class-probability score, R × R classifier input, TeVA replacing the attention (eqs. 7-10), "
             "detectron2's decay groups). Δ: mean ± sample std over seeds of "
             "(after − before) on the same seed (same initialisation, batches and images), so the seed-to-seed "
             "spread both share cancels; no std with a single paired seed."]
    return Table("recipe_change", "Recipe change: Table IV(a) before (earlier recipe) and after (MaskCLIP's recipe), "
                 "paired by seed", cols, rows, notes)
