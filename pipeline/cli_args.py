"""Arguments of ``fovseg predict`` and ``fovseg attention`` and their argparse types.

Kept apart from the commands (which need torch, the models and matplotlib) so that ``fovseg --help``,
``fovseg preset`` and argument errors answer without importing them.
"""
from __future__ import annotations

import argparse
import tempfile
from importlib import resources
from pathlib import Path


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
    """argparse type: a folder we can create and write into, checked before any model is built."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {path} ({exc.strerror or exc}); choose another "
                                         "folder") from None
    return text


def packaged_vocabularies() -> list[str]:
    """Names of the vocabularies shipped in ``pipeline/vocab/``."""
    return sorted(p.name[:-5] for p in (resources.files("pipeline") / "vocab").iterdir() if p.name.endswith(".json"))


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """``fovseg predict``'s arguments (run by :func:`pipeline.predict.run_predict`)."""
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote globs: 'imgs/*.jpg')")
    p.add_argument("--classes", default=None, help='comma-separated class names, e.g. "red circle, blue square"')
    p.add_argument("--stuff", default="", help='with --classes: comma-separated amorphous classes whose regions '
                                               'merge into one segment, e.g. "grass, sky"')
    p.add_argument("--vocab", default=None, help="a packaged vocabulary instead of --classes: " +
                   ", ".join(packaged_vocabularies()))
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--backbones", default=None, help="default: the backbones stage's --out in ./dvc.yaml")
    p.add_argument("--checkpoint", default=None, help="default: model.pt in the train stage's --out in ./dvc.yaml")
    p.add_argument("--zero-shot", action="store_true", help="skip the trained checkpoint (pretrained CLIP only)")
    p.add_argument("--threshold", type=unit_interval, default=0.3, help="minimum segment score, in [0, 1]")
    p.add_argument("--out", type=writable_dir, default="predictions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    """``fovseg attention``'s arguments (run by :func:`pipeline.attention.run_attention`)."""
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--classes", default=None, help='comma-separated class names (at most 12), e.g. "sky, grass"')
    p.add_argument("--vocab", default=None, help="a packaged vocabulary instead of --classes (at most 12 classes)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--backbones", default=None, help="default: the backbones stage's --out in ./dvc.yaml")
    p.add_argument("--checkpoint", default=None, help="default: model.pt in the train stage's --out in ./dvc.yaml")
    p.add_argument("--out", type=writable_dir, default="attention")
