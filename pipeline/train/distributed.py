"""Multi-GPU training through ``dvc repro``: the train stage relaunches itself under torchrun, and its workers
join one process group (rank 0 writes the results).

``train.gpus: N`` (N > 1) makes ``python -m stages.train ...`` (the stage's cmd in dvc.yaml) start
``python -m torch.distributed.run --standalone --nproc_per_node N -m stages.train ...`` and wait for it, so
DVC sees one command with one exit status. ``train.batch_size`` is the global batch: each of the N processes
takes ``batch_size // N`` images per iteration (see ``pipeline.training.train``).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch
import torch.distributed as dist

from pipeline.device import DeviceUnavailableError

log = logging.getLogger(__name__)


def torchrun_command(gpus: int, module: str, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", module, *argv]


def relaunch_under_torchrun(gpus: int, device: str, module: str, argv: list[str]) -> int | None:
    """Run ``module`` on ``gpus`` processes and return its exit code; None when this process should train
    itself (one GPU, or already a torchrun worker)."""
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return None
    if device != "cpu":  # device: cpu runs N gloo processes (tests); otherwise N GPUs must be visible
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible < gpus:
            raise DeviceUnavailableError(f"train.gpus: {gpus} but {visible} CUDA device(s) are visible; set "
                                         f"train.gpus to at most {max(visible, 1)} "
                                         f"(e.g. `dvc exp run -S train.gpus={max(visible, 1)}`)")
    cmd = torchrun_command(gpus, module, argv)
    log.info("train.gpus=%d: %s", gpus, " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or the only process: the one that writes results."""
    return world()[0] == 0


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group when launched with WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":  # bind this rank's GPU: NCCL and current-device queries use it, not cuda:0
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)


def close_distributed() -> None:
    """Leave the process group (torchrun workers), if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
