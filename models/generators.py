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


def swin_b_mask2former_config(num_queries: int = 100, image_size: int = 384, num_labels: int = 133):
    """Mask2Former Swin-B, the COCO-panoptic architecture of ``facebook/mask2former-swin-base-coco-panoptic``, as a
    transformers config (random weights: the paper-shape smoke test and the GPU benchmark)."""
    from transformers import Mask2FormerConfig, SwinConfig

    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=128, depths=[2, 2, 18, 2],
                          num_heads=[4, 8, 16, 32], window_size=12, drop_path_rate=0.0,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    labels = {i: f"class_{i}" for i in range(num_labels)}
    return Mask2FormerConfig(backbone_config=backbone, num_queries=num_queries, id2label=labels,
                             label2id={v: k for k, v in labels.items()})


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


# Mask2Former's test-time recipe (detectron2 ResizeShortestEdge + ImageList padding): short side 800, long side
# at most 1333, padded bottom/right to a multiple of 32 (the backbone's coarsest stride).
PAPER_SHORT_SIDE, PAPER_MAX_SIDE, SIZE_DIVISIBILITY = 800, 1333, 32


@dataclass
class Proposals:
    masks: np.ndarray  # (N,H,W) bool at the image's resolution
    scores: np.ndarray  # (N,) objectness


def resize_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(h, w) after an aspect-preserving resize: short side ``short``, long side at most ``max_size``."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def default_max_size(short: int) -> int:
    """The long-side cap in Mask2Former's proportion (800 -> 1333)."""
    return int(round(short * PAPER_MAX_SIDE / PAPER_SHORT_SIDE))


def objectness(class_logits: torch.Tensor) -> torch.Tensor:
    """(..., K+1) class logits -> (...,) objectness 1 - P(no object) (class-agnostic proposals)."""
    return 1 - class_logits.float().softmax(-1)[..., -1]


def select_proposals(mask_probs: torch.Tensor, scores: torch.Tensor, threshold: float, min_area: int,
                     max_proposals: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q,H,W) probabilities + (Q,) objectness -> binary masks by descending objectness, dropping masks of
    ``min_area`` pixels or fewer, at most ``max_proposals``."""
    order = scores.argsort(descending=True)
    masks = mask_probs[order] > threshold
    keep = masks.flatten(1).sum(1) > max(min_area, 0)
    return masks[keep][:max_proposals], scores[order][keep][:max_proposals]


class Mask2FormerGenerator:
    """Frozen, batched, class-agnostic: objectness = 1 - P(no object); masks = sigmoid > threshold.

    Input geometry follows Mask2Former's test recipe: each image is resized keeping its aspect ratio
    (short side ``input_size``, long side at most ``max_size``), normalised, and padded bottom/right with
    zeros to the batch's largest size rounded up to ``size_divisibility``. Mask logits (1/4 resolution)
    are upsampled to the padded size, cropped to the resized image and resized to the original H x W,
    as detectron2's ``sem_seg_postprocess`` does. At training the generator sees the LSJ crop (a
    fixed square ``crop_size`` that is already divisible), which is Mask2Former's own train recipe.
    """

    def __init__(self, model: nn.Module, input_size: int, max_proposals: int = 100, mask_threshold: float = 0.5,
                 min_area: int = 0, device: str | torch.device = "cpu", *, max_size: int | None = None,
                 size_divisibility: int = SIZE_DIVISIBILITY):
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.input_size, self.max_proposals = input_size, max_proposals
        self.max_size = max_size if max_size is not None else default_max_size(input_size)
        if self.max_size < input_size:
            raise ValueError(f"generator max_size {self.max_size} is below its short side {input_size}")
        self.size_divisibility = max(1, size_divisibility)
        self.mask_threshold, self.min_area, self.device = mask_threshold, min_area, device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def describe(self) -> str:
        """The architecture in one phrase (for logs): ``Mask2Former: Swin backbone (embed 128, depths [...]), 100
        queries``."""
        cfg = self.model.config
        backbone = getattr(cfg, "backbone_config", None)
        arch = f"{type(backbone).__name__.removesuffix('Config')} backbone" if backbone is not None else "backbone"
        if backbone is not None and hasattr(backbone, "embed_dim"):
            arch += f" (embed {backbone.embed_dim}, depths {list(backbone.depths)})"
        return f"Mask2Former: {arch}, {cfg.num_queries} queries"

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """HxWx3 uint8 arrays -> (a normalised, zero-padded (B,3,Hp,Wp) batch, each image's resized (h, w))."""
        sizes = [resize_shape(*im.shape[:2], self.input_size, self.max_size) for im in images]
        d = self.size_divisibility
        hp = -(-max(h for h, _ in sizes) // d) * d
        wp = -(-max(w for _, w in sizes) // d) * d
        batch = torch.zeros(len(images), 3, hp, wp, device=self.device)
        for i, (im, (h, w)) in enumerate(zip(images, sizes)):
            x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float().to(self.device)
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            batch[i, :, :h, :w] = ((x - self.mean) / self.std)[0]
        return batch, sizes

    @staticmethod
    def masks_to_image(mask_logits: torch.Tensor, padded: tuple[int, int], resized: tuple[int, int],
                       out: tuple[int, int]) -> torch.Tensor:
        """(Q,h',w') logits at 1/4 of the padded input -> (Q,H,W) probabilities on the original image."""
        x = F.interpolate(mask_logits[None].float(), size=padded, mode="bilinear", align_corners=False)
        x = x[..., : resized[0], : resized[1]]
        return F.interpolate(x, size=out, mode="bilinear", align_corners=False)[0].sigmoid()

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[Proposals]:
        """images: HxWx3 uint8 arrays (any sizes) -> proposals at each image's resolution."""
        out = []
        pixels, sizes = self.preprocess(images)
        res = self.model(pixel_values=pixels)
        obj = objectness(res.class_queries_logits)
        for i, im in enumerate(images):
            probs = self.masks_to_image(res.masks_queries_logits[i], tuple(pixels.shape[-2:]), sizes[i],
                                        im.shape[:2])
            masks, scores = select_proposals(probs, obj[i], self.mask_threshold, self.min_area, self.max_proposals)
            out.append(Proposals(masks.cpu().numpy(), scores.cpu().numpy().astype(np.float32)))
        return out


def oracle_proposals(gt_masks: np.ndarray) -> Proposals:
    """Ground-truth masks as proposals with objectness 1 (Fig. 2, Table IV(j))."""
    return Proposals(gt_masks.astype(bool), np.ones(len(gt_masks), np.float32))
