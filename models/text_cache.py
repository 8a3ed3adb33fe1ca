"""Text embeddings of a vocabulary: prompt templates x synonyms, averaged, cached on disk.

Choice (as FC-CLIP/ViLD do): every (template, synonym) prompt is encoded and L2-normalised, the
class embedding is their mean, normalised again. The cache key hashes the model name, the weights
identifier, the class synonyms and the templates, so any change re-computes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def cache_key(model_id: str, weights_id: str, synonyms: Sequence[Sequence[str]], templates: Sequence[str]) -> str:
    blob = json.dumps([model_id, weights_id, [list(s) for s in synonyms], list(templates)])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@torch.no_grad()
def compute_text_embeddings(encode: Callable[[list[str]], torch.Tensor], synonyms: Sequence[Sequence[str]],
                            templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(C, E) normalised class embeddings, on ``encode``'s device; ``encode`` maps prompts to (N, E) embeddings."""
    prompts, owner = [], []
    for c, syns in enumerate(synonyms):
        for s in syns:
            for t in templates:
                prompts.append(t.format(s))
                owner.append(c)
    chunks = [F.normalize(encode(prompts[i:i + batch_size]).float(), dim=-1)
              for i in range(0, len(prompts), batch_size)]
    emb = torch.cat(chunks)  # on the encoder's device (the GPU in the paper preset)
    owner_t = torch.tensor(owner, device=emb.device)
    out = torch.zeros(len(synonyms), emb.shape[-1], device=emb.device).index_add_(0, owner_t, emb)
    return F.normalize(out, dim=-1)


def differentiable_text_embeddings(encode: Callable[[list[str]], torch.Tensor], synonyms: Sequence[Sequence[str]],
                                   templates: Sequence[str]) -> torch.Tensor:
    """Same as :func:`compute_text_embeddings` but keeps the graph (tuning the text tower)."""
    prompts = [t.format(s) for syns in synonyms for s in syns for t in templates]
    counts = [len(syns) * len(templates) for syns in synonyms]
    emb = F.normalize(encode(prompts), dim=-1)
    return F.normalize(torch.stack([e.mean(0) for e in emb.split(counts)]), dim=-1)


class TextEmbeddingCache:
    """Files ``<dir>/<key>.pt`` holding the (C, E) tensor; loaded with ``weights_only=True``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def get(self, model_id: str, weights_id: str, synonyms: Sequence[Sequence[str]], templates: Sequence[str],
            encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        key = cache_key(model_id, weights_id, synonyms, templates)
        path = self.directory / f"{key}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        emb = compute_text_embeddings(encode, synonyms, templates).cpu()  # as a cache hit returns it
        self.directory.mkdir(parents=True, exist_ok=True)
        # a unique temp name per writer: two processes computing the same key never write the same file
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            torch.save(emb, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return emb


def clip_text_encoder(model: torch.nn.Module, tokenizer: Callable, device: torch.device | str = "cpu"
                      ) -> Callable[[list[str]], torch.Tensor]:
    """Prompts -> embeddings with an open_clip CLIP (or a FOVSeg's ``clip``) text tower."""
    def encode(prompts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(prompts).to(device))
    return encode
