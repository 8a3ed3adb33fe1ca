"""FOV-Seg mask classifier: CLIP with mask tokens, TeVA, the adapter and (training only) FiSeR."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.clip_backbone import clip_input_stats
from models.fiser import (
    FISER_CANDIDATES,
    FiserPredictor,
    FiserTextPredictor,
    default_tokenizer,
    fiser_loss,
    fiser_text_loss,
    label_tokens,
    pad_class_sets,
    text_tower,
)
from models.mask_encoder import MaskCLIPVisual, TevaConfig

FISER_VARIANTS = ("text_encoder", "embedding")
TEVA_TRAIN_TARGETS = ("image", "vocabulary")
MASK_CELLS = 4  # the adapter sees masks at 4x4 cells per patch, whatever the input resolution


def fit_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B,Q,H,W) masks to ``size``: max-pool when shrinking (a cell is on if any pixel is), nearest
    when growing; both keep "a patch is visible if any of its pixels is in the mask"."""
    b, q, h, w = masks.shape
    if (h, w) == tuple(size):
        return masks
    if q == 0 or b == 0:
        return masks.new_zeros(b, q, *size)
    flat = masks.reshape(b * q, 1, h, w)
    if h >= size[0] and w >= size[1]:
        flat = F.adaptive_max_pool2d(flat, size)
    else:
        flat = F.interpolate(flat, size=size, mode="nearest")
    return flat.reshape(b, q, *size)


def joint_dim(clip_model: nn.Module) -> int:
    """Dimension of CLIP's joint image-text space (CLIP or CustomTextCLIP)."""
    proj = getattr(clip_model, "text_projection", None)
    if proj is None and hasattr(clip_model, "text"):
        proj = getattr(clip_model.text, "text_projection", None)
        if proj is None:
            return int(clip_model.text.output_dim)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return int(proj.shape[-1])


