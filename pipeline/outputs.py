"""Where the pipeline's outputs are, as dvc.yaml declares them (resolved by DVC itself), for the commands that
run outside ``dvc repro``: ``fovseg predict`` / ``attention`` (the trained model) and ``fovseg sweep``."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from pipeline.errors import FovsegError


def stage_argument(stage: str, flag: str) -> str:
    """The value ``dvc.yaml`` (in the current folder, resolved by DVC itself) passes to ``stage`` for ``flag``."""
    from dvc.repo import Repo

    if not Path("dvc.yaml").is_file():
        raise FovsegError(f"no dvc.yaml here to find where the pipeline writes ({stage} {flag}): run from the "
                          "repository root or pass the path explicitly")
    with Repo(".") as repo:
        argv = shlex.split(repo.stage.collect(stage)[0].cmd)
    return argv[argv.index(flag) + 1]


def dvc_var(name: str) -> str:
    """A top-level ``vars`` entry of ./dvc.yaml (paths that commands outside ``dvc repro`` also use)."""
    spec = yaml.safe_load(Path("dvc.yaml").read_text()) if Path("dvc.yaml").is_file() else {}
    for entry in spec.get("vars") or []:
        if isinstance(entry, dict) and name in entry:
            return str(entry[name])
    raise FovsegError(f"./dvc.yaml has no vars entry {name!r}: run from the repository root")


def model_paths(args: argparse.Namespace) -> None:
    """``--backbones`` / ``--checkpoint`` default to where dvc.yaml's backbones and train stages write."""
    if args.backbones is None:
        args.backbones = stage_argument("backbones", "--out")
    if args.checkpoint is None and not getattr(args, "zero_shot", False):
        args.checkpoint = str(Path(stage_argument("train", "--out")) / "last.pt")


def sweep_paths(args: argparse.Namespace, grid: str) -> None:
    """Unset ``fovseg sweep`` paths default to dvc.yaml's: the train stage's backbones and proposals, and the
    sweep outputs under ``vars: sweeps_out / sweeps_metrics`` (what the ``sweep@<grid>`` stage uses)."""
    if args.backbones is None:
        args.backbones = stage_argument("train", "--backbones")
    if args.proposals_root is None:
        args.proposals_root = str(Path(stage_argument("train", "--proposals")).parent)
    if args.out is None:
        args.out = f"{dvc_var('sweeps_out')}/{grid}"
    if args.metrics is None:
        args.metrics = f"{dvc_var('sweeps_metrics')}/{grid}.json"
