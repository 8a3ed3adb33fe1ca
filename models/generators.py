"""Class-agnostic proposal generators: frozen Mask2Former (transformers) and the ground-truth oracle."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.clip_backbone import WeightsUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_mask2former_config(image_size: int = 96, num_queries: int = 16):
    """A Mask2Former small enough to train on CPU in minutes (toy preset and tests); one "object" class."""
    from transformers import Mask2FormerConfig, SwinConfig

    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=32, depths=[1, 1, 2, 1],
                          num_heads=[1, 2, 4, 8], window_size=6, drop_path_rate=0.0,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerConfig(backbone_config=backbone, feature_size=64, mask_feature_size=64, hidden_dim=64,
                             encoder_feedforward_dim=128, encoder_layers=2, decoder_layers=4, num_attention_heads=4,
                             dim_feedforward=128, num_queries=num_queries, train_num_points=2048,
                             id2label={0: "object"}, label2id={"object": 0})


def build_mask2former(name: str, image_size: int = 96, random_init: bool = False) -> nn.Module:
    """A hub id or local directory (``from_pretrained``), or ``fovseg-tiny`` with random weights."""
    from transformers import Mask2FormerForUniversalSegmentation

    if name == "fovseg-tiny":
        if not random_init:
            raise WeightsUnavailableError("fovseg-tiny has no published weights: pre-train it with the backbones "
                                          "stage or load its saved directory")
        return Mask2FormerForUniversalSegmentation(tiny_mask2former_config(image_size))
    local = Path(name).is_dir()
    try:
        return Mask2FormerForUniversalSegmentation.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"could not load Mask2Former {name!r} ({exc}). On a machine with internet run "
            f"`huggingface-cli download {name}` and copy ~/.cache/huggingface here, or set "
            "backbones.generator.name to a local directory saved with save_pretrained") from None


@dataclass
class Proposals:
    masks: np.ndarray  # (N,H,W) bool at the image's resolution
    scores: np.ndarray  # (N,) objectness


class Mask2FormerGenerator:
    """Frozen, batched, class-agnostic: objectness = 1 - P(no object); masks = sigmoid > threshold."""

    def __init__(self, model: nn.Module, input_size: int, max_proposals: int = 100, mask_threshold: float = 0.5,
                 min_area: int = 0, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.input_size, self.max_proposals = input_size, max_proposals
        self.mask_threshold, self.min_area, self.device = mask_threshold, min_area, device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """HxWx3 uint8 arrays -> a normalised (B,3,S,S) batch at the generator's input size."""
        batch = torch.stack([F.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None].float(),
                                           size=(self.input_size, self.input_size), mode="bilinear",
                                           align_corners=False, antialias=True)[0] for im in images])
        return (batch.to(self.device) - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[Proposals]:
        """images: HxWx3 uint8 arrays (any sizes) -> proposals at each image's resolution."""
        out = []
        res = self.model(pixel_values=self.preprocess(images))
        obj = 1 - res.class_queries_logits.softmax(-1)[..., -1]
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            order = obj[i].argsort(descending=True)
            probs = F.interpolate(res.masks_queries_logits[i:i + 1, order], size=(h, w), mode="bilinear",
                                  align_corners=False)[0].sigmoid()
            masks = (probs > self.mask_threshold).cpu().numpy()
            scores = obj[i, order].cpu().numpy()
            keep = masks.reshape(len(masks), -1).sum(1) > max(self.min_area, 0)
            masks, scores = masks[keep][: self.max_proposals], scores[keep][: self.max_proposals]
            out.append(Proposals(masks, scores.astype(np.float32)))
        return out


def oracle_proposals(gt_masks: np.ndarray) -> Proposals:
    """Ground-truth masks as proposals with objectness 1 (Fig. 2, Table IV(j))."""
    return Proposals(gt_masks.astype(bool), np.ones(len(gt_masks), np.float32))
