"""The project's base exception, defined here so ``models`` (pure PyTorch) can raise it without importing
``pipeline``; :mod:`pipeline.errors` re-exports it with the pipeline's own error types."""
from __future__ import annotations


class FovsegError(Exception):
    """A known failure: its message alone (one line, no traceback) tells the user what to do."""


class WeightsUnavailableError(FovsegError, RuntimeError):
    """Pretrained weights could not be found or downloaded; the message says what to fetch."""
