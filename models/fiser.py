"""FiSeR (training only): recover a masked class name from the image (paper eqs. 1-6).

Two variants (``model.fiser.variant``):

``text_encoder`` (default, eqs. 1-6 as written), :class:`FiserTextPredictor`: each image's label
sequence is ``[SOT] c1 , c2 , ... , cK [EOT]`` in CLIP's BPE (the class names joined by ", ", no
prompt template; the image's classes in their given order). One label's BPE tokens are *all*
replaced by one learnable [M] token embedding (in CLIP's token-embedding space), so the sequence
keeps the length of the unmasked one ("the Predictor receives the same number of tokens as in the
unmasked case"). CLIP's text transformer (frozen unless the text tower trains; gradients still flow
through it to [M]) turns it into per-token features O, projected to the joint space. A small
transformer Predictor reads [O, P] (P: the image's patch embeddings); its outputs at the [M]
positions are averaged and passed through a linear layer, then scored by cosine similarity against
the image's K class embeddings (eqs. 4-5: the cached vocabulary embeddings); cross-entropy (eq. 6).
Batching pads sequences with [PAD] (CLIP's 0 id after [EOT]; the text encoder is causal, so this
changes nothing before it) and masks padding out of the Predictor's attention; the K_max class
axis is padded and its logits set to -inf. Context length: the masked label always enters the
sequence (cut to what fits, if it alone is too long); the other labels are added while they fit,
first those after it in order, then those before it (nearest first); a label that does not fit is
left out of the *sequence* only (it stays a candidate in the K-way softmax). CLIP's positional
embeddings are never stretched.

``embedding`` (the earlier ablation), :class:`FiserPredictor`: the image's K pooled class
embeddings are the text tokens and [M] replaces one of them after the text encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

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
                image_tokens: torch.Tensor, embed_only: bool = False) -> torch.Tensor:
        """class_embeds (B,K,E), class_valid (B,K) bool, masked_index (B,), image_tokens (B,N,E) -> logits (B,K)
        (-inf at padding), or with ``embed_only`` the predicted embedding (B,E)."""
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
        if embed_only:
            return pred
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


FISER_CANDIDATES = ("image", "vocabulary")


def vocabulary_logits(pred: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B,E) predicted embeddings x (C,E) vocabulary -> (B,C) scaled cosine logits (eq. 5 over every class)."""
    return scale * F.normalize(pred, dim=-1) @ F.normalize(text_embeds, dim=-1).t()


def vocabulary_loss(pred: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor,
                    class_sets: list[list[int]], keep: list[int], masked_index: torch.Tensor) -> torch.Tensor:
    """Eq. 6 over the whole vocabulary: the target is the masked label's vocabulary index (``candidates:
    vocabulary``)."""
    logits = vocabulary_logits(pred, text_embeds, scale)
    targets = torch.tensor([class_sets[i][int(masked_index[i])] for i in keep], dtype=torch.long)
    return F.cross_entropy(logits, targets.to(logits.device))


def fiser_loss(predictor: FiserPredictor, text_embeds: torch.Tensor, class_sets: list[list[int]],
               image_tokens: torch.Tensor, generator: torch.Generator | None = None,
               masked_index: torch.Tensor | None = None, candidates: str = "image") -> torch.Tensor:
    """Mean cross-entropy over images that have at least one class (0 if none do); ``candidates`` as in
    :func:`fiser_text_loss`."""
    class_embeds, valid = pad_class_sets(text_embeds, class_sets)
    counts = valid.sum(1)
    if masked_index is None:
        r = torch.rand(len(class_sets), generator=generator).to(counts.device)
        masked_index = (r * counts.clamp_min(1)).long().clamp_max((counts - 1).clamp_min(0))
    has = counts > 0
    if not has.any():
        return image_tokens.sum() * 0.0
    if candidates == "vocabulary":
        keep = has.nonzero().flatten().tolist()
        pred = predictor(class_embeds[has], valid[has], masked_index[has], image_tokens[has], embed_only=True)
        return vocabulary_loss(pred, text_embeds, predictor.logit_scale.exp(), class_sets, keep, masked_index)
    logits = predictor(class_embeds[has], valid[has], masked_index[has], image_tokens[has])
    return F.cross_entropy(logits, masked_index[has])


# ---------------------------------------------------------------------------------------------------
# text_encoder variant


