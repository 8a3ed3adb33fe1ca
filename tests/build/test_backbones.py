"""Toy backbones pre-training: both backbones in one call (CLIP then Mask2Former, each saved) and CLIP's
precision (bf16 only where the device has it natively)."""
from __future__ import annotations

import pytest
import torch

import pipeline.build.backbones as backbones
from pipeline.build.backbones import (
    TOY_CLIP_FILE,
    TOY_GENERATOR_DIR,
    autocast_step,
    native_bf16,
    pretrain_dtype,
    pretrain_toy_backbones,
)
from pipeline.errors import FovsegError, ParamsError
from pipeline.params_file import params_from_dict


def test_both_backbones_are_saved_and_the_generator_does_not_depend_on_clip(toy_root, tmp_path):
    """One call pre-trains and saves both; the generator's result is the one it gives alone (same seed)."""
    clip = dict(model="fovseg-tiny", steps=2, batch_size=8, lr=1e-3, weight_decay=0.1)
    gen = dict(benchmark="toy_train", image_size=32, steps=2, batch_size=2, lr=1e-3, weight_decay=0.05)
    both, curve = pretrain_toy_backbones(clip, gen, tmp_path / "a", toy_root, 0, torch.device("cpu"))
    assert len(curve) == 2 and (tmp_path / "a" / TOY_CLIP_FILE).is_file()
    assert (tmp_path / "a" / TOY_GENERATOR_DIR / "config.json").is_file()
    alone, _ = pretrain_toy_backbones(None, gen, tmp_path / "b", toy_root, 0, torch.device("cpu"))
    assert "clip_loss_first" not in alone and not (tmp_path / "b" / TOY_CLIP_FILE).exists()
    assert both["m2f_loss_first"] == pytest.approx(alone["m2f_loss_first"])
    assert both["m2f_loss_last"] == pytest.approx(alone["m2f_loss_last"])


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
    metrics, curve = pretrain_toy_backbones(clip, None, tmp_path, toy_root, 0, CPU)
    assert metrics["clip_pretrain_precision"] == "bf16"
    assert len(curve) == 2 and all(torch.isfinite(torch.tensor(curve)))
    state = torch.load(tmp_path / TOY_CLIP_FILE, weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # saved weights stay float32
