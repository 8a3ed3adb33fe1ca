"""Presets: ``toy`` is the schema's defaults (pipeline/config.py); every ``<name>.yaml`` here overrides only the keys
it changes (``extends: <preset>`` first applies another preset). ``fovseg preset <name>`` writes
:func:`render_params` to params.yaml."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.config import Params, Section, to_dict
from pipeline.errors import ParamsError
from pipeline.params_file import params_from_dict, read_params_yaml

PRESET_DIR = Path(__file__).parent

def preset_names() -> list[str]:
    """``toy`` (the schema's defaults) and every ``pipeline/presets/<name>.yaml``."""
    return ["toy", *sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))]


def preset_overrides(name: str) -> dict:
    """The keys preset ``name`` changes (nested), its ``extends`` chain applied first."""
    if name == "toy":
        return {}
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"unknown preset {name!r}; valid: {preset_names()}")
    data = read_params_yaml(path) or {}
    base = data.pop("extends", None)
    return merge(preset_overrides(base), data) if base else data


def merge(base: dict, over: dict) -> dict:
    """``over`` laid onto ``base``, nested dicts merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_params(name: str) -> Params:
    """The schema's defaults with preset ``name``'s overrides, validated (unknown keys named)."""
    return params_from_dict(merge(to_dict(Params()), preset_overrides(name)), f"preset {name}")


def render_params(name: str) -> str:
    """params.yaml text for preset ``name``: every key, with the schema's descriptions as comments."""
    header = [f"# FOV-Seg parameters: the {name} preset. Written by `fovseg preset {name}` from the defaults in "
              "pipeline/config.py",
              f"# and {'no overrides' if name == 'toy' else f'pipeline/presets/{name}.yaml'}. Edit freely, or "
              "`dvc exp run -S key=value`; every key is validated when read.",
              "# Choices where the paper is silent: docs/choices.md."]
    return "\n".join(header + _render(preset_params(name), 0)) + "\n"


def _render(section: Section, indent: int) -> list[str]:
    lines = []
    for name, f in type(section).model_fields.items():
        value = getattr(section, name)
        pad = " " * indent
        if isinstance(value, Section):
            lines.append(f"{pad}{name}:" + (f"  # {f.description}" if f.description else ""))
            lines += _render(value, indent + 2)
        else:
            line = f"{pad}{name}: {_scalar(value)}"
            lines.append(f"{line:<40}  # {f.description}" if f.description else line)
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_][\w./-]*", value) and value.lower() not in ("true", "false", "null", "yes",
                                                                                     "no", "on", "off", "y", "n")
        return value if plain else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
