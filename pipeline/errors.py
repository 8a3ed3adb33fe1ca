"""One error family: every known failure derives from :class:`FovsegError`.

The stage runner (``stages.common.run``) and the ``fovseg`` console script catch ``FovsegError`` in one
place and print one clear line (exit status 1, no traceback); anything else is a bug and keeps its traceback.
Each type also derives from the built-in exception it replaces, so ``except ValueError`` keeps working.
"""
from __future__ import annotations

from models.errors import FovsegError, WeightsUnavailableError

__all__ = ["FovsegError", "WeightsUnavailableError", "ParamsError", "DatasetError", "DownloadError",
           "UnknownBenchmarkError", "VocabularyError", "CheckpointError", "TrainingDiverged", "TrainingInterrupted",
           "permission_message"]


def permission_message(path: object) -> str:
    """What a PermissionError on ``path`` means, in any error's message: never "not found", never "corrupt"."""
    return (f"permission denied: {path} (this user may not read or write it, or may not enter one of its folders: "
            "check the permissions of it and its folders, e.g. with `ls -ld`)")


class ParamsError(FovsegError, ValueError):
    """A params file has an unknown key, a wrong type or an out-of-range value."""


class DatasetError(FovsegError, ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


class DownloadError(FovsegError, RuntimeError):
    """A download failed (HTTP error, checksum mismatch, full disk); the message says what to do."""


class UnknownBenchmarkError(FovsegError, KeyError):
    """A benchmark name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VocabularyError(FovsegError, ValueError):
    """A vocabulary is empty, has duplicate names or cannot be read."""


class CheckpointError(FovsegError, RuntimeError):
    """A checkpoint is missing, unreadable or cannot be resumed; the message names the file."""


class TrainingDiverged(FovsegError, RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(FovsegError, RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the run can be resumed."""
