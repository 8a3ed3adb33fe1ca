"""Training data: images of the training benchmark with their stored proposals (and/or ground-truth masks), one
LSJ draw per image, batched per *step* so a step's batch depends on (seed, step) only.

A sample leaves the loader at the resolutions the model uses, not at the crop's: the image squashed to the
classifier's ``R x R`` input, every mask (proposals, ground-truth segments) on the classifier's mask grid
(``R / patch * 4`` cells a side: eq. 11's patch grid with the adapter's 4 x 4 cells per patch), masks bit-packed
for the trip between processes. Targets are not computed here: bipartite matching needs the classifier's
scores, so it runs in the training step (:mod:`models.matching`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.matching import IGNORE
from pipeline.data.loaders import BenchmarkDataset, Sample
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.semantic import with_class_segments
from pipeline.data.transforms import Window, crop_image, draw_lsj, sample_labels

# Decoded training samples (image, panoptic map, proposals) kept in memory, per loading process: the toy's
# whole training split stays decoded after its first epoch; a paper-scale split fills the budget with its first
# images and is read from disk as before.
SAMPLE_CACHE_BYTES = 256 * 2**20


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (..., H, ceil(W / 8)) uint8, 8 pixels a byte (numpy's packbits order)."""
    return torch.from_numpy(np.packbits(masks.numpy(), axis=-1))


