"""Process-level helpers: device choice, seeding, git commit, atomic metric files, logging."""
from __future__ import annotations

import logging
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ParamsError
from pipeline.data.formats import write_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def setup_logging() -> None:
    """Our loggers at $FOVSEG_LOG (default INFO); third-party chatter (open_clip, mlflow) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("fovseg", "pipeline", "stages", "models"):
        logging.getLogger(name).setLevel(os.environ.get("FOVSEG_LOG", "INFO"))
    logging.getLogger("mlflow").setLevel(logging.WARNING)


class DeviceUnavailableError(ParamsError):
    """params ask for a device this machine does not have."""


def pick_device(choice: str = "auto") -> torch.device:
    """``cuda`` (the paper preset) stops with a clear message when no GPU is visible; ``auto`` uses CUDA when
    there is one and otherwise warns that it runs on CPU (the toy preset); ``cpu`` forces CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device: 'cuda' requested but no CUDA device is visible (no GPU, no driver, "
                                     "or a CPU-only torch build; check `nvidia-smi` and "
                                     "CUDA_VISIBLE_DEVICES). Run on a GPU machine, or force CPU explicitly with "
                                     "`dvc exp run -S device=cpu` / `device: cpu` in params.yaml (the paper preset "
                                     "then takes days)")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
        if choice == "cpu":
            logging.getLogger("fovseg").warning("device: auto found no CUDA device: running on CPU "
                                                "(set device: cpu to make this explicit)")
    if choice == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", local_rank_gpu(int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()))
    return torch.device(choice)


def local_rank_gpu(local_rank: int, visible: int) -> int:
    """The GPU index of a torchrun worker: its local rank when every GPU of the node is visible (``torchrun
    --standalone``), 0 when a scheduler binds one GPU per task (CUDA_VISIBLE_DEVICES of one device)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise DeviceUnavailableError(f"LOCAL_RANK {local_rank} but only {visible} GPUs are visible to this process: set "
                                 "train.gpus to at most the GPUs of one node, or give each worker one GPU "
                                 "(CUDA_VISIBLE_DEVICES)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Metric JSONs are written atomically: a failed stage never leaves a half-written file."""
    write_json(path, _jsonable(metrics))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return round(float(obj), 6)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


def init_seed_and_device(seed: int, device: str) -> torch.device:
    seed_everything(seed)
    return pick_device(device)
