"""A sweep's results: each trial's outcome (metrics, error, time) from what Tune reports, and the results file
(``metrics/sweeps/<grid>.json``): per grid row the mean, sample sd, number and per-seed values of every metric."""
from __future__ import annotations

import math
import time
from typing import Any

from pipeline.sweep.grids import Grid


def _error_text(err: Any) -> str:
    cause = getattr(err, "cause", None) or err
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


def _outcome(spec: dict, reported: dict | None, error: Any) -> dict:
    """One trial's entry of the results: its spec, the metrics it reported (``<bench>/<metric>``,
    ``train/<name>``), its error (first line) and its time."""
    reported = reported or {}
    metrics = {k: float(v) for k, v in reported.items()
               if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"row": spec["row"], "seed": spec["seed"], "name": spec["name"], "overrides": spec["overrides"],
            "metrics": {} if error is not None else metrics,
            "error": None if error is None else _error_text(error),
            "seconds": float(reported.get("time_total_s", 0.0)),
            "ended": float(reported["timestamp"]) if reported.get("timestamp") else None}


def trial_outcome(result: Any) -> dict:
    """:func:`_outcome` of a Tune ``Result``."""
    return _outcome(result.config["spec"], result.metrics, result.error)


def finished_trial_outcome(trial: Any, failed: bool) -> dict:
    """:func:`_outcome` of a Tune ``Trial`` that just ended (in a callback)."""
    error = None
    if failed:
        try:
            error = trial.get_pickled_error() or trial.get_error()
        except Exception:  # noqa: BLE001 - the reason is in Tune's error file then
            error = None
        if isinstance(error, str):  # the text trace: its last line names the exception
            error = RuntimeError(error.strip().splitlines()[-1] if error.strip() else "trial failed")
        error = error or RuntimeError(f"trial failed (Tune's error file: {trial.error_file})")
    outcome = _outcome(trial.config["spec"], dict(trial.last_result or {}), error)
    if failed and outcome["ended"] is None:
        outcome["ended"] = time.time()
    return outcome


def summarize(grid: Grid, preset: str, seeds: tuple[int, ...], trials: list[dict], wall: float) -> dict:
    """The results file: per row mean, std (sample, ddof=1; 0 for one seed), n and per-seed values."""
    rows = []
    for row in grid.rows:
        mine = sorted((t for t in trials if t["row"] == row.label), key=lambda t: t["seed"])
        ok = [t for t in mine if t["error"] is None]
        keys = sorted({k for t in ok for k in t["metrics"]})
        values = {k: [t["metrics"][k] for t in ok if k in t["metrics"]] for k in keys}
        entry: dict[str, Any] = {
            "label": row.label, "overrides": row.overrides, "evaluation": row.evaluation, "n": len(ok),
            "seeds": [t["seed"] for t in ok], "mean": {k: _mean(v) for k, v in values.items()},
            "std": {k: _std(v) for k, v in values.items()}, "values": values,
            "failures": [{"seed": t["seed"], "error": t["error"]} for t in mine if t["error"] is not None]}
        if row.x is not None:
            entry["x"] = row.x
        rows.append(entry)
    return {"grid": grid.name, "paper_table": grid.paper_table, "reference_row": grid.reference_row,
            "preset": preset, "x_key": grid.x_key, "benchmarks": list(grid.benchmarks), "seeds": list(seeds),
            "wall_seconds": wall, "trial_seconds": sum(t["seconds"] for t in trials),
            "failed_trials": sum(t["error"] is not None for t in trials), "rows": rows}


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _std(v: list[float]) -> float:
    if len(v) < 2:
        return 0.0
    m = _mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
