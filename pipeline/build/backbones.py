"""Backbones: pre-train the toy CLIP and toy Mask2Former, or locate the paper's pretrained weights.

``backbones.clip.pretrain.precision: bf16`` (or ``auto``: bf16 where the device has it natively, a CPU with
AVX512-BF16 or AMX, an Ampere+ GPU) runs CLIP's forward pass in bfloat16 and the contrastive loss in float32:
faster where bf16 is native, but another CLIP, so the toy preset keeps ``fp32`` (the measured trade-off is in
docs/choices.md). On an AVX2-only CPU bf16 is emulated and much slower, so ``auto`` stays in float32 there.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, get_args

import numpy as np
import torch
import torch.nn.functional as F

from models.clip_backbone import build_clip, clip_input_stats
from models.generators import build_mask2former
from pipeline.checkpoints import save_weights
from pipeline.config import Precision
from pipeline.console import progress
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark
from pipeline.data.toy import TOY_CLASSES, load_captions, render_scene
from pipeline.errors import FovsegError

log = logging.getLogger(__name__)

TOY_CLIP_FILE = "clip.pt"  # in the backbones stage's output folder: the toy CLIP pre-trained on the toy captions
TOY_GENERATOR_DIR = "mask2former"  # ... and the toy Mask2Former, a from_pretrained folder

PRECISIONS = get_args(Precision)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware (a CPU with AVX512-BF16 or AMX; an
    Ampere or newer GPU). Elsewhere bf16 is emulated: 6x slower than float32 for the toy CLIP step on AVX2."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                          "_is_amx_tile_supported"))
    return False


def pretrain_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a pre-training step: ``auto`` is bfloat16 where :func:`native_bf16`, else float32."""
    if precision not in PRECISIONS:
        raise FovsegError(f"backbones.clip.pretrain.precision: {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    native = native_bf16(device)
    if precision == "bf16" and not native:
        log.warning("backbones.clip.pretrain.precision: bf16 on %s is emulated (no native bfloat16): slower than "
                    "fp32; 'auto' would use fp32 here", device)
    return torch.bfloat16 if precision == "bf16" or native else torch.float32


@contextmanager
def autocast_step(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Forward pass of a training step in ``dtype`` (weights, gradients and optimiser stay float32). On a CPU,
    bfloat16 attention goes through SDPA's math kernel: the fused CPU kernel's bf16 backward is 5x slower than
    its float32 one, which would cancel the gain of the bf16 matrix products."""
    with ExitStack() as stack:
        if dtype != torch.float32:
            stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
            if device.type == "cpu":
                from torch.nn.attention import SDPBackend, sdpa_kernel
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


def pixel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,3,1,1) mean and std on the 0-255 scale, for normalising uint8-range batches."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255,
            torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)


def pretrain_clip(model_name: str, captions_root: Path, steps: int, batch_size: int, lr: float, weight_decay: float,
                  seed: int, device: torch.device, dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.nn.Module, object, dict]:
    """Contrastive pre-training (open_clip's ClipLoss) on the toy image-caption pairs, the forward pass in
    ``dtype`` (:func:`autocast_step`); the zero-shot check runs in float32."""
    from open_clip.loss import ClipLoss

    torch.manual_seed(seed)
    model, tokenizer = build_clip(model_name, allow_random=True, device=device)
    model.output_dict = True
    images, captions = load_captions(captions_root)
    tokens = tokenizer(captions)
    size = model.visual.image_size[0]
    mean, std = pixel_stats(*clip_input_stats(model), device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0, losses = time.perf_counter(), []
    bar = progress(range(steps), desc="pretrain CLIP")
    for _ in bar:
        idx = torch.randint(0, len(captions), (batch_size,), generator=gen)
        x = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).permute(0, 3, 1, 2).float().to(device)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        with autocast_step(dtype, device):
            out = model((x - mean) / std, tokens[idx].to(device))
        # the contrastive logits in float32: at logit scale 100, bf16's 8 bits would round them by up to 0.4
        loss = loss_fn(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    model.output_dict = False
    acc = zero_shot_accuracy(model, tokenizer, size, seed, device)
    return model, tokenizer, {"clip_loss_first": losses[0], "clip_loss_last": float(np.mean(losses[-10:])),
                              "clip_zero_shot_top1": acc, "clip_pretrain_seconds": time.perf_counter() - t0,
                              "clip_loss_curve": losses}


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, tokenizer, size: int, seed: int, device: torch.device,
                       n: int = 240) -> float:
    """Top-1 over the single-object thing classes (32) on freshly rendered images (chance ~3%)."""
    things = [c for c in TOY_CLASSES if c.info.isthing]
    stuffs = [c for c in TOY_CLASSES if not c.info.isthing]
    rng = np.random.default_rng([seed, 12345])
    prompts = [f"a photo of a {c.info.name}." for c in things]
    text = F.normalize(model.encode_text(tokenizer(prompts).to(device)), dim=-1)
    labels = rng.integers(0, len(things), n)
    ims = np.stack([render_scene([things[k]], [stuffs[rng.integers(len(stuffs))]], size, rng, min_area=1).image
                    for k in labels])
    mean, std = pixel_stats(*clip_input_stats(model), device)
    x = (torch.from_numpy(ims).permute(0, 3, 1, 2).float().to(device) - mean) / std
    img = F.normalize(model.encode_image(x), dim=-1)
    return float(((img @ text.t()).argmax(1).cpu().numpy() == labels).mean())


def pretrain_mask2former(train: BenchmarkDataset, image_size: int, steps: int, batch_size: int, lr: float,
                         weight_decay: float, seed: int, device: torch.device
                         ) -> tuple[torch.nn.Module, dict]:
    """Class-agnostic Mask2Former training on the seen split: every segment is one "object" class."""
    from models.generators import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(seed)
    model = build_mask2former("fovseg-tiny", image_size, random_init=True).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    mean, std = pixel_stats(IMAGENET_MEAN, IMAGENET_STD, device)
    gen = torch.Generator().manual_seed(seed)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def item(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in cache:
            s = train[i]
            masks, _ = s.segment_masks()
            img = F.interpolate(torch.from_numpy(s.image).permute(2, 0, 1)[None].float(), size=(image_size,) * 2,
                                mode="bilinear", align_corners=False)[0]
            m = F.interpolate(torch.from_numpy(masks)[None].float(), size=(image_size,) * 2, mode="nearest")[0]
            cache[i] = (img, m)
        return cache[i]

    t0, losses = time.perf_counter(), []
    bar = progress(range(steps), desc="pretrain Mask2Former")
    for _ in bar:
        idx = torch.randint(0, len(train), (batch_size,), generator=gen).tolist()
        items = [item(i) for i in idx]
        flips = torch.rand(batch_size, generator=gen) < 0.5
        imgs = torch.stack([im.flip(-1) if f else im for (im, _), f in zip(items, flips)]).to(device)
        masks = [(m.flip(-1) if f else m).to(device) for (_, m), f in zip(items, flips)]
        out = model(pixel_values=(imgs - mean) / std, mask_labels=masks,
                    class_labels=[torch.zeros(len(m), dtype=torch.long, device=device) for m in masks])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
    model.eval()
    return model, {"m2f_loss_first": losses[0], "m2f_loss_last": float(np.mean(losses[-10:])),
                   "m2f_pretrain_seconds": time.perf_counter() - t0, "m2f_loss_curve": losses}


def pretrain_generator_to(out_dir: Path, benchmark: str, root: Path, image_size: int, steps: int, batch_size: int,
                          lr: float, weight_decay: float, seed: int, device: torch.device) -> dict:
    """Pre-train the toy Mask2Former and save it to ``out_dir`` (Hugging Face layout); returns its metrics."""
    train = BenchmarkDataset(get_benchmark(benchmark), root)
    model, metrics = pretrain_mask2former(train, image_size, steps, batch_size, lr, weight_decay, seed, device)
    model.save_pretrained(out_dir)
    metrics.pop("m2f_loss_curve")
    return metrics


def pretrain_toy_backbones(clip: dict | None, generator: dict | None, out: Path, root: Path, seed: int,
                           device: torch.device) -> tuple[dict, list[float]]:
    """Pre-train the toy CLIP (``clip``: model, steps, batch_size, lr, weight_decay, precision) into
    ``out/clip.pt`` and then the toy Mask2Former (``generator``: benchmark, image_size, steps, batch_size, lr,
    weight_decay) into ``out/mask2former``; either may be None (not pre-trained here). Returns the metrics and
    CLIP's loss curve."""
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    curve: list[float] = []
    if clip:
        dtype = pretrain_dtype(clip.get("precision", "fp32"), device)
        model, _, m = pretrain_clip(clip["model"], root, clip["steps"], clip["batch_size"], clip["lr"],
                                    clip["weight_decay"], seed, device, dtype=dtype)
        save_weights(model.state_dict(), out / TOY_CLIP_FILE)  # atomic; a failed write names the file
        curve.extend(m.pop("clip_loss_curve"))
        metrics.update(m, clip_pretrain_precision="bf16" if dtype == torch.bfloat16 else "fp32")
    if generator:
        metrics.update(pretrain_generator_to(out / TOY_GENERATOR_DIR, root=root, seed=seed, device=device,
                                             **generator))
    return metrics, curve
