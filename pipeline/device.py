"""Where a process computes: the device (``device`` param), CPU threads (``runtime.threads``), seeds."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from pipeline.errors import ParamsError

log = logging.getLogger("fovseg")
_warned_cpu_fallback = False


class DeviceUnavailableError(ParamsError):
    """params ask for a device this machine does not have."""


def set_threads(threads: int) -> None:
    """``runtime.threads``: the CPU threads torch uses in this process (0 = torch's default, all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)


def pick_device(choice: str = "auto") -> torch.device:
    """``cuda`` (the paper preset) stops with a clear message when no GPU is visible; ``auto`` uses CUDA when
    there is one and otherwise warns once per process that it runs on CPU (the toy preset); ``cpu`` forces CPU."""
    global _warned_cpu_fallback
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device: 'cuda' requested but no CUDA device is visible (no GPU, no driver, "
                                     "or a CPU-only torch build; check `nvidia-smi` and "
                                     "CUDA_VISIBLE_DEVICES). Run on a GPU machine, or force CPU explicitly with "
                                     "`dvc exp run -S device=cpu` / `device: cpu` in params.yaml (the paper preset "
                                     "then takes days)")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
        if choice == "cpu" and not _warned_cpu_fallback:
            _warned_cpu_fallback = True
            first = _first_notice_of_this_run("cpu-fallback")
            log.log(logging.WARNING if first else logging.DEBUG, "device: auto found no CUDA device: running on CPU "
                    "(set device: cpu to make this explicit)")
    if choice == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", local_rank_gpu(int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()))
    return torch.device(choice)


def _first_notice_of_this_run(notice: str) -> bool:
    """Whether this process is the first of the pipeline run (its stages share a run group, see
    :func:`pipeline.tracking.run_group`) to give ``notice``: a marker file in the temp folder says so."""
    import tempfile
    from pathlib import Path

    from pipeline.tracking import run_group

    marker = Path(tempfile.gettempdir()) / f"fovseg-{notice}-{run_group()}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False
    except OSError:  # no writable temp folder: say it every time rather than never
        return True


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


def init_seed_and_device(seed: int, device: str) -> torch.device:
    seed_everything(seed)
    return pick_device(device)
