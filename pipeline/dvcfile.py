"""dvc.yaml read back: stages with ``foreach`` expanded and ``${...}`` resolved from params, so the tests and
the ``fovseg`` console script use the paths dvc.yaml gives the stages instead of retyping them."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]  # the source checkout
_VAR = re.compile(r"\$\{([^}]+)\}")


def _lookup(params: dict, dotted: str) -> Any:
    value: Any = params
    for part in dotted.strip().split("."):
        value = value[part]
    return value


def _resolve(obj: Any, params: dict) -> Any:
    if isinstance(obj, str):
        whole = _VAR.fullmatch(obj.strip())
        if whole:  # keep lists / numbers when the whole value is one variable
            return _lookup(params, whole.group(1))
        return _VAR.sub(lambda m: str(_lookup(params, m.group(1))), obj)
    if isinstance(obj, list):
        return [_resolve(v, params) for v in obj]
    if isinstance(obj, dict):
        return {_resolve(k, params): _resolve(v, params) for k, v in obj.items()}
    return obj


def stages(params: dict, dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    """Stage name (``evaluate@toy_val`` for foreach items) -> its resolved definition."""
    spec = yaml.safe_load(dvc_yaml.read_text())
    out: dict[str, dict] = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            for item in _resolve(stage["foreach"], params):
                out[f"{name}@{item}"] = _resolve(stage["do"], {**params, "item": item})
        else:
            out[name] = _resolve(stage, params)
    return out


def command(stage: dict) -> tuple[str, list[str]]:
    """(module, argv) of a ``python -m <module> <args>`` stage command."""
    argv = shlex.split(stage["cmd"])
    if argv[:2] != ["python", "-m"]:
        raise ValueError(f"stage command is not `python -m ...`: {stage['cmd']}")
    return argv[2], argv[3:]


def stage_argument(dvc_yaml: str | Path, stage: str, flag: str) -> str:
    """The value dvc.yaml passes to ``stage`` for ``flag`` (e.g. ``("train", "--out")``), params from the
    params.yaml beside it."""
    dvc_yaml = Path(dvc_yaml)
    params = yaml.safe_load((dvc_yaml.parent / "params.yaml").read_text())
    _, argv = command(stages(params, dvc_yaml)[stage])
    return argv[argv.index(flag) + 1]


def paths(entries: list) -> list[str]:
    """Paths of a deps / outs / metrics / plots list (entries are strings or one-key mappings)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]
