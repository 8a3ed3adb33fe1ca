"""Training loop: AdamW with a backbone multiplier, warmup + poly schedule, AMP and DDP on GPUs,
checkpoints every N iterations and on SIGTERM/SIGINT, exact resume, NaN guard.

Determinism: the batch of step ``s`` (which images, their augmentation, FiSeR's masked class) is a
function of (seed, s) only, so a run killed and resumed reaches the same weights as one that was not.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from models.classifier import FOVSeg
from models.losses import IGNORE, assign_targets, mask_classification_loss
from models.trainable import is_backbone_parameter
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.transforms import apply_joint, lsj_transform

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the run can be resumed."""


@dataclass
class Batch:
    images: torch.Tensor  # (B,3,S,S) uint8
    masks: torch.Tensor  # (B,Q,S,S) bool
    targets: torch.Tensor  # (B,Q) long, IGNORE for padding/unassigned
    class_sets: list[list[int]]  # ground-truth classes per image (FiSeR)


class TrainSet:
    """Images of the training benchmark with their cached proposals (and/or gt masks), augmented by LSJ."""

    def __init__(self, ds: BenchmarkDataset, store: ProposalStore | None, crop_size: int, min_scale: float,
                 max_scale: float, mask_source: str, assign_iou: float, max_masks: int, data_fraction: float = 1.0):
        if mask_source in ("proposals", "both") and store is None:
            raise ValueError(f"mask_source={mask_source!r} needs a proposal store")
        self.ds, self.store, self.mask_source = ds, store, mask_source
        self.assign_iou, self.max_masks = assign_iou, max_masks
        self.transform = lsj_transform(crop_size, min_scale, max_scale)
        self.ids = ds.image_ids()
        self.subset = training_subset(len(ds), data_fraction)

    def __len__(self) -> int:
        return len(self.subset)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        s = self.ds[self.subset[index]]
        gt_masks, gt_labels = s.segment_masks()
        parts = []
        if self.mask_source in ("proposals", "both"):
            props, _ = self.store[s.image_id]
            parts.append(props)
        if self.mask_source in ("gt", "both"):
            parts.append(gt_masks)
        masks = np.concatenate(parts) if parts else np.zeros((0, *s.image.shape[:2]), bool)
        img, ids, masks_t = apply_joint(self.transform, s.image, s.id_map, masks)
        segs = [seg for seg in s.segments if not seg.iscrowd]
        gt_t = torch.stack([ids == seg.id for seg in segs]) if segs else torch.zeros(0, *ids.shape, dtype=torch.bool)
        labels_t = torch.tensor([seg.label for seg in segs], dtype=torch.long)
        present = gt_t.flatten(1).any(1) if len(segs) else torch.zeros(0, dtype=torch.bool)
        keep = masks_t.flatten(1).any(1)
        masks_t = masks_t[keep][: self.max_masks]
        targets = assign_targets(masks_t, gt_t[present], labels_t[present], self.assign_iou)
        classes = sorted(set(labels_t[present].tolist()))
        return img, masks_t, targets, classes


def training_subset(n: int, fraction: float) -> list[int]:
    """Indices of a fixed subset of ``max(1, round(n * fraction))`` images (a seed-independent permutation, so
    every training seed and every smaller fraction's images are a prefix of the same order; Fig. 9)."""
    if fraction >= 1:
        return list(range(n))
    k = max(1, round(n * fraction))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(20_240_601))[:k].tolist())


