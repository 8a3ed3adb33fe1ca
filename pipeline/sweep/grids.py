"""Sweep grids as data: ``pipeline/sweep/grids/<name>.yaml`` lists named rows of dotted params overrides over the
base configuration (params.yaml + the preset's ``_base.yaml`` overrides). Every runnable row is validated by
building its :class:`Params` before anything starts; errors name the grid, the row and the key."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params, Section, to_dict
from pipeline.errors import ParamsError
from pipeline.params_file import params_from_dict
from pipeline.tracking import code_digest

GRID_DIR = Path(__file__).parent / "grids"  # the packaged grids: <name>.yaml, and _base.yaml per preset
ROW_KEYS = {"label", "overrides", "preset_overrides", "evaluation", "x", "presets", "unsupported", "pending_switches"}
GRID_KEYS = {"paper_table", "reference_row", "benchmarks", "rows", "x_key", "base"}
EVALUATION = {"classifier": ("trained", "untrained"), "masks": ("proposals", "oracle")}


class GridError(ParamsError):
    """A sweep grid names an unknown key or value."""


class RowNotExpressible(RuntimeError):
    """A grid row needs a switch the model or params cannot express yet."""


# ----------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Row:
    label: str
    overrides: dict[str, Any]  # dotted params keys -> values, the preset's own already merged in
    evaluation: dict[str, str] = field(default_factory=lambda: {"classifier": "trained", "masks": "proposals"})
    x: float | None = None
    blocked: str = ""  # why this row cannot run on this preset ("" = it can)


@dataclass(frozen=True)
class Grid:
    name: str
    paper_table: str
    reference_row: str
    benchmarks: tuple[str, ...]
    rows: tuple[Row, ...]
    base: dict[str, Any]  # preset base overrides applied before every row's
    x_key: str = ""

    def fingerprint(self, seeds: tuple[int, ...], params: Params, code: str) -> str:
        """Identifies a sweep: rows, seeds, benchmarks, the base params (``sweep`` runtime knobs aside) and the
        code version. The same command re-run finds its experiment again; any change starts a new one."""
        base = {k: v for k, v in to_dict(params).items() if k != "sweep"}
        blob = json.dumps({"rows": [dataclasses.asdict(r) for r in self.rows], "base": self.base, "seeds": seeds,
                           "benchmarks": self.benchmarks, "params": base, "code": code}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def experiment_name(grid: Grid, params: Params, seeds: tuple[int, ...]) -> str:
    """``<grid>-<preset>-<fingerprint>``: names the trial folders and Tune's experiment, so a changed grid, params
    or code (:func:`code_digest` of ``models/`` and ``pipeline/``, edits not yet committed included) never
    meets another configuration's finished trials or checkpoints, and a commit that leaves them alone (a README
    edit) does not orphan them."""
    return f"{grid.name}-{params.preset}-{grid.fingerprint(seeds, params, code_digest())}"


def available_grids() -> list[str]:
    folder = GRID_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def _read_yaml(name: str) -> tuple[str, str, dict]:
    """(grid name, where it was read, contents): a packaged grid name or a path to a grid YAML file."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise GridError(f"sweep grid file {name} not found")
        where = str(path)
    else:
        path = GRID_DIR / f"{name}.yaml"
        if not path.is_file():
            raise GridError(f"unknown sweep grid {name!r}; available: {available_grids()} (or pass a .yaml path)")
        where = f"pipeline/sweep/grids/{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GridError(f"sweep grid {where}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise GridError(f"sweep grid {where}: expected a mapping at the top level")
    return Path(where).stem, where, data


