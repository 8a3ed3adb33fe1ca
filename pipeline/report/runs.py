"""The experiment table with the paper's headline columns: per benchmark PQ, mIoU and their unseen-class values,
and the params that differ between experiments, from ``dvc exp show --json``.

``dvc exp show`` itself lists every param, metric and dependency (hundreds of columns); this keeps what a
reader of the paper compares. ``fovseg runs`` prints :func:`experiments_table`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tabulate import tabulate

from pipeline.report.table_format import NA, fmt
from pipeline.tracking import flatten

HEADLINE = ("PQ", "PQ_unseen", "mIoU", "mIoU_unseen")  # per benchmark, in this order
EVAL_FILE = re.compile(r"^metrics/eval/(?P<bench>[^/]+)\.json$")


def dvc_exp_show(repo: str | Path = ".", dvc_args: Sequence[str] = ()) -> list[dict]:
    """``dvc exp show --json [dvc_args]`` in ``repo``, parsed (DVC of this interpreter's environment, no shell)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *dvc_args]
    res = subprocess.run(cmd, cwd=str(repo), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"`dvc exp show --json` failed ({res.returncode}): {res.stderr.strip() or res.stdout}")
    text = res.stdout.strip()
    return json.loads(text) if text else []


def _states(exp_show: list[dict]) -> list[tuple[dict, str, str]]:
    """(state, experiment label, kind) for every baseline commit (or workspace) and every experiment under it."""
    out = []
    for base in exp_show:
        label = base.get("name") or ("workspace" if base.get("rev") == "workspace" else (base.get("rev") or "")[:7])
        out.append((base, label, "workspace" if base.get("rev") == "workspace" else "baseline"))
        for rng in base.get("experiments") or []:
            revs = rng.get("revs") or []
            if not revs:
                continue
            state = revs[0]  # the experiment's final state
            name = rng.get("name") or state.get("name") or (state.get("rev") or "")[:7]
            out.append((state, name, (rng.get("executor") or {}).get("state") or "experiment"))
    return out


def experiment_rows(exp_show: list[dict]) -> tuple[list[dict], list[str], dict[str, dict]]:
    """One dict per experiment (``experiment``, ``rev``, ``created``, headline metrics as ``<bench> <metric>``),
    the headline columns in order, and each experiment's flattened params."""
    rows, params, columns = [], {}, {}
    for state, label, kind in _states(exp_show):
        data = state.get("data") or {}
        row: dict[str, Any] = {"experiment": label, "rev": (state.get("rev") or "")[:7]
                               if state.get("rev") != "workspace" else "workspace",
                               "created": (data.get("timestamp") or "")[:16].replace("T", " ") or None,
                               "state": kind if state.get("error") is None else "error"}
        for path, result in (data.get("metrics") or {}).items():
            m = EVAL_FILE.match(path)
            values = (result or {}).get("data") or {}
            if not m or not isinstance(values, dict):
                continue
            for metric in HEADLINE:
                v = values.get(metric)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    col = f"{m['bench']} {metric}"
                    row[col] = float(v)
                    columns.setdefault(col, (m["bench"], HEADLINE.index(metric)))
        flat: dict[str, Any] = {}
        for file, result in (data.get("params") or {}).items():
            pre = "" if file == "params.yaml" else f"{file}:"
            flat.update({pre + k: v for k, v in flatten((result or {}).get("data") or {}).items()})
        params[label + "\0" + row["rev"]] = flat
        rows.append(row)
    bench_order = list(dict.fromkeys(b for b, _ in columns.values()))
    ordered = sorted(columns, key=lambda c: (bench_order.index(columns[c][0]), columns[c][1]))
    return rows, ordered, params


def changed_params(params: dict[str, dict]) -> list[str]:
    """The params whose values differ between the experiments that have params (a key missing in one counts)."""
    have = [p for p in params.values() if p]
    keys = list(dict.fromkeys(k for p in have for k in p))
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in have}) > 1]


def experiments_frame(exp_show: list[dict]) -> pd.DataFrame:
    """The table as a DataFrame: experiment, rev, created, the headline columns, the params that differ."""
    rows, headline, params = experiment_rows(exp_show)
    differ = changed_params(params)
    records = []
    for row, flat in zip(rows, params.values()):
        rec = {k: row.get(k) for k in ("experiment", "rev", "created")}
        rec.update({c: row.get(c) for c in headline})
        rec.update({k: (json.dumps(flat[k]) if isinstance(flat.get(k), (list, dict)) else flat.get(k))
                    if k in flat else None for k in differ})
        records.append(rec)
    df = pd.DataFrame(records, columns=["experiment", "rev", "created", *headline, *differ], dtype=object)
    df[headline] = df[headline].astype(float)
    df.attrs["headline"], df.attrs["params"] = headline, differ
    return df


def experiments_table(exp_show: list[dict] | None = None, *, repo: str | Path = ".",
                      dvc_args: Sequence[str] = (), tablefmt: str = "github") -> str:
    """The experiment table as text: one row per commit / experiment (``dvc exp show``'s rows), columns
    ``experiment``, ``rev``, ``created``, ``<benchmark> PQ``, ``<benchmark> PQ_unseen``, ``<benchmark> mIoU``,
    ``<benchmark> mIoU_unseen`` (one decimal, ``n/a`` where the benchmark has no such value) and every param
    whose value differs between the rows.

    ``exp_show``: an already parsed ``dvc exp show --json`` (tests); else it runs in ``repo`` with ``dvc_args``
    (e.g. ``["-A"]`` for all commits, ``["--rev", "HEAD~3", "-n", "4"]``). ``tablefmt``: tabulate's format
    (``github`` = Markdown, ``simple`` = plain text)."""
    if exp_show is None:
        exp_show = dvc_exp_show(repo, dvc_args)
    df = experiments_frame(exp_show)
    if df.empty:
        return "No experiments (`dvc exp show` lists none)."
    metrics = set(df.attrs["headline"])
    cells = df.astype(object).where(df.notna(), None)  # NaN (a metric the row does not have) -> n/a
    rows = [[fmt(v) if c in metrics else NA if v is None else str(v) for c, v in zip(df.columns, r)]
            for r in cells.itertuples(index=False)]
    return tabulate(rows, headers=list(df.columns), tablefmt=tablefmt, disable_numparse=True)