def collate(items: list) -> Batch:
    q = max((m.shape[0] for _, m, _, _ in items), default=0)
    s = items[0][0].shape[-2:]
    masks = torch.zeros(len(items), q, *s, dtype=torch.bool)
    targets = torch.full((len(items), q), IGNORE, dtype=torch.long)
    for i, (_, m, t, _) in enumerate(items):
        masks[i, : len(m)] = m
        targets[i, : len(t)] = t
    return Batch(torch.stack([im for im, _, _, _ in items]), masks, targets, [c for *_, c in items])


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Indices of step ``step``'s batch: epochs are seeded permutations, so this depends on (seed, step) only."""
    perms: dict[int, torch.Tensor] = {}
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perms[epoch][pos]))
    return out


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "poly":
            return (1 - progress) ** 0.9
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0
    return f


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, backbone_mult: float) -> list[dict]:
    """Backbone (pre-trained CLIP) weights get ``lr * backbone_mult``; 1-D params get no weight decay."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (is_backbone_parameter(name), p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": lr * (backbone_mult if bb else 1.0), "weight_decay": 0.0 if flat else weight_decay}
            for (bb, flat), ps in groups.items()]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group when launched with WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def train(model: FOVSeg, train_set: TrainSet, text_embeds: Callable[[], torch.Tensor], *, out_dir: Path,
          iterations: int, batch_size: int, lr: float, weight_decay: float, backbone_lr_mult: float,
          warmup_iters: int, schedule: str, checkpoint_every: int, loss_weights: dict[str, float], amp: bool,
          seed: int, device: torch.device, config: dict, log_every: int = 10,
          on_metrics: Callable[[dict, int], None] | None = None,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train (or resume) into ``out_dir``; returns summary metrics. ``text_embeds()`` gives (C,E) embeddings
    of the training vocabulary (cached, or recomputed with gradients when the text tower trains)."""
    rank, world = _world()
    model.to(device).train()
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    opt = torch.optim.AdamW(param_groups(model, lr, weight_decay, backbone_lr_mult), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, warmup_iters, iterations))
    use_amp = amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    ckpt_path = out_dir / "last.pt"
    chash = config_hash(config)
    start, history, train_seconds = 0, [], 0.0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("config_hash") == chash:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start, history, train_seconds = ckpt["step"], ckpt["history"], ckpt.get("train_seconds", 0.0)
            log.info("resuming from %s at iteration %d", ckpt_path, start)
        else:
            log.info("ignoring %s: it was written with a different configuration", ckpt_path)

    def save(step: int) -> None:
        if rank == 0:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "step": step, "history": history,
                          "config_hash": chash, "train_seconds": train_seconds}, ckpt_path)

    stop = {"signal": None}

    def handler(signum, _frame):
        stop["signal"] = signum

    # signal handlers exist only in the main thread (a Ray Tune trial runs in another one: it resumes from
    # the last periodic checkpoint instead)
    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    per_rank = max(1, batch_size // world)
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc="train", disable=rank != 0)
    try:
        for step in bar:
            t0 = time.perf_counter()
            torch.manual_seed(seed * 1_000_003 + step)  # this step's augmentation and FiSeR draws
            idx = batch_indices(step, batch_size, len(train_set), seed)[rank * per_rank:(rank + 1) * per_rank]
            batch = collate([train_set.load(i) for i in idx])
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                text = text_embeds().to(device)
                use_fiser = model.fiser is not None and loss_weights.get("fiser", 0) > 0
                out = ddp_model(batch.images.to(device), batch.masks.to(device), text,
                                fiser_class_sets=batch.class_sets if use_fiser else None)
                terms = {"ce": mask_classification_loss(out["logits"].float(), batch.targets.to(device))}
                if use_fiser:
                    terms["fiser"] = out["loss_fiser"]
                loss = sum(loss_weights.get(k, 1.0) * v for k, v in terms.items())
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at iteration {step} (terms: "
                    f"{ {k: float(v) for k, v in terms.items()} }); the last good checkpoint is {ckpt_path}. "
                    "Lower train.lr or check the inputs")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            train_seconds += time.perf_counter() - t0
            row = {"step": step + 1, "loss": loss.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
                   "lr": sched.get_last_lr()[0]}
            history.append(row)
            if rank == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k.startswith("loss")},
                                refresh=False)
                if on_metrics and (step + 1) % log_every == 0:
                    on_metrics(row, step + 1)
            if on_step:
                on_step(step + 1)
            if (step + 1) % checkpoint_every == 0 or step + 1 == iterations:
                save(step + 1)
            if stop["signal"] is not None:
                save(step + 1)
                raise TrainingInterrupted(f"stopped by signal {stop['signal']} after iteration {step + 1}; "
                                          f"checkpoint {ckpt_path}; run the stage again to resume")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    its = (iterations - start) / train_seconds if train_seconds and iterations > start else 0.0
    return {"iterations": iterations, "resumed_from": start, "history": history, "train_seconds": train_seconds,
            "it_per_s": its}


def write_curve(history: list[dict], path: Path) -> None:
    """Training curve as CSV (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)
