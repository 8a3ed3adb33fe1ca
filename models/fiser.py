"""FiSeR (training only): recover a masked class name from the image (paper eqs. 1-6).

For each image, its K ground-truth class embeddings are the "text tokens"; one of them is replaced
by a learnable [M] token, padding up to K_max by a learnable [PAD] token that is masked out of
attention and of the loss. A small transformer Predictor reads [text tokens, image tokens]; the
[M] output goes through a linear layer and is scored by cosine similarity against the image's K
class embeddings; the loss is cross-entropy towards the masked class.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FiserPredictor(nn.Module):
    def __init__(self, dim: int, layers: int = 2, heads: int = 4):
        super().__init__()
        if dim % heads:
            heads = math.gcd(dim, heads)
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.pad_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, class_embeds: torch.Tensor, class_valid: torch.Tensor, masked_index: torch.Tensor,
                image_tokens: torch.Tensor) -> torch.Tensor:
        """class_embeds (B,K,E), class_valid (B,K) bool, masked_index (B,), image_tokens (B,N,E) -> logits (B,K)
        (-inf at padding)."""
        b, k, _ = class_embeds.shape
        idx = torch.arange(k, device=class_embeds.device)
        is_masked = idx[None] == masked_index[:, None]
        tokens = torch.where(is_masked[..., None], self.mask_token.to(class_embeds.dtype), class_embeds)
        tokens = torch.where(class_valid[..., None], tokens, self.pad_token.to(class_embeds.dtype))
        seq = torch.cat([tokens + self.type_embed[0], image_tokens + self.type_embed[1]], dim=1)
        pad = torch.cat([~class_valid, torch.zeros(image_tokens.shape[:2], dtype=torch.bool,
                                                  device=class_valid.device)], dim=1)
        h = self.encoder(seq, src_key_padding_mask=pad)
        pred = self.out(h[torch.arange(b, device=h.device), masked_index])
        logits = self.logit_scale.exp() * F.normalize(pred, dim=-1).unsqueeze(1).mul(
            F.normalize(class_embeds, dim=-1)).sum(-1)
        return logits.masked_fill(~class_valid, float("-inf"))


def pad_class_sets(text_embeds: torch.Tensor, class_sets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each image's class embeddings from the vocabulary's (C,E) and pad to K_max.

    Returns (B,K_max,E) and the validity mask (B,K_max)."""
    k_max = max((len(s) for s in class_sets), default=0) or 1
    b, e = len(class_sets), text_embeds.shape[-1]
    out = text_embeds.new_zeros(b, k_max, e)
    valid = torch.zeros(b, k_max, dtype=torch.bool, device=text_embeds.device)
    for i, s in enumerate(class_sets):
        if s:
            out[i, :len(s)] = text_embeds[torch.as_tensor(s, device=text_embeds.device)]
            valid[i, :len(s)] = True
    return out, valid


def fiser_loss(predictor: FiserPredictor, text_embeds: torch.Tensor, class_sets: list[list[int]],
               image_tokens: torch.Tensor, generator: torch.Generator | None = None,
               masked_index: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over images that have at least one class (0 if none do)."""
    class_embeds, valid = pad_class_sets(text_embeds, class_sets)
    counts = valid.sum(1)
    if masked_index is None:
        r = torch.rand(len(class_sets), generator=generator).to(counts.device)
        masked_index = (r * counts.clamp_min(1)).long().clamp_max((counts - 1).clamp_min(0))
    has = counts > 0
    if not has.any():
        return image_tokens.sum() * 0.0
    logits = predictor(class_embeds[has], valid[has], masked_index[has], image_tokens[has])
    return F.cross_entropy(logits, masked_index[has])