def _schema_has(key: str) -> bool:
    """Whether a dotted key names a value (not a section) of :class:`Params`."""
    cls: Any = Params
    for part in key.split("."):
        fields = getattr(cls, "model_fields", None)
        if fields is None or part not in fields:
            return False
        cls = fields[part].annotation
    return not (isinstance(cls, type) and issubclass(cls, Section))


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-4)``; unknown intermediate sections are created (validation names them)."""
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise GridError(f"override {key!r}: {p!r} is not a section")
    node[leaf] = value


def apply_overrides(base: dict, *layers: dict[str, Any]) -> dict:
    out = json.loads(json.dumps(base))
    for layer in layers:
        for k, v in layer.items():
            set_dotted(out, k, v)
    return out


def load_grid(name: str, params: Params) -> Grid:
    """Read, resolve for ``params.preset`` and validate a grid: every runnable row must build valid Params."""
    name, path, raw = _read_yaml(name)
    where = f"sweep grid {name!r} ({path})"
    bad = set(raw) - GRID_KEYS
    if bad:
        raise GridError(f"{where}: unknown key(s) {sorted(bad)}; valid: {sorted(GRID_KEYS)}")
    preset = params.preset
    base_all = yaml.safe_load((GRID_DIR / "_base.yaml").read_text()) or {}
    base = {**(base_all.get(preset) or {}), **((raw.get("base") or {}).get(preset) or {})}
    benches = (raw.get("benchmarks") or {}).get(preset)
    if not benches:
        raise GridError(f"{where}: no benchmarks for preset {preset!r} (key benchmarks.{preset})")
    rows: list[Row] = []
    for i, r in enumerate(raw.get("rows") or []):
        rows_here = _load_row(r, i, preset, where)
        if rows_here is not None:
            rows.append(rows_here)
    if not rows:
        raise GridError(f"{where}: no rows for preset {preset!r}")
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise GridError(f"{where}: duplicate row labels {sorted({x for x in labels if labels.count(x) > 1})}")
    ref = str(raw.get("reference_row", labels[0]))
    if ref not in labels:
        raise GridError(f"{where}: reference_row {ref!r} is not a row label; rows: {labels}")
    grid = Grid(name, str(raw.get("paper_table", "")), ref, tuple(benches), tuple(rows), base,
                str(raw.get("x_key", "")))
    for row in grid.rows:
        if not row.blocked:
            trial_params(params, trial_overrides(grid, row, params.sweep.seeds[0]), f"{where}, row {row.label!r}")
    return grid


def _load_row(r: Any, i: int, preset: str, where: str) -> Row | None:
    if not isinstance(r, dict) or "label" not in r:
        raise GridError(f"{where}: rows[{i}] must be a mapping with a 'label'")
    label = str(r["label"])
    here = f"{where}, row {label!r}"
    bad = set(r) - ROW_KEYS
    if bad:
        raise GridError(f"{here}: unknown key(s) {sorted(bad)}; valid: {sorted(ROW_KEYS)}")
    if r.get("presets") and preset not in r["presets"]:
        return None
    overrides = {**(r.get("overrides") or {}), **((r.get("preset_overrides") or {}).get(preset) or {})}
    evaluation = {"classifier": "trained", "masks": "proposals", **(r.get("evaluation") or {})}
    for k, v in evaluation.items():
        if k not in EVALUATION:
            raise GridError(f"{here}: unknown evaluation key {k!r}; valid: {sorted(EVALUATION)}")
        if v not in EVALUATION[k]:
            raise GridError(f"{here}: evaluation.{k}={v!r}; valid: {list(EVALUATION[k])}")
    pending = [p for p in r.get("pending_switches") or [] if not _schema_has(p)]
    blocked = (r.get("unsupported") or {}).get(preset, "")
    if pending:
        blocked = (f"needs the switch(es) {pending}, which the params schema / model cannot express yet; "
                   "the row runs once they exist")
    for key in overrides:
        if key not in pending and not _schema_has(key):
            raise GridError(f"{here}: unknown params key {key!r} in overrides")
    x = r.get("x")
    return Row(label, overrides, evaluation, float(x) if x is not None else None, str(blocked))


def trial_overrides(grid: Grid, row: Row, seed: int) -> dict[str, Any]:
    """Everything a trial changes over params.yaml: the preset's base overrides, the row's, and the seed."""
    return {**grid.base, **row.overrides, "seed": seed}


def trial_params(params: Params, overrides: dict[str, Any], source: str = "sweep trial") -> Params:
    """``params`` with dotted ``overrides`` applied, validated like params.yaml (errors name the key)."""
    try:
        return params_from_dict(apply_overrides(to_dict(params), overrides), source)
    except (ParamsError, TypeError) as exc:
        raise GridError(str(exc)) from None


def trial_name(row: Row, seed: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", row.label).strip("_") or "row"
    return f"{slug}__seed{seed}"


