"""The pipeline as DVC resolves it (``dvc.yaml`` with params interpolated), for tests that check its stages."""
from __future__ import annotations

import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stages(root: Path = REPO) -> dict[str, dict]:
    """Stage name (``evaluate@toy_val`` for foreach items) -> ``{"cmd", "deps", "outs"}``, resolved by DVC."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            if not getattr(st, "cmd", None):
                continue
            rel = [str(Path(o.def_path)) for o in st.outs]
            files = [d for d in st.deps if not hasattr(d, "params")]
            out[st.name] = {"cmd": st.cmd, "deps": [str(d.def_path) for d in files],
                                  "outs": rel, "metrics": [str(o.def_path) for o in st.outs if o.metric],
                                  "params": [k for d in st.deps if hasattr(d, "params") for k in (d.params or [])]}
    return out


def command(stage: dict) -> tuple[str, list[str]]:
    """(module, argv) of a ``python -m <module> <args>`` stage command."""
    argv = shlex.split(stage["cmd"])
    if argv[:2] != ["python", "-m"]:
        raise ValueError(f"stage command is not `python -m ...`: {stage['cmd']}")
    return argv[2], argv[3:]


def argument(stage: dict, flag: str) -> str:
    _, argv = command(stage)
    return argv[argv.index(flag) + 1]
