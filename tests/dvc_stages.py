"""dvc.yaml as the tests see it: stages with ``foreach`` expanded and ``${...}`` resolved from params, so
tests run and check the stages with the paths dvc.yaml gives them instead of retyping them."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
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
    assert argv[:2] == ["python", "-m"], f"stage command is not `python -m ...`: {stage['cmd']}"
    return argv[2], argv[3:]


def paths(entries: list) -> list[str]:
    """Paths of a deps / outs / metrics / plots list (entries are strings or one-key mappings)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]
