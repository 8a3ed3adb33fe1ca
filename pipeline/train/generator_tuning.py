"""Table IV(b) "+ tune mask generator": the Mask2Former generator trains together with the classifier.

With ``model.tune_generator: true`` every training step
1. runs the generator on the augmented batch (the LSJ crops the classifier sees; Mask2Former's own
   train recipe is LSJ too) with the ground-truth segments as targets, so that transformers'
   ``Mask2FormerForUniversalSegmentation`` computes Mask2Former's losses (Hungarian matching, class
   CE with the no-object weight, mask BCE and dice on sampled points, on every decoder layer);
   that sum is the loss term ``generator``;
2. turns its current (live, detached) predictions into proposals exactly as the proposals stage does
   (objectness = 1 - P(no object), sigmoid > ``proposals.mask_threshold``, ``min_area``, at most
   ``proposals.max_proposals`` by objectness), brought to the classifier's mask grid, and the classifier
   classifies those instead of the stored proposals (the training step matches them to the segments).
   Ground-truth masks are added when ``train.mask_source`` is ``gt`` or ``both``.

Choices (the paper is silent):
- class labels for Mask2Former's loss: the training classes when the generator's label space has
  the training vocabulary's size (the COCO-panoptic Mask2Former trained on COCO-panoptic: its own
  recipe), otherwise one class "object" (0) for every segment, the class-agnostic recipe the toy
  generator is pre-trained with (and the only one for COCO-Stuff's 171 classes on a 133-class model);
- the whole generator is a pre-trained backbone for the optimiser (lr x ``train.backbone_lr_mult``);
- the generator runs in float32 (autocast off): transformers' matcher hands its cost matrix to
  scipy, which has no bfloat16;
- gradients of the generator are all-reduced by :meth:`GeneratorTuner.all_reduce_gradients`
  (it is excluded from the classifier's DDP wrapper, since it runs outside the classifier's forward).

``model.tune_generator: false`` (the default) leaves training exactly as it was: none of this runs.
The tuned generator is saved with ``save_pretrained``; pass that directory to the proposals stage
(``--generator``) to evaluate with it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.generators import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIZE_DIVISIBILITY,
    build_mask2former,
    objectness,
    select_proposals,
)

TUNER_NAME = "mask_generator"  # the tuner's attribute on the classifier while training


class GeneratorTuner(nn.Module):
    """Wraps a Mask2FormerForUniversalSegmentation for online training; ``forward(batch)`` returns the
    batch with live proposals and the loss terms."""

    def __init__(self, model: nn.Module, num_train_classes: int, *, mask_threshold: float = 0.5,
                 min_area: int = 0, max_proposals: int = 100, max_masks: int = 100, include_gt: bool = True,
                 size_divisibility: int = SIZE_DIVISIBILITY):
        super().__init__()
        self.model = model.train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.use_train_labels = int(model.config.num_labels) == num_train_classes
        self.mask_threshold, self.min_area = mask_threshold, min_area
        self.max_proposals, self.max_masks = max_proposals, max_masks
        self.include_gt, self.size_divisibility = include_gt, max(1, size_divisibility)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    # ------------------------------------------------------------------ hook API used by pipeline.train.recipe
    def attach(self, model: nn.Module) -> None:
        """Make the generator a submodule of the classifier for the run (optimiser, checkpoint, resume),
        kept out of the classifier's DDP wrapper."""
        model.add_module(TUNER_NAME, self.to(next(model.parameters()).device))
        names = [f"{TUNER_NAME}.{n}" for n, _ in self.named_parameters()] + \
                [f"{TUNER_NAME}.{n}" for n, _ in self.named_buffers()]
        if dist.is_available():
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)

    def detach_from(self, model: nn.Module) -> None:
        """Remove the generator again so the classifier's saved weights are the classifier's alone."""
        if model._modules.get(TUNER_NAME) is self:
            del model._modules[TUNER_NAME]
        model._ddp_params_and_buffers_to_ignore = []

    def all_reduce_gradients(self) -> None:
        """Average the generator's gradients over DDP ranks (no-op in a single process)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        for p in self.model.parameters():
            if p.grad is not None:  # the same parameters are unused on every rank (e.g. Swin's last norm)
                dist.all_reduce(p.grad)
                p.grad.div_(world)

    def save(self, directory: str | Path) -> None:
        """The tuned generator as a ``from_pretrained`` directory (for the proposals stage's --generator)."""
        self.model.save_pretrained(str(directory))

    # ------------------------------------------------------------------ the step
    def forward(self, batch):
        """``batch``: a :class:`pipeline.train.data.Batch` whose images are the crops (TrainSet with mask_source
        'gt' and image_size = the crop). Returns (batch with live proposals on its mask grid,
        {"generator": loss})."""
        from models.classifier import fit_masks
        from pipeline.train.data import pack_masks

        images = batch.images.to(self.mean.device)
        b, _, h, w = images.shape
        d = self.size_divisibility
        hp, wp = -(-h // d) * d, -(-w // d) * d
        gts = batch.segments(images.device)
        pixels = F.pad((images.float() - self.mean) / self.std, (0, wp - w, 0, hp - h))
        mask_labels = [F.pad(F.interpolate(m[None].float(), size=(h, w), mode="nearest")[0] if len(m) else
                             m.new_zeros(0, h, w, dtype=torch.float32), (0, wp - w, 0, hp - h)) for m, _ in gts]
        class_labels = [t if self.use_train_labels else torch.zeros_like(t) for _, t in gts]
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            out = self.model(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels)
        with torch.no_grad():
            probs = F.interpolate(out.masks_queries_logits.detach().float(), size=(hp, wp), mode="bilinear",
                                  align_corners=False)[..., :h, :w].sigmoid()
            obj = objectness(out.class_queries_logits.detach())
            items = []
            for i, (gt_m, _) in enumerate(gts):
                masks, _ = select_proposals(probs[i], obj[i], self.mask_threshold, self.min_area, self.max_proposals)
                masks = fit_masks(masks[None].float(), (batch.grid, batch.grid))[0].bool()
                if self.include_gt:
                    masks = torch.cat([masks, gt_m])
                items.append(masks[: self.max_masks].cpu())
        q = max((len(m) for m in items), default=0)
        padded = torch.zeros(b, q, batch.grid, batch.grid, dtype=torch.bool)
        valid = torch.zeros(b, q, dtype=torch.bool)
        for i, m in enumerate(items):
            padded[i, : len(m)], valid[i, : len(m)] = m, True
        return dataclasses.replace(batch, masks=pack_masks(padded), valid=valid), {"generator": out.loss}


def build_generator_tuner(generator_params, proposal_params, train_params, backbones_dir: str | Path,
                          num_train_classes: int) -> GeneratorTuner:
    """The tuner built from the ``backbones.generator``, ``proposals`` and ``train`` sections: the same
    generator the proposals stage uses."""
    gen_p, prop_p, tp = generator_params, proposal_params, train_params
    name = gen_p.name if gen_p.source == "hub" else str(Path(backbones_dir) / "mask2former")
    return GeneratorTuner(build_mask2former(name), num_train_classes, mask_threshold=prop_p.mask_threshold,
                          min_area=prop_p.min_area, max_proposals=prop_p.max_proposals, max_masks=tp.max_masks,
                          include_gt=tp.mask_source != "proposals")