@dataclass(frozen=True)
class LabelTokens:
    """BPE ids of each vocabulary class name (without [SOT]/[EOT]) and the special ids."""

    names: tuple[tuple[int, ...], ...]
    sot: int
    eot: int
    sep: tuple[int, ...]  # the ", " between labels


def label_tokens(tokenizer: Callable[[list[str]], torch.Tensor], names: Sequence[str]) -> LabelTokens:
    """Tokenise class names with CLIP's tokenizer (a callable returning (N, context) ids, [SOT] first,
    [EOT] the largest id, 0 padding); names longer than the context are cut."""
    ids = tokenizer([*names, ","])

    def body(row: torch.Tensor) -> tuple[int, ...]:
        eot_pos = int(row.argmax())
        return tuple(int(t) for t in row[1:eot_pos])

    rows = [body(r) for r in ids]
    return LabelTokens(tuple(rows[:-1]), int(ids[0, 0]), int(ids[0].max()), rows[-1])


def build_label_sequence(tokens: LabelTokens, labels: Sequence[int], masked: int, context: int
                         ) -> tuple[list[int], list[int]]:
    """Ids of ``[SOT] c1 , ... , cK [EOT]`` for the vocabulary indices ``labels`` and the positions of
    the masked label ``labels[masked]``, fitted into ``context`` tokens (see the module docstring)."""
    room = context - 2
    mask_ids = list(tokens.names[labels[masked]])[: max(room, 1)] or [tokens.eot]
    keep = [masked]
    used = len(mask_ids)
    others = list(range(masked + 1, len(labels))) + list(range(masked - 1, -1, -1))
    for j in others:
        need = len(tokens.names[labels[j]]) + len(tokens.sep)
        if used + need <= room:
            keep.append(j)
            used += need
    seq, positions = [tokens.sot], []
    for n, j in enumerate(sorted(keep)):
        if n:
            seq.extend(tokens.sep)
        if j == masked:
            positions = list(range(len(seq), len(seq) + len(mask_ids)))
            seq.extend(mask_ids)
        else:
            seq.extend(tokens.names[labels[j]])
    seq.append(tokens.eot)
    return seq, positions


