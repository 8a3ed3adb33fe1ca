"""Build the FOV-Seg classifier and its text embeddings from params and the backbones stage's outputs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from models.classifier import FOVSeg
from models.clip_backbone import build_clip, load_state_dict
from models.mask_encoder import TevaConfig
from models.text_cache import TextEmbeddingCache, clip_text_encoder
from pipeline.config import ClipParams, ModelParams
from pipeline.data.vocab import Vocabulary

TOY_CLIP_FILE = "clip.pt"
TEXT_CACHE_DIR = Path("cache/text_embeddings")  # shared by train, evaluate, benchmark and predict


def load_clip(clip_params: ClipParams, backbones_dir: str | Path, device: torch.device | str = "cpu"):
    """The CLIP the classifier starts from: the toy pre-trained one when ``pretrained`` is empty."""
    if clip_params.pretrained:
        return build_clip(clip_params.model, clip_params.pretrained, device=device)
    path = Path(backbones_dir) / TOY_CLIP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained toy CLIP {path} not found; run `dvc repro backbones` first")
    clip, tokenizer = build_clip(clip_params.model, allow_random=True, device=device)
    clip.load_state_dict(load_state_dict(path))
    return clip, tokenizer


def clip_weights_id(clip_params: ClipParams, backbones_dir: str | Path) -> str:
    """Identifies the CLIP weights (text-embedding cache key, resume guard): the pretrained tag, or a
    content hash of the toy pre-trained checkpoint."""
    if clip_params.pretrained:
        return clip_params.pretrained
    path = Path(backbones_dir) / TOY_CLIP_FILE
    return file_digest(path) if path.exists() else str(path)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def build_classifier(clip, model_params: ModelParams, image_size: int) -> FOVSeg:
    return FOVSeg(clip, TevaConfig(model_params.teva.target_attention, model_params.teva.image_attention),
                  adapter_layers=model_params.adapter_layers, adapter_channels=model_params.adapter_channels,
                  fiser_layers=model_params.fiser.layers if model_params.fiser.enabled else 0,
                  fiser_heads=model_params.fiser.heads, image_size=image_size)


def vocabulary_embeddings(model: FOVSeg, tokenizer, vocab: Vocabulary, templates: tuple[str, ...],
                          cache_dir: str | Path, model_id: str, weights_id: str, device: torch.device | str = "cpu"
                          ) -> torch.Tensor:
    """Cached (C, E) text embeddings of a vocabulary (prompt templates x synonyms)."""
    cache = TextEmbeddingCache(cache_dir)
    synonyms = [c.synonyms for c in vocab.classes]
    encode = clip_text_encoder(model.clip, tokenizer, device)
    return cache.get(model_id, weights_id, synonyms, templates, encode).to(device)


def trained_weights_id(weights_id: str, checkpoint: str | Path, model_params: ModelParams) -> str:
    """Text-embedding cache identity after loading ``checkpoint``: it changes only if the text tower trained."""
    return f"{weights_id}+{file_digest(checkpoint)}" if model_params.tune_text else weights_id


def load_checkpoint_weights(model: FOVSeg, path: str | Path) -> dict:
    """Load a training checkpoint's model weights (weights_only); returns its metadata."""
    from pipeline.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)  # weights_only; digest verified; damage -> CheckpointError naming the path
    model.load_state_dict(ckpt["model"], strict=True)
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler")}


def prepare_classifier(clip_params: ClipParams, model_params: ModelParams, backbones_dir: str | Path,
                       device: torch.device | str = "cpu") -> tuple[FOVSeg, object, str]:
    """CLIP -> FOV-Seg with the trainable selection applied (LoRA injected if asked).

    Returns (model, tokenizer, weights_id)."""
    from models.trainable import select_trainable

    clip, tokenizer = load_clip(clip_params, backbones_dir, device="cpu")
    model = build_classifier(clip, model_params, clip_params.image_size)
    select_trainable(model, model_params.trainable, tune_text=model_params.tune_text)
    return model.to(device), tokenizer, clip_weights_id(clip_params, backbones_dir)
