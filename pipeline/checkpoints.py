"""Checkpoint files that say when they are damaged.

:func:`save_checkpoint` writes atomically and stores a sha256 of the content (every tensor's bytes, dtype
and shape, and every other value) under the key ``sha256``; :func:`load_checkpoint` recomputes it, so a
bit flip is reported instead of loading silently, and a truncated file is one clear error naming the
path and what to do. A checkpoint written before digests existed loads without the check.

Every torch file the pipeline writes goes through :func:`save_weights` (atomic: a failed write, a full disk or a
folder without write permission is one clear error naming the file, and the previous file stays as it was); every
checkpoint it reads goes through :func:`load_checkpoint` (an empty, truncated or foreign file, or one this user may
not read, is one clear error naming it). An unreadable file is never taken for a damaged one: it is reported as a
permission problem and never set aside.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from pipeline.data.formats import atomic_path
from pipeline.errors import CheckpointError, FovsegError, permission_message

log = logging.getLogger(__name__)
DIGEST_KEY = "sha256"


def content_digest(obj: Any) -> str:
    """sha256 over a nested dict/list of tensors and plain values, independent of how it was serialised."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{obj!r}".encode())


def save_weights(obj: Any, path: str | Path) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path`` (umask file mode, unique temp name); a failed write raises a
    :class:`CheckpointError` naming ``path`` and leaves the previous file there untouched. Saved through a file
    object: given a path, torch names the archive's folder after the file, here the random temp name, and the same
    content would differ in bytes (and DVC hash) from run to run."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except (OSError, RuntimeError) as exc:  # RuntimeError: how torch's zip writer reports a failed write
        raise _write_error(Path(path), exc) from None


def _write_error(path: Path, exc: BaseException) -> CheckpointError:
    """One line for a failed write of ``path``: permission, full disk or the error's first line."""
    kept = "the previous file there, if any, is unchanged"
    if isinstance(exc, PermissionError):
        return CheckpointError(f"could not write checkpoint {path}: {permission_message(exc.filename or path)}; {kept}")
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc):
        try:
            why = f"disk full, {shutil.disk_usage(path.parent).free / 2**30:.1f} GiB free"
        except OSError:
            why = "disk full"
    else:
        why = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    return CheckpointError(f"could not write checkpoint {path} ({why}); {kept}: free space or fix the folder's "
                           "permissions, then re-run")


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Atomically write ``obj`` with its content digest (:func:`save_weights`)."""
    save_weights({**obj, DIGEST_KEY: content_digest(obj)}, path)


REGENERATE = "delete it and re-run the stage that writes it (`dvc repro train`)"


def check_file(path: Path, remedy: str = REGENERATE) -> None:
    """Raise a :class:`CheckpointError` unless ``path`` is a non-empty file this user may open."""
    try:
        st = path.stat()
        with open(path, "rb"):
            pass
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint: {permission_message(path)}") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be opened ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if st.st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes: a write that never finished); {remedy}")


@contextmanager
def load_errors(path: Path, remedy: str = REGENERATE, damaged: str = "is truncated or corrupt") -> Iterator[None]:
    """Around a ``torch.load`` of ``path`` (here or in a library): whatever a damaged file raises becomes one
    :class:`CheckpointError` naming it (``path`` ``damaged`` (the error); ``remedy``); a permission problem says so.
    Known errors (:class:`FovsegError`) pass unchanged."""
    try:
        yield
    except (FovsegError, MemoryError):
        raise
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint: {permission_message(path)}") from None
    except Exception as exc:  # unpickling a damaged file raises anything (IndexError, KeyError, ...)
        first = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        raise CheckpointError(f"checkpoint {path} {damaged} ({first}); {remedy}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load (``weights_only``) and verify a checkpoint; raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    check_file(path)
    with load_errors(path):
        obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict; delete it and "
                              "re-run `dvc repro train`")
    stored = obj.pop(DIGEST_KEY, None)
    if stored is not None and stored != content_digest(obj):
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (the file changed after it was written: "
                              "disk or copy error); delete it and re-run `dvc repro train`")
    return obj


def set_aside_folder(path: str | Path) -> Path:
    """Where checkpoints that must not be resumed go: ``<folder>.set-aside`` beside the checkpoint's folder.
    Outside it, because that folder is a DVC output (``persist: true``): old runs inside would be hashed and
    copied into the DVC cache at every commit (GBs each on the paper preset)."""
    folder = Path(os.path.abspath(path)).parent
    return folder.with_name(folder.name + ".set-aside")


def set_aside(path: str | Path, why: str) -> Path:
    """Move ``path`` to ``<folder>.set-aside/<name>.<why>-<time>`` (never over an earlier one) and return where."""
    path = Path(path)
    folder, stamp = set_aside_folder(path), time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    aside, n = folder / f"{path.name}.{why}-{stamp}", 1
    while aside.exists():
        aside, n = folder / f"{path.name}.{why}-{stamp}-{n}", n + 1
    shutil.move(path, aside)  # a rename on one filesystem
    return aside


def load_or_set_aside(path: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """A resume checkpoint: loaded if sound; if damaged, set aside (:func:`set_aside`, ``corrupt``) with a warning
    and None returned, so the run starts over instead of blocking ``dvc repro`` until someone deletes it."""
    path = Path(path)
    try:
        if not path.is_file():
            return None
        with open(path, "rb"):  # unreadable is not damaged: an error, never set aside
            pass
    except PermissionError:
        raise CheckpointError(f"cannot read the resume checkpoint: {permission_message(path)}; it was left "
                              "in place") from None
    try:
        return load_checkpoint(path, map_location)
    except CheckpointError as exc:
        aside = set_aside(path, "corrupt")
        log.warning("%s; set aside as %s, training starts over", exc, aside)
        return None


def trainable_state(model: torch.nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state a run produced: the parameters that train (``requires_grad``), not the frozen backbone weights
    the run rebuilds from their own files (a paper-size classifier: about 100 MB instead of 1.7 GB)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(exclude)}
    return {k: v for k, v in model.state_dict().items() if k in names}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                         exclude: tuple[str, ...] = ()) -> None:
    """Load a :func:`trainable_state` (or a whole state dict) into ``model``: every key must be one of the model's
    and every parameter the model trains (but ``exclude``) must be in it; a :class:`CheckpointError` names what
    does not fit."""
    keys = set(model.state_dict())
    unexpected = sorted(set(state) - keys)
    missing = sorted(n for n, p in model.named_parameters()
                     if p.requires_grad and not n.startswith(exclude) and n not in state)
    if unexpected or missing:
        what = (f"unexpected {unexpected[:3]}" if unexpected else "") + (" and " if unexpected and missing else "") + \
            (f"missing {missing[:3]}" if missing else "")
        raise CheckpointError(f"checkpoint {source} does not fit the model the params describe ({what}); retrain or "
                              "use the params it was trained with")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise CheckpointError(f"checkpoint {source} does not fit the model the params describe "
                              f"({str(exc).splitlines()[0]}); retrain or use the params it was trained with") from None
