"""Backbones: pre-train the toy CLIP and toy Mask2Former, or locate the paper's pretrained weights."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.clip_backbone import build_clip, clip_input_stats
from models.generators import build_mask2former
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.toy import TOY_CLASSES, load_captions, render_scene

log = logging.getLogger(__name__)


def pixel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,3,1,1) mean and std on the 0-255 scale, for normalising uint8-range batches."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255,
            torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)


def pretrain_clip(model_name: str, captions_root: Path, steps: int, batch_size: int, lr: float, weight_decay: float,
                  seed: int, device: torch.device) -> tuple[torch.nn.Module, object, dict]:
    """Contrastive pre-training (open_clip's ClipLoss) on the toy image-caption pairs."""
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
    bar = tqdm(range(steps), desc="pretrain CLIP")
    for _ in bar:
        idx = torch.randint(0, len(captions), (batch_size,), generator=gen)
        x = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).permute(0, 3, 1, 2).float().to(device)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        out = model((x - mean) / std, tokens[idx].to(device))
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
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
                         weight_decay: float, seed: int, device: torch.device) -> tuple[torch.nn.Module, dict]:
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
    bar = tqdm(range(steps), desc="pretrain Mask2Former")
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
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
    model.eval()
    return model, {"m2f_loss_first": losses[0], "m2f_loss_last": float(np.mean(losses[-10:])),
                   "m2f_pretrain_seconds": time.perf_counter() - t0, "m2f_loss_curve": losses}
