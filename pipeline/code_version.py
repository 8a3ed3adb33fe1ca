"""Which code produced a result: a sha256 of the project's sources, committed or not.

Kept in its own module so that only the stages that record it (train, sweep) depend on it in ``dvc.yaml``.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def code_digest(packages: tuple[str, ...] = ("models", "pipeline")) -> str:
    """sha256 of every ``.py`` file under the given packages: which code produced a result, committed or not
    (``git_commit`` misses uncommitted edits, and changes with every commit, a README edit included).
    Checkpoints record it (a finished one from other code is not resumed) and it keys sweep experiments (a
    re-run after a code change runs the trials again). Packages are located, not imported."""
    h = hashlib.sha256()
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_digest: package {name!r} not found")
        root = Path(spec.origin).parent
        for path in sorted(root.rglob("*.py")):
            h.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()
