"""Toy backbones pre-training: the thread schedule, the background process, running both at once, and CLIP's
precision (bf16 only where the device has it natively)."""
from __future__ import annotations

import time

import pytest
import torch

import pipeline.build.backbones as backbones
from pipeline.build.backbones import (
    ThreadSchedule,
    autocast_step,
    in_background,
    native_bf16,
    pretrain_dtype,
    pretrain_toy_backbones,
)
from pipeline.config import params_from_dict
from pipeline.errors import FovsegError, ParamsError


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


CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_native(monkeypatch, native):
    monkeypatch.setattr(backbones, "native_bf16", lambda device: native)
    assert pretrain_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert pretrain_dtype("fp32", CPU) == torch.float32


def test_forced_bf16_without_native_support_warns_and_obeys(monkeypatch, caplog):
    monkeypatch.setattr(backbones, "native_bf16", lambda device: False)
    assert pretrain_dtype("bf16", CPU) == torch.bfloat16
    assert "emulated" in caplog.text and "'auto'" in caplog.text


def test_unknown_precision_is_named():
    with pytest.raises(FovsegError, match="precision: 'fp16'"):
        pretrain_dtype("fp16", CPU)
    with pytest.raises(ParamsError, match=r"backbones\.clip\.pretrain\.precision"):
        params_from_dict({"backbones": {"clip": {"pretrain": {"precision": "fp16"}}}})


def test_native_bf16_reads_the_cpu_features(monkeypatch):
    for avx512_bf16, amx in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16(CPU) is (avx512_bf16 or amx)
    assert native_bf16(torch.device("meta")) is False


def test_bf16_step_computes_in_bf16_through_the_math_attention_and_keeps_fp32_weights():
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 5, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof, autocast_step(torch.bfloat16, CPU):
        out, _ = attn(x, x, x, need_weights=False)
    assert out.dtype == torch.bfloat16
    ops = {e.key for e in prof.key_averages()}
    assert not any("flash_attention" in op for op in ops)  # the fused CPU kernel's bf16 backward is the slow one
    out.float().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in attn.parameters())
    with autocast_step(torch.float32, CPU):
        assert attn(x, x, x, need_weights=False)[0].dtype == torch.float32
    assert torch.backends.cuda.flash_sdp_enabled()  # the kernel choice is restored


def test_clip_metrics_name_the_precision_used(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "native_bf16", lambda device: True)
    clip = dict(model="fovseg-tiny", steps=2, batch_size=8, lr=1e-3, weight_decay=0.1, precision="auto")
    metrics, curve = pretrain_toy_backbones(clip, None, tmp_path, toy_root, 0, CPU, "clip.pt", "m2f")
    assert metrics["clip_pretrain_precision"] == "bf16"
    assert len(curve) == 2 and all(torch.isfinite(torch.tensor(curve)))
    state = torch.load(tmp_path / "clip.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # saved weights stay float32
