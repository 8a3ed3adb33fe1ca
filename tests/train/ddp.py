"""Helpers for the two-process DDP tests (gloo on loopback): a free port and one rank's set-up."""
from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank_with_toy_model(rank: int, world: int, port: int, toy_root: str):
    """Join the process group as ``rank`` and build the same seeded tiny FOV-Seg (f_q trainable) on every rank;
    returns (model, toy_train dataset)."""
    import torch

    from models.classifier import FOVSeg
    from models.clip_backbone import build_clip
    from models.mask_encoder import TevaConfig
    from models.trainable import select_trainable
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.registry import get_benchmark
    from pipeline.train.distributed import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "q")
    return model, BenchmarkDataset(get_benchmark("toy_train"), toy_root)
