"""What a run prints: log levels, and progress bars that suit a terminal or a log file."""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def setup_logging() -> None:
    """Our loggers at $FOVSEG_LOG (default INFO); third-party chatter (open_clip, mlflow) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("fovseg", "pipeline", "stages", "models"):
        logging.getLogger(name).setLevel(os.environ.get("FOVSEG_LOG", "INFO"))
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar on a terminal; in a log file (stderr not a TTY) a plain line every 30 s instead of carriage
    returns that pile up into one very long line. ``TQDM_DISABLE=1`` turns bars off."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("ncols", 100)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, file=_LineFile() if not sys.stderr.isatty() else None, **kwargs)


class _LineFile:
    """stderr for tqdm outside a terminal: each refresh ends its line ('\\r' becomes '\\n')."""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()