def default_tokenizer(clip: nn.Module) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's CLIP BPE tokenizer at the text tower's context length (for towers with CLIP's vocabulary)."""
    import open_clip

    tower = text_tower(clip)
    if tower.token_embedding.num_embeddings != 49408:
        raise ValueError("this text tower does not use CLIP's BPE vocabulary; pass its tokenizer explicitly")
    return open_clip.SimpleTokenizer(context_length=tower.positional_embedding.shape[0])


def text_tower(clip: nn.Module) -> nn.Module:
    """The module holding open_clip's text transformer (``CLIP`` itself, or ``CustomTextCLIP.text``)."""
    tower = clip if hasattr(clip, "token_embedding") else getattr(clip, "text", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if tower is None or not all(hasattr(tower, a) for a in needed):
        raise ValueError("FiSeR's text_encoder variant needs an open_clip text transformer (token_embedding, "
                         "positional_embedding, transformer, ln_final); use model.fiser.variant=embedding")
    return tower


def encode_token_embeddings(clip: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """CLIP's text transformer on token embeddings (B,L,W), L <= context -> per-token features (B,L,E)
    in the joint space (ln_final + text projection applied to every position)."""
    tower = text_tower(clip)
    L = embeds.shape[1]
    x = embeds + tower.positional_embedding[:L].to(embeds.dtype)
    mask = getattr(tower, "attn_mask", None)
    x = tower.transformer(x, attn_mask=mask[:L, :L] if mask is not None else None)
    x = tower.ln_final(x)
    proj = getattr(tower, "text_projection", None)
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class FiserTextPredictor(nn.Module):
    """[M] token (CLIP token-embedding width ``token_dim``) + Predictor over [O, P] in the joint space ``dim``."""

    def __init__(self, dim: int, token_dim: int, layers: int = 2, heads: int = 4):
        super().__init__()
        if dim % heads:
            heads = math.gcd(dim, heads)
        self.mask_token = nn.Parameter(torch.randn(token_dim) * 0.02)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.labels: LabelTokens | None = None  # the training vocabulary's BPE ids (set_labels)

    def set_labels(self, tokens: LabelTokens) -> None:
        self.labels = tokens

    def sequences(self, class_sets: list[list[int]], masked_index: torch.Tensor, context: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ids (B,L), [M] positions (B,L) bool and padding (B,L) bool (True after [EOT])."""
        if self.labels is None:
            raise RuntimeError("FiSeR (text_encoder variant) needs the training vocabulary's class names: call "
                               "FOVSeg.set_label_names(names) before training")
        rows = [build_label_sequence(self.labels, s, int(i), context) for s, i in zip(class_sets, masked_index)]
        L = max(len(r[0]) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        is_m = torch.zeros(len(rows), L, dtype=torch.bool)
        pad = torch.ones(len(rows), L, dtype=torch.bool)
        for b, (seq, pos) in enumerate(rows):
            ids[b, :len(seq)] = torch.tensor(seq)
            is_m[b, pos] = True
            pad[b, :len(seq)] = False
        return ids, is_m, pad

    def forward(self, clip: nn.Module, class_embeds: torch.Tensor, class_valid: torch.Tensor,
                class_sets: list[list[int]], masked_index: torch.Tensor, image_tokens: torch.Tensor,
                embed_only: bool = False) -> torch.Tensor:
        """class_embeds (B,K,E) normalised, class_valid (B,K), class_sets (vocabulary indices per image),
        masked_index (B,), image_tokens (B,N,E) -> logits (B,K) (-inf at padding), or with ``embed_only``
        the predicted embedding (B,E)."""
        tower = text_tower(clip)
        context = tower.positional_embedding.shape[0]
        dev = image_tokens.device
        ids, is_m, pad = (t.to(dev) for t in self.sequences(class_sets, masked_index, context))
        emb = tower.token_embedding(ids)
        emb = torch.where(is_m[..., None], self.mask_token.to(emb.dtype), emb)
        o = encode_token_embeddings(clip, emb).to(image_tokens.dtype)  # eq. 2
        seq = torch.cat([o + self.type_embed[0], image_tokens + self.type_embed[1]], dim=1)
        key_pad = torch.cat([pad, torch.zeros(image_tokens.shape[:2], dtype=torch.bool, device=dev)], dim=1)
        h = self.encoder(seq, src_key_padding_mask=key_pad)  # eq. 3
        w = is_m[..., None].to(h.dtype)
        pred = self.out((h[:, :ids.shape[1]] * w).sum(1) / w.sum(1).clamp_min(1))
        if embed_only:
            return pred
        logits = self.logit_scale.exp() * F.normalize(pred, dim=-1).unsqueeze(1).mul(
            F.normalize(class_embeds, dim=-1)).sum(-1)  # eqs. 4-5
        return logits.masked_fill(~class_valid, float("-inf"))


def fiser_text_loss(predictor: FiserTextPredictor, clip: nn.Module, text_embeds: torch.Tensor,
                    class_sets: list[list[int]], image_tokens: torch.Tensor,
                    generator: torch.Generator | None = None, masked_index: torch.Tensor | None = None,
                    candidates: str = "image") -> torch.Tensor:
    """Eq. 6 for the text_encoder variant: mean cross-entropy over images with at least one class.

    ``candidates``: ``image`` = the softmax runs over the image's own K classes (eq. 6 as written; K-1 of
    them are in the Predictor's input, so elimination alone narrows the answer, and K = 1 is a free 0
    loss); ``vocabulary`` = over every class of the training vocabulary ("the pre-computed text
    embeddings of the dataset's target categories", Sec. IV)."""
    class_embeds, valid = pad_class_sets(text_embeds, class_sets)
    counts = valid.sum(1)
    if masked_index is None:
        r = torch.rand(len(class_sets), generator=generator).to(counts.device)
        masked_index = (r * counts.clamp_min(1)).long().clamp_max((counts - 1).clamp_min(0))
    has = counts > 0
    if not has.any():
        return image_tokens.sum() * 0.0 + predictor.mask_token.sum() * 0.0
    keep = has.nonzero().flatten().tolist()
    if candidates == "vocabulary":
        pred = predictor(clip, class_embeds[has], valid[has], [class_sets[i] for i in keep],
                         masked_index[has].cpu(), image_tokens[has], embed_only=True)
        return vocabulary_loss(pred, text_embeds, predictor.logit_scale.exp(), class_sets, keep, masked_index)
    logits = predictor(clip, class_embeds[has], valid[has], [class_sets[i] for i in keep],
                       masked_index[has].cpu(), image_tokens[has])
    return F.cross_entropy(logits, masked_index[has].to(logits.device))