def unpack_masks(packed: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_masks`, on ``packed``'s device."""
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed[..., None] >> shifts) & 1
    return bits.flatten(-2)[..., :width].bool()


@dataclass
class Batch:
    """One step's images and masks, padded to the longest: ``valid`` / ``gt_valid`` say which entries are real.

    ``masks`` and ``gt_masks`` are bit-packed (:meth:`proposal_masks` / :meth:`segment_masks` unpack them on a
    device); ``gt_labels`` is IGNORE at padding."""

    images: torch.Tensor  # (B,3,S,S) uint8: the classifier's input
    masks: torch.Tensor  # (B,Q,G,ceil(G/8)) uint8, packed proposal masks on the mask grid
    valid: torch.Tensor  # (B,Q) bool
    gt_masks: torch.Tensor  # (B,K,G,ceil(G/8)) uint8, packed ground-truth segments
    gt_labels: torch.Tensor  # (B,K) long
    class_sets: list[list[int]]  # ground-truth classes per image (FiSeR, TeVA's targets)
    grid: int

    def proposal_masks(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return unpack_masks(self.masks.to(device), self.grid)

    def segment_masks(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return unpack_masks(self.gt_masks.to(device), self.grid)

    def segments(self, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: (K_i,G,G) bool masks and (K_i,) labels of its ground-truth segments."""
        masks, labels = self.segment_masks(device), self.gt_labels.to(device)
        counts = self.gt_valid.sum(1).tolist()  # segments first, padding after (collate): slices, no host sync
        return [(m[:n], t[:n]) for m, t, n in zip(masks, labels, counts)]

    @property
    def gt_valid(self) -> torch.Tensor:
        return self.gt_labels != IGNORE


class TrainSet:
    """Images of the training benchmark with their stored proposals (and/or ground-truth masks as proposals).

    ``image_size``: the side of the image a sample carries (the classifier's R); ``grid``: the mask grid's side.
    """

    def __init__(self, ds: BenchmarkDataset, store: ProposalStore | None, crop_size: int, min_scale: float,
                 max_scale: float, mask_source: str, max_masks: int, *, image_size: int, grid: int,
                 data_fraction: float = 1.0, cache_bytes: int = SAMPLE_CACHE_BYTES):
        if mask_source in ("proposals", "both") and store is None:
            raise ValueError(f"mask_source={mask_source!r} needs a proposal store")
        self.ds, self.store, self.mask_source = ds, store, mask_source
        self.crop_size, self.min_scale, self.max_scale = crop_size, min_scale, max_scale
        self.max_masks, self.image_size, self.grid = max_masks, image_size, grid
        self.subset = training_subset(len(ds), data_fraction)
        self.cache_bytes, self._cached_bytes = cache_bytes, 0
        self._cache: dict[int, tuple[Sample, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.subset)

    def decoded(self, index: int) -> tuple[Sample, np.ndarray | None]:
        """The sample (a segment per class on semantic-only data) and its stored proposal masks (at the store's
        resolution), from the in-memory cache while it has room (read-only)."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        s = with_class_segments(self.ds.training_sample(self.subset[index]), self.ds.vocab)
        props = self.store[s.image_id][0] if self.mask_source in ("proposals", "both") else None
        size = sum(a.nbytes for a in (s.image, s.id_map, props) if a is not None)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[index] = (s, props)
            self._cached_bytes += size
        return s, props

    def load(self, index: int, rng: np.random.Generator) -> dict:
        """One LSJ draw of sample ``index``: image (3,S,S) uint8, proposal masks (P,G,G) bool (empty ones
        dropped, at most ``max_masks``), ground-truth segment masks (K,G,G) bool with labels (K,) (crowd regions
        and segments the crop lost left out) and the image's classes."""
        s, props = self.decoded(index)
        h, w = s.image.shape[:2]
        window = draw_lsj(h, w, self.crop_size, self.min_scale, self.max_scale, rng)
        image = torch.from_numpy(crop_image(s.image, window, self.image_size)).permute(2, 0, 1)
        gt_masks, gt_labels = self._segments(s, window)
        parts = [] if props is None else [torch.from_numpy(sample_labels(props, window, self.grid, (h, w)))]
        if self.mask_source in ("gt", "both"):
            parts.append(gt_masks)
        masks = torch.cat(parts) if parts else torch.zeros(0, self.grid, self.grid, dtype=torch.bool)
        masks = masks[masks.flatten(1).any(1)][: self.max_masks]
        return {"image": image, "masks": masks, "gt_masks": gt_masks, "gt_labels": gt_labels,
                "classes": sorted(set(gt_labels.tolist()))}

    def _segments(self, s: Sample, window: Window) -> tuple[torch.Tensor, torch.Tensor]:
        segs = [seg for seg in s.segments if not seg.iscrowd]
        ids = sample_labels(s.id_map, window, self.grid, s.id_map.shape)
        masks = torch.from_numpy(ids[None] == np.array([seg.id for seg in segs], np.int64)[:, None, None]) \
            if segs else torch.zeros(0, self.grid, self.grid, dtype=torch.bool)
        labels = torch.tensor([seg.label for seg in segs], dtype=torch.long)
        present = masks.flatten(1).any(1)
        return masks[present], labels[present]


def training_subset(n: int, fraction: float) -> list[int]:
    """Indices of a fixed subset of ``max(1, round(n * fraction))`` images, drawn from one seed-independent
    permutation: every training seed sees the same images, and a smaller fraction's images are a subset of a
    larger one's (Fig. 9)."""
    if fraction >= 1:
        return list(range(n))
    k = max(1, round(n * fraction))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(20_240_601))[:k].tolist())


def collate(items: list[dict], grid: int) -> Batch:
    """Pad the items' proposals and segments to the longest and pack them (:class:`Batch`)."""
    b = len(items)
    q = max((len(it["masks"]) for it in items), default=0)
    k = max((len(it["gt_labels"]) for it in items), default=0)
    masks = torch.zeros(b, q, grid, grid, dtype=torch.bool)
    valid = torch.zeros(b, q, dtype=torch.bool)
    gt = torch.zeros(b, k, grid, grid, dtype=torch.bool)
    labels = torch.full((b, k), IGNORE, dtype=torch.long)
    for i, it in enumerate(items):
        n, m = len(it["masks"]), len(it["gt_labels"])
        masks[i, :n], valid[i, :n] = it["masks"], True
        gt[i, :m], labels[i, :m] = it["gt_masks"], it["gt_labels"]
    return Batch(torch.stack([it["image"] for it in items]), pack_masks(masks), valid, pack_masks(gt), labels,
                 [it["classes"] for it in items], grid)


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
        if batch_size % world:
            raise ValueError(f"train.batch_size {batch_size} does not divide by train.gpus {world}")
        self.train_set, self.batch_size, self.seed = train_set, batch_size, seed
        self.per_rank = batch_size // world
        self.rank = rank

    def __len__(self) -> int:
        return 2**62  # indexed by step; the sampler says which steps

    def __getitem__(self, step: int) -> Batch:
        idx = batch_indices(step, self.batch_size, len(self.train_set), self.seed)
        idx = idx[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        rng = np.random.default_rng(data_seed(self.seed, step, self.rank))
        return collate([self.train_set.load(i, rng) for i in idx], self.train_set.grid)


def step_loader(batches: StepBatches, start: int, stop: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of steps ``start..stop-1`` in order, loaded by ``num_workers`` processes (0 = this one)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                                       collate_fn=_as_is)
