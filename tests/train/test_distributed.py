"""Device rule and multi-GPU relaunch (train.gpus) without GPUs."""
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.device import DeviceUnavailableError, pick_device
from pipeline.presets import preset_params
from pipeline.train import distributed as launch

REPO = Path(__file__).resolve().parents[2]


def test_paper_preset_without_cuda_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert preset_params("paper").device == "cuda"
    with pytest.raises(DeviceUnavailableError, match="device=cpu"):
        pick_device("cuda")
    assert pick_device("cpu").type == "cpu"  # explicitly forced


@pytest.mark.parametrize("local_rank,visible,gpu", [(3, 8, 3), (0, 8, 0), (5, 1, 0), (0, 1, 0)])
def test_torchrun_worker_takes_its_local_rank_or_the_one_gpu_it_is_given(monkeypatch, local_rank, visible, gpu):
    """torchrun --standalone shows every GPU (worker i takes cuda:i); a scheduler binding one GPU per task
    shows one (cuda:0), where cuda:LOCAL_RANK did not exist."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    assert pick_device("cuda") == torch.device("cuda", gpu)


def test_more_workers_than_visible_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(DeviceUnavailableError, match="LOCAL_RANK 5 but only 4 GPUs.*train.gpus"):
        pick_device("cuda")


def test_auto_warns_when_falling_back_to_cpu(monkeypatch, caplog):
    from pipeline import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_warned_cpu_fallback", False)
    monkeypatch.setenv("FOVSEG_RUN_GROUP", f"test-{time.time_ns()}")  # a new pipeline run: its first notice
    with caplog.at_level(logging.WARNING):
        assert pick_device("auto").type == "cpu"
    assert "no CUDA device" in caplog.text
    caplog.clear()
    monkeypatch.setattr(device, "_warned_cpu_fallback", False)  # another stage process of the same run: quiet
    with caplog.at_level(logging.WARNING):
        assert pick_device("auto").type == "cpu"
    assert "no CUDA device" not in caplog.text


def test_train_gpus_relaunches_under_torchrun(monkeypatch):
    calls = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert launch.relaunch_under_torchrun(1, "cpu", "stages.train", ["--x"]) is None
    assert launch.relaunch_under_torchrun(2, "cpu", "stages.train", ["--proposals", "p"]) == 0
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      "-m", "stages.train", "--proposals", "p"]]
    monkeypatch.setenv("LOCAL_RANK", "0")  # a torchrun worker trains itself
    assert launch.relaunch_under_torchrun(2, "cpu", "stages.train", []) is None


def test_train_gpus_beyond_visible_devices_is_refused(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="train.gpus"):
        launch.relaunch_under_torchrun(8, "cuda", "stages.train", [])
