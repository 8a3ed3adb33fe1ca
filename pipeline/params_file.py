"""Reading params files (:func:`load_params`) and explaining what is wrong with them: YAML with duplicate keys
refused and ``1e-3`` read as a number; every key must be in the file (a missing key is an error naming it and its
default, never a silent default); unknown keys, wrong types and out-of-range values are one line per key (path,
what is wrong, the value, the allowed range) naming the file."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import Params, to_dict
from pipeline.errors import ParamsError


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e-3`` as a float (YAML 1.2 / what researchers write;
    YAML 1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"duplicate key {key!r} (line {seen[key] + 1} and line "
                                  f"{key_node.start_mark.line + 1}); keep one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""")
# resolvers are per class: copy the inherited table before adding to it
_ParamsLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))


def read_params_yaml(path: str | Path) -> Any:
    """Parse a params YAML file: duplicate keys refused, ``1e-3`` read as a number."""
    path = Path(path)
    try:
        with path.open() as fh:
            return yaml.load(fh, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader subclass)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path} is not a text file (not UTF-8); restore it with `git checkout {path.name}` or "
                          "`fovseg preset toy --force`") from None


_EXPECTED = {"int_type": "expected an integer", "float_type": "expected a number", "bool_type": "expected true/false",
             "string_type": "expected a string", "tuple_type": "expected a list", "model_type": "expected a mapping",
             "dict_type": "expected a mapping"}
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def describe(err: dict, root: type) -> str:
    """One pydantic error as ``key.path: what is wrong, got <value>`` (the allowed range for range errors)."""
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    got = f"got {err.get('input')!r}"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key; valid keys here: {sorted(_fields_at(root, err['loc'][:-1]))}"
    if err["type"] == "value_error":  # our own checks: "<field>: message" inside the section at loc
        field, _, rest = msg.partition(": ")
        return f"{loc + '.' if loc else ''}{field}: {rest}" if rest else f"{loc}: {msg}"
    if err["type"] in _RANGE_ERRORS:
        return f"{loc}: must be in {_allowed_range(root, err['loc'])}, {got}"
    if err["type"] == "literal_error":
        return f"{loc}: must be one of {err['ctx']['expected']}, {got}"
    if err["type"] == "too_short":
        return f"{loc}: needs at least {err['ctx']['min_length']} item(s), {got}"
    return f"{loc}: {_EXPECTED.get(err['type'], msg)}, {got}"


def _field(root: type, loc: tuple) -> Any:
    """The pydantic FieldInfo at ``loc`` (a tuple item's loc ends with its index: the tuple's field)."""
    cls: Any = root
    info = None
    for part in loc:
        if isinstance(part, int):
            break
        info = cls.model_fields[part]
        cls = info.annotation
    return info


def _allowed_range(root: type, loc: tuple) -> str:
    """``[0, 3]``, ``(0, 1)``, ``[1, inf)``: the bounds a field declares."""
    lo, hi, lo_open, hi_open = "-inf", "inf", True, True
    for m in getattr(_field(root, loc), "metadata", []):
        for attr, is_open in (("gt", True), ("ge", False)):
            if getattr(m, attr, None) is not None:
                lo, lo_open = getattr(m, attr), is_open
        for attr, is_open in (("lt", True), ("le", False)):
            if getattr(m, attr, None) is not None:
                hi, hi_open = getattr(m, attr), is_open
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _fields_at(root: type, loc: tuple) -> set[str]:
    cls: Any = root
    for part in loc:
        cls = cls.model_fields[part].annotation if isinstance(part, str) else cls
    return set(getattr(cls, "model_fields", {}))


def missing_keys(data: dict, cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Schema keys absent from ``data`` (dotted paths), recursively."""
    out = []
    for name, f in cls.model_fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            out.append(key)
        elif isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) and isinstance(data[name], dict):
            out += missing_keys(data[name], f.annotation, key + ".")
    return out


def params_from_dict(data: Any, source: str = "<dict>", complete: bool = True) -> Params:
    """Build and validate :class:`Params` from a nested dict; errors name ``source``, the key and the value.
    ``complete``: every schema key must be present (params files); otherwise missing keys take the defaults."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        params = Params.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()  # an item's error also fails its list's checks: keep the item's
        lines = [describe(e, Params) for e in errors
                 if not any(o["loc"][:len(e["loc"])] == e["loc"] and len(o["loc"]) > len(e["loc"]) for o in errors)]
        raise ParamsError(f"{source}: " + "; ".join(lines[:5]) + (f" (and {len(lines) - 5} more)"
                                                                 if len(lines) > 5 else "")) from None
    if complete:
        missing = missing_keys(data, Params)
        if missing:
            defaults = to_dict(Params())
            shown = ", ".join(f"{k} (default: {_lookup(defaults, k)!r})" for k in missing[:5])
            raise ParamsError(f"{source}: missing key(s) {shown}{' ...' if len(missing) > 5 else ''}; add them "
                              "(defaults are never filled in silently), or regenerate the file with "
                              "`fovseg preset <name> --force`")
    return params


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every key must be present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found (looked in {Path.cwd()}): run from the repository "
                                "root, or pass --params PATH to an existing params file")
    data = read_params_yaml(path)
    if data is None:
        raise ParamsError(f"{path} is empty; restore the toy preset with `git checkout {path.name}` or "
                          "`fovseg preset toy --force` (built-in defaults are never used silently)")
    return params_from_dict(data, str(path))