class FOVSeg(nn.Module):
    """Classifies proposal masks against text embeddings of an arbitrary vocabulary.

    Built from an open_clip ``CLIP``; the visual tower is re-assembled (weights copied) into
    :class:`MaskCLIPVisual`, the text tower is kept to encode vocabularies (and, for FiSeR's
    ``text_encoder`` variant, the masked label sequences).

    ``teva_train_targets``: TeVA's [TGT] during training, when ``forward`` gets ``class_sets``:
    ``image`` = each image's ground-truth classes, padded to K_max with a key-padding mask (the
    paper's "Handling Variable Class Numbers"), or ``vocabulary`` = the whole training vocabulary.
    Without ``class_sets`` (evaluation) the targets are the vocabulary given, i.e. the benchmark's.
    """

    def __init__(self, clip_model: nn.Module, teva: TevaConfig | None = None, adapter_layers: int = 2,
                 adapter_channels: int = 16, fiser_layers: int = 0, fiser_heads: int = 4,
                 image_size: int | None = None, fiser_variant: str = "text_encoder",
                 teva_train_targets: str = "image", tokenizer=None, fiser_candidates: str = "image"):
        super().__init__()
        if fiser_candidates not in FISER_CANDIDATES:
            raise ValueError(f"unknown FiSeR candidates {fiser_candidates!r}; valid: {FISER_CANDIDATES}")
        if fiser_variant not in FISER_VARIANTS:
            raise ValueError(f"unknown FiSeR variant {fiser_variant!r}; valid: {FISER_VARIANTS}")
        if teva_train_targets not in TEVA_TRAIN_TARGETS:
            raise ValueError(f"unknown TeVA train targets {teva_train_targets!r}; valid: {TEVA_TRAIN_TARGETS}")
        embed_dim = joint_dim(clip_model)
        mean, std = clip_input_stats(clip_model)
        self.visual = MaskCLIPVisual(clip_model.visual, embed_dim, teva or TevaConfig(), adapter_layers,
                                     adapter_channels)
        clip_model.visual = None  # the re-assembled tower owns the weights now
        self.clip = clip_model
        self.fiser: nn.Module | None = None
        if fiser_layers > 0 and fiser_variant == "text_encoder":
            token_dim = text_tower(clip_model).token_embedding.embedding_dim
            self.fiser = FiserTextPredictor(embed_dim, token_dim, fiser_layers, fiser_heads)
        elif fiser_layers > 0:
            self.fiser = FiserPredictor(embed_dim, fiser_layers, fiser_heads)
        self.fiser_candidates = fiser_candidates
        self.teva_train_targets = teva_train_targets
        self.tokenizer = tokenizer  # CLIP's tokenizer (a plain callable), for set_label_names
        self.image_size = image_size or int(self.visual.native_grid[0] * self.visual.patch_size)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.embed_dim = embed_dim

    @property
    def mask_grid(self) -> int:
        """Side of the grid masks reach the encoder on at the training input size: MASK_CELLS per patch."""
        return self.image_size // self.visual.patch_size * MASK_CELLS

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def set_label_names(self, names: list[str], tokenizer=None) -> None:
        """The training vocabulary's class names (index i = class i of ``text_embeds``), BPE-tokenised for
        FiSeR's text_encoder variant; a no-op for the other variant or without FiSeR."""
        if isinstance(self.fiser, FiserTextPredictor):
            tok = tokenizer or self.tokenizer or default_tokenizer(self.clip)
            self.fiser.set_labels(label_tokens(tok, names))

    @torch.no_grad()
    def prepare_vocabulary(self, text_embeds: torch.Tensor) -> None:
        """Project a vocabulary's (C,E) embeddings through TeVA's g_k/g_v once; later inference calls with
        the same embeddings reuse them (the cache is also filled by the first such call). Always recomputes."""
        self.visual.target_keys_values(text_embeds, refresh=True)

    def encode_text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def preprocess(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8/float (B,3,H,W) in [0,255] -> normalised at ``size`` (default: square ``image_size``)."""
        x = images.float()
        size = tuple(size or (self.image_size, self.image_size))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor, masks: torch.Tensor, text_embeds: torch.Tensor,
                size: tuple[int, int] | None = None, fiser_class_sets: list[list[int]] | None = None,
                class_sets: list[list[int]] | None = None, extra_classes: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """images (B,3,H,W) in [0,255]; masks (B,Q,H,W) in [0,1]; text_embeds (C,E) normalised (the vocabulary
        classified against, and TeVA's targets); ``class_sets`` (training: each image's ground-truth class
        indices) make TeVA's targets per image when ``teva_train_targets == "image"``; with ``fiser_class_sets``
        (the same sets) also returns ``loss_fiser``. ``extra_classes`` (X,E): classified against after the
        vocabulary but never TeVA targets (training's no-object class, MaskCLIP's "other").

        Returns ``logits`` (B,Q,C+X) = scale * cosine, normalised ``mask_embeds`` and ``patch_embeds``."""
        x = self.preprocess(images, size)
        patch = self.visual.patch_size
        # binary masks pool exactly in half precision: on a GPU that halves the temporary of full-size masks
        # (16 x 100 x 1024 x 1024 at the paper's training crop: 3.4 instead of 6.7 GB)
        pool_dtype = torch.float16 if masks.dtype == torch.bool and masks.is_cuda else torch.float32
        m = fit_masks(masks.to(pool_dtype), (x.shape[-2] // patch * MASK_CELLS,
                                             x.shape[-1] // patch * MASK_CELLS)).float()
        targets, target_pad = text_embeds, None
        if class_sets is not None and self.teva_train_targets == "image":
            targets, valid = pad_class_sets(text_embeds, class_sets)
            target_pad = ~valid
        out = self.visual(x, m, targets, target_pad)
        mask_embeds = F.normalize(out["mask_embeds"], dim=-1)
        classes = text_embeds if extra_classes is None else torch.cat([text_embeds, extra_classes.to(text_embeds)])
        logits = self.logit_scale * mask_embeds @ classes.t()
        result = {"logits": logits, "mask_embeds": mask_embeds, "patch_embeds": out["patch_embeds"],
                  "image_embeds": F.normalize(out["image_embeds"], dim=-1)}
        if fiser_class_sets is not None and self.fiser is not None:  # training only; inside forward for DDP
            if isinstance(self.fiser, FiserTextPredictor):
                result["loss_fiser"] = fiser_text_loss(self.fiser, self.clip, text_embeds.float(), fiser_class_sets,
                                                       out["patch_embeds"].float(), candidates=self.fiser_candidates)
            else:
                result["loss_fiser"] = fiser_loss(self.fiser, text_embeds.float(), fiser_class_sets,
                                                  out["patch_embeds"].float(), candidates=self.fiser_candidates)
        return result
