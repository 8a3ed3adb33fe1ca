"""Arguments of ``fovseg predict`` and ``fovseg attention`` and their argparse types.

Kept apart from the commands (which need torch, the models and matplotlib) so that ``fovseg --help``,
``fovseg preset`` and argument errors answer without importing them.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline.data.vocab import packaged_vocabularies  # light: json and importlib only


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def writable_dir(text: str) -> str:
    """argparse type: a folder we can write into or create, checked before any model is built. Nothing is
    created here (a run that fails later leaves no empty folder): the folder, or its nearest existing parent,
    must be a writable folder."""
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write to {path}: {existing} is a file; choose another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {path} ({exc.strerror or exc} in {existing}); choose "
                                         "another folder") from None
    return text



CLASS_LIST_HELP = ("class names separated by commas or newlines, or @FILE (one name per line, # comments); "
                   "matched case-insensitively, so each name once")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml). Run from the "
                   "repository root, or pass --params, --backbones and --checkpoint")
    p.add_argument("--backbones", default=None, help="default: the backbones stage's --out in ./dvc.yaml")
    p.add_argument("--checkpoint", default=None, help="default: model.pt in the train stage's --out in ./dvc.yaml")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="default: the params file's device")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """``fovseg predict``'s arguments (run by :func:`pipeline.predict.run_predict`)."""
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote globs: 'imgs/*.jpg')")
    p.add_argument("--classes", default=None, help=f'{CLASS_LIST_HELP}, e.g. "red circle, blue square"')
    p.add_argument("--stuff", default="", help='with --classes: amorphous classes whose regions merge into one '
                                               'segment, e.g. "grass, sky" (same format as --classes)')
    p.add_argument("--vocab", default=None, help="instead of --classes: a packaged vocabulary (" +
                   ", ".join(packaged_vocabularies()) + ") or a vocabulary JSON file in their format")
    _add_model_arguments(p)
    p.add_argument("--zero-shot", action="store_true", help="skip the trained checkpoint (pretrained CLIP only)")
    p.add_argument("--threshold", type=unit_interval, default=0.3,
                   help="minimum segment score, in [0, 1] (default: 0.3)")
    p.add_argument("--out", type=writable_dir, default="predictions", help="output folder (default: predictions/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    """``fovseg attention``'s arguments (run by :func:`pipeline.attention.run_attention`)."""
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--classes", default=None, help=f'at most 12: {CLASS_LIST_HELP}, e.g. "sky, grass"')
    p.add_argument("--vocab", default=None, help="instead of --classes: a packaged vocabulary or vocabulary JSON "
                   "file (at most 12 classes)")
    _add_model_arguments(p)
    p.add_argument("--out", type=writable_dir, default="attention", help="output folder (default: attention/)")
