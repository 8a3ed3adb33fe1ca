"""Toy backbones pre-training: the thread schedule, the background process and running both at once."""
from __future__ import annotations

import time

import pytest
import torch

from pipeline.backbones import ThreadSchedule, in_background, pretrain_toy_backbones
from pipeline.errors import FovsegError


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_thread_schedule_switches_at_its_step(restore_threads):
    schedule = ThreadSchedule(before=1, switch_at=3, after=2)
    seen = []
    for step in range(5):
        schedule.apply(step)
        seen.append(torch.get_num_threads())
    assert seen == [1, 1, 1, 2, 2]


def test_a_failing_child_raises_with_its_traceback():  # success: the last test
    with pytest.raises(FovsegError, match="TypeError"), in_background(int, base=10) as result:
        result()


def test_leaving_the_block_early_stops_the_child():
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="CLIP failed"), in_background(sleep_then_return, seconds=60):
        raise RuntimeError("CLIP failed")
    assert time.perf_counter() - t0 < 30  # did not wait for the 60 s child


def test_both_backbones_at_once_match_one_after_the_other(toy_root, tmp_path, restore_threads):
    """The generator trained in its one-thread process is the one a one-thread run here gives; CLIP is written."""
    clip = dict(model="fovseg-tiny", steps=2, batch_size=8, lr=1e-3, weight_decay=0.1)
    gen = dict(benchmark="toy_train", image_size=32, steps=2, batch_size=2, lr=1e-3, weight_decay=0.05)
    torch.set_num_threads(2)
    both, curve = pretrain_toy_backbones(clip, gen, tmp_path / "a", toy_root, 0, torch.device("cpu"),
                                         "clip.pt", "m2f")
    assert torch.get_num_threads() == 2
    assert len(curve) == 2 and (tmp_path / "a" / "clip.pt").is_file()
    torch.set_num_threads(1)
    alone, _ = pretrain_toy_backbones(None, gen, tmp_path / "b", toy_root, 0, torch.device("cpu"), "clip.pt", "m2f")
    assert "clip_loss_first" not in alone
    assert both["m2f_loss_first"] == alone["m2f_loss_first"]
    assert both["m2f_loss_last"] == alone["m2f_loss_last"]
