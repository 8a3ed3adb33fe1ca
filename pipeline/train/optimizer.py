"""The optimiser's parameter groups (backbone learning-rate multiplier, weight-decay exemptions) and the
learning-rate schedule (linear warmup, then poly or cosine decay to the total)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from models.trainable import is_backbone_parameter


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate at a step: linear warmup over ``warmup`` steps, then ``poly``
    (power 0.9) or ``cosine`` decay to ``total``; any other ``schedule`` is constant."""
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


NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm,
              torch.nn.LocalResponseNorm)
EMBEDDING_NAMES = ("token", "embed", "embedding", "class_embedding", "positional_embedding", "logit_scale")


def decay_exempt_names(model: torch.nn.Module, rule: str) -> set[str]:
    """Parameters without weight decay. ``norm+embed`` (MaskCLIP's detectron2 optimizer: WEIGHT_DECAY_NORM and
    WEIGHT_DECAY_EMBED 0.0, biases decayed): every parameter of a normalisation layer and every embedding
    (``nn.Embedding`` weights; learned tokens, position embeddings, the logit scale by name). ``1d``: every
    parameter with one dimension or none (biases, norm scales, single vectors)."""
    if rule == "1d":
        return {n for n, p in model.named_parameters() if p.ndim <= 1}
    exempt = set()
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if isinstance(module, NORM_TYPES) or isinstance(module, torch.nn.Embedding) or \
                    any(key in pname for key in EMBEDDING_NAMES):
                exempt.add(full)
    return exempt


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, backbone_mult: float,
                 decay_exempt: str = "norm+embed") -> list[dict]:
    """Backbone (pre-trained CLIP) weights get ``lr * backbone_mult``; the ``decay_exempt`` rule's parameters
    (:func:`decay_exempt_names`) get no weight decay. Each group is named (``backbone``/``new``, ``/no_decay``)
    for the logged learning rates."""
    exempt = decay_exempt_names(model, decay_exempt)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((is_backbone_parameter(name), name in exempt), []).append(p)
    return [{"params": ps, "lr": lr * (backbone_mult if bb else 1.0), "weight_decay": 0.0 if no_decay else weight_decay,
             "name": ("backbone" if bb else "new") + ("/no_decay" if no_decay else "")}
            for (bb, no_decay), ps in sorted(groups.items())]
