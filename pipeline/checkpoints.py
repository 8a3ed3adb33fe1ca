"""Checkpoint files that say when they are damaged.

:func:`save_checkpoint` writes atomically and stores a sha256 of the content (every tensor's bytes, dtype
and shape, and every other value) under the key ``sha256``; :func:`load_checkpoint` recomputes it, so a
bit flip is reported instead of loading silently, and a truncated file is one clear error naming the
path and what to do. A checkpoint written before digests existed loads without the check.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipeline.data.formats import atomic_path
from pipeline.errors import CheckpointError

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


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Atomically write ``obj`` with its content digest (umask file mode, unique temp name). Saved through a file
    object: given a path, torch names the archive's folder after the file, here the random temp name, and the
    same checkpoint would differ in bytes (and DVC hash) from run to run."""
    payload = {**obj, DIGEST_KEY: content_digest(obj)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load (``weights_only``) and verify a checkpoint; raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({str(exc).splitlines()[0]}); delete it "
                              "and re-run the stage that writes it (`dvc repro train`)") from None
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
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path, map_location)
    except CheckpointError as exc:
        aside = set_aside(path, "corrupt")
        log.warning("%s; set aside as %s, training starts over", exc, aside)
        return None
