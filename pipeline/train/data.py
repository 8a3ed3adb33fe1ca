"""Training data: images of the training benchmark with their stored proposals (and/or ground-truth masks),
augmented by large-scale jitter, batched per *step* so a step's batch depends on (seed, step) only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.losses import IGNORE, assign_targets
from pipeline.data.loaders import BenchmarkDataset, Sample
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.semantic import with_class_segments
from pipeline.data.transforms import apply_joint, lsj_transform

# Decoded training samples (image, panoptic map, proposals) kept in memory, per loading process: the toy's
# whole training split (about 100 MiB) stays decoded after its first epoch, a third of a toy step's data
# loading; a paper-scale split fills the budget with its first images and is read from disk as before.
SAMPLE_CACHE_BYTES = 256 * 2**20


@dataclass
class Batch:
    images: torch.Tensor  # (B,3,S,S) uint8
    masks: torch.Tensor  # (B,Q,S,S) bool
    targets: torch.Tensor  # (B,Q) long, IGNORE for padding/unassigned
    class_sets: list[list[int]]  # ground-truth classes per image (FiSeR)


class TrainSet:
    """Images of the training benchmark with their cached proposals (and/or gt masks), augmented by LSJ."""

    def __init__(self, ds: BenchmarkDataset, store: ProposalStore | None, crop_size: int, min_scale: float,
                 max_scale: float, mask_source: str, assign_iou: float, max_masks: int, data_fraction: float = 1.0,
                 cache_bytes: int = SAMPLE_CACHE_BYTES):
        if mask_source in ("proposals", "both") and store is None:
            raise ValueError(f"mask_source={mask_source!r} needs a proposal store")
        self.ds, self.store, self.mask_source = ds, store, mask_source
        self.assign_iou, self.max_masks = assign_iou, max_masks
        self.transform = lsj_transform(crop_size, min_scale, max_scale)
        self.ids = ds.image_ids()
        self.subset = training_subset(len(ds), data_fraction)
        self.cache_bytes, self._cached_bytes = cache_bytes, 0
        self._cache: dict[int, tuple[Sample, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.subset)

    def decoded(self, index: int) -> tuple[Sample, np.ndarray | None]:
        """The sample (a segment per class on semantic-only data) and its stored proposal masks, from the
        in-memory cache while it has room (read-only: ``load`` copies before augmenting)."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        s = with_class_segments(self.ds[self.subset[index]], self.ds.vocab)
        props = self.store[s.image_id][0] if self.mask_source in ("proposals", "both") else None
        size = sum(a.nbytes for a in (s.image, s.id_map, s.semantic, props) if a is not None)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = (s, props)
            self._cached_bytes += size
        return s, props

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        s, props = self.decoded(index)
        parts = [props] if props is not None else []
        if self.mask_source in ("gt", "both"):
            parts.append(s.segment_masks()[0])
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
    """Indices of a fixed subset of ``max(1, round(n * fraction))`` images, drawn from one seed-independent
    permutation: every training seed sees the same images, and a smaller fraction's images are a subset of a
    larger one's (Fig. 9)."""
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


def data_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of step ``step``'s augmentation draws on DDP rank ``rank`` (rank 0: the single-process stream;
    the other ranks load other images and must not repeat its scale/crop/flip draws)."""
    base = seed * 1_000_003 + step
    return base if rank == 0 else (base * 7919 + rank) % 2**63


def _as_is(batch: Batch) -> Batch:
    return batch


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset over *steps*: item ``s`` is step ``s``'s collated batch (this rank's share).
    Its augmentation draws come from an RNG seeded by (seed, s), whichever process loads it."""

    def __init__(self, train_set: TrainSet, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.train_set, self.batch_size, self.seed = train_set, batch_size, seed
        self.per_rank = max(1, batch_size // world)
        self.rank = rank

    def __len__(self) -> int:
        return 2**62  # indexed by step; the sampler says which steps

    def __getitem__(self, step: int) -> Batch:
        idx = batch_indices(step, self.batch_size, len(self.train_set), self.seed)
        idx = idx[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data_seed(self.seed, step, self.rank))
            return collate([self.train_set.load(i) for i in idx])


def step_loader(batches: StepBatches, start: int, stop: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of steps ``start..stop-1`` in order, loaded by ``num_workers`` processes (0 = this one)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                                       collate_fn=_as_is)


