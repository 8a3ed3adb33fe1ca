"""What the report tables read besides their own metrics file: the paper's published numbers
(``paper_tables.json``), the model variants an evaluation reports, and lookups into this run's metrics (a value
that cannot exist, such as unseen-class PQ on a benchmark without unseen classes, is None)."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

MODELS = (("trained", None), ("baseline (untrained)", "baseline"), ("oracle classifier (Fig. 2a)", "oracle_classifier"),
          ("oracle generator (Fig. 2b)", "oracle_generator"))


@functools.cache
def _paper_tables_text() -> str:
    return (Path(__file__).parent / "paper_tables.json").read_text()


def paper_tables() -> dict:
    """The paper's published numbers (a copy of its Tables I-IV and Fig. 2 text, packaged with the code); read
    once per process, a fresh dict each call (callers may change theirs)."""
    return json.loads(_paper_tables_text())


def is_toy(name: str) -> bool:
    """Whether a benchmark is one of the toy world's (``toy_*``)."""
    return name.startswith("toy_")


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
