"""Turns params and the backbones stage's outputs into a ready FOV-Seg classifier.

- :func:`build_classifier`: CLIP -> FOV-Seg with the trainable selection applied, optionally loaded from a
  training checkpoint, with a :meth:`ReadyClassifier.text_embeddings` bound to the text-embedding cache;
- :func:`classify_image`: class probabilities of one image's masks (evaluate, benchmark, predict).

The text-embedding cache is content-addressed (model, weights, synonyms, templates) and lives outside the
repository by design, like the Hugging Face cache: ``$FOVSEG_CACHE/text_embeddings``, else
``$XDG_CACHE_HOME/fovseg/text_embeddings``, else ``~/.cache/fovseg/text_embeddings``. It is never a DVC
output: deleting it only costs recomputation, and no result depends on whether an entry was cached.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.text_cache import TextEmbeddingCache, clip_text_encoder, differentiable_text_embeddings
from models.trainable import select_trainable
from pipeline.build.backbones import TOY_CLIP_FILE
from pipeline.checkpoints import check_file, load_checkpoint, load_errors, load_trainable_state
from pipeline.config import ClipParams, EvaluateParams, ModelParams
from pipeline.data.transforms import eval_resize_shape
from pipeline.data.vocab import Vocabulary
from pipeline.errors import CheckpointError, WeightsUnavailableError


def text_cache_dir() -> Path:
    """Where cached text embeddings live (outside the repository by design, see the module docstring)."""
    if os.environ.get("FOVSEG_CACHE"):
        return Path(os.environ["FOVSEG_CACHE"]) / "text_embeddings"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fovseg" / "text_embeddings"


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- classifier
@dataclass
class ReadyClassifier:
    """A FOV-Seg classifier ready to use: weights loaded, on ``device``, bound to its text-embedding cache."""

    model: FOVSeg
    tokenizer: Callable
    weights_id: str  # identifies the weights the text tower computes with (cache key)
    model_id: str  # the CLIP model name
    templates: tuple[str, ...]
    device: torch.device
    cache_dir: Path = field(default_factory=text_cache_dir)
    synonyms: bool = True  # model.synonyms: every synonym, or only the class name

    def class_texts(self, vocab: Vocabulary) -> list[tuple[str, ...]]:
        """What each class is prompted with: its synonyms, or only its name."""
        return [tuple(c.synonyms) if self.synonyms and c.synonyms else (c.name,) for c in vocab.classes]

    def text_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        """Cached (C, E) normalised class embeddings of ``vocab`` (templates x synonyms), on ``device``."""
        encode = clip_text_encoder(self.model.clip, self.tokenizer, self.device)
        synonyms = self.class_texts(vocab)
        emb = TextEmbeddingCache(self.cache_dir).get(self.model_id, self.weights_id, synonyms, self.templates, encode)
        return emb.to(self.device)

    def text_source(self, vocab: Vocabulary, differentiable: bool) -> Callable[[], torch.Tensor]:
        """What training calls each step: the cached embeddings, or (text tower training) a fresh
        differentiable encoding of the vocabulary."""
        if not differentiable:
            cached = self.text_embeddings(vocab)
            return lambda: cached
        synonyms = self.class_texts(vocab)

        def encode() -> torch.Tensor:
            return differentiable_text_embeddings(
                lambda p: self.model.clip.encode_text(self.tokenizer(p).to(self.device)), synonyms, self.templates)
        return encode

    def input_size(self, height: int, width: int, evaluate: EvaluateParams) -> tuple[int, int]:
        """Classifier input (h, w) for a ``height x width`` image (:func:`classifier_input_size`)."""
        return classifier_input_size(height, width, evaluate, self.model.image_size, self.model.visual.patch_size)


def classifier_input_size(h: int, w: int, evaluate: EvaluateParams, image_size: int, patch: int
                          ) -> tuple[int, int]:
    """The classifier's input at test time: ``square`` (MaskCLIP's ``clip_prep`` Resize((R, R)), R =
    ``backbones.clip.image_size``, as in training) or ``aspect`` (the test resize, short side
    ``test_short_side``, long side at most ``test_max_side``, rounded to the patch size)."""
    if evaluate.classifier_input == "square":
        return image_size, image_size
    th, tw = eval_resize_shape(h, w, evaluate.test_short_side, evaluate.test_max_side)
    return max(patch, round(th / patch) * patch), max(patch, round(tw / patch) * patch)


def load_clip(clip_params: ClipParams, backbones_dir: str | Path, device: torch.device | str = "cpu"):
    """The CLIP the classifier starts from: ``pretrained`` (open_clip tag or local file), or the toy CLIP
    the backbones stage pre-trained when ``pretrained`` is empty."""
    if clip_params.pretrained:
        local = Path(clip_params.pretrained)
        if not _maybe_file(local):  # an open_clip tag (build_clip explains a missing file)
            return build_clip(clip_params.model, clip_params.pretrained, device=device)
        return _load_local_clip(clip_params.model, local, device, f"replace it with the {clip_params.model} weights")
    path = Path(backbones_dir) / TOY_CLIP_FILE
    if not _maybe_file(path):
        raise WeightsUnavailableError(f"pre-trained toy CLIP {path} not found; run `dvc repro backbones` first")
    return _load_local_clip(clip_params.model, path, device, "delete it and re-run `dvc repro backbones`")


def _maybe_file(path: Path) -> bool:
    """Whether ``path`` is a file, or cannot be looked at for lack of permission (the loader then says so)."""
    try:
        return path.is_file()
    except PermissionError:
        return True


def _load_local_clip(model: str, path: Path, device: torch.device | str, remedy: str):
    """``build_clip`` from a local weights file; an empty, damaged or unreadable file is one CheckpointError."""
    check_file(path, remedy)
    with load_errors(path, remedy, damaged=f"cannot be loaded as {model} weights: truncated, corrupt or another "
                                          "model's"):
        return build_clip(model, str(path), device=device)


def clip_weights_id(clip_params: ClipParams, backbones_dir: str | Path) -> str:
    """Identifies the CLIP weights: the pretrained tag, or a content hash of a local weights file (the toy
    pre-trained checkpoint, or ``pretrained`` given as a path: replacing the file changes the id)."""
    if clip_params.pretrained:
        local = Path(clip_params.pretrained)
        return f"{local.name}:{file_digest(local)}" if local.is_file() else clip_params.pretrained
    path = Path(backbones_dir) / TOY_CLIP_FILE
    return file_digest(path) if path.exists() else str(path)


def new_classifier(clip, model_params: ModelParams, image_size: int, tokenizer=None) -> FOVSeg:
    """FOV-Seg around ``clip`` as ``model_params`` describe it (no trainable selection applied)."""
    t = model_params.teva
    return FOVSeg(clip, TevaConfig(t.target_attention, t.form, t.width, t.shared),
                  adapter_layers=model_params.adapter_layers, adapter_channels=model_params.adapter_channels,
                  fiser_layers=model_params.fiser.layers if model_params.fiser.enabled else 0,
                  fiser_heads=model_params.fiser.heads, image_size=image_size,
                  fiser_variant=model_params.fiser.variant, teva_train_targets=t.train_targets, tokenizer=tokenizer,
                  fiser_candidates=model_params.fiser.candidates)


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (weights only, digest verified); unreadable, truncated or altered files raise
    :class:`CheckpointError` naming the path and what to do."""
    path = Path(path)
    if not _maybe_file(path) and not path.is_dir():  # a folder or a permission problem: load_checkpoint says so
        raise CheckpointError(f"checkpoint {path} not found: run `dvc repro train` or pass another checkpoint")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} holds no 'model' weights; it is not a FOV-Seg checkpoint")
    return ckpt


def build_classifier(clip_params: ClipParams, model_params: ModelParams, backbones_dir: str | Path,
                     device: torch.device | str, checkpoint: str | Path | None = None) -> ReadyClassifier:
    """CLIP -> FOV-Seg with the trainable selection (LoRA injected if asked), loaded from ``checkpoint``
    (a training output) when given, moved to ``device``."""
    device = torch.device(device)
    clip, tokenizer = load_clip(clip_params, backbones_dir, device="cpu")
    model = new_classifier(clip, model_params, clip_params.image_size, tokenizer)
    select_trainable(model, model_params.trainable, tune_text=model_params.tune_text)
    weights_id = clip_weights_id(clip_params, backbones_dir)
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        trained_on = (ckpt.get("identity") or {}).get("clip_weights")
        if trained_on and trained_on != weights_id:  # the frozen part comes from the CLIP weights, not the file
            raise CheckpointError(f"checkpoint {checkpoint} was trained on CLIP weights {trained_on}, these are "
                                  f"{weights_id}: evaluate it with the backbones it was trained with, or retrain")
        load_trainable_state(model, ckpt["model"], checkpoint, exclude=("fiser.",))  # the predictor is dropped
        if model_params.tune_text:  # the text tower changed: embeddings must be recomputed
            weights_id = f"{weights_id}+{file_digest(checkpoint)}"
    return ReadyClassifier(model.to(device), tokenizer, weights_id, clip_params.model, tuple(model_params.templates),
                           device, synonyms=model_params.synonyms)


@torch.inference_mode()
def classify_image(ready: ReadyClassifier, image: np.ndarray, masks: np.ndarray | torch.Tensor, text: torch.Tensor,
                   evaluate: EvaluateParams) -> torch.Tensor:
    """(Q, C) class probabilities (float32, CPU) of the (Q, H, W) ``masks`` of one HxWx3 uint8 ``image``
    against the (C, E) ``text`` embeddings, the image resized as :func:`classifier_input_size` says."""
    model, device = ready.model.eval(), ready.device
    h, w = image.shape[:2]
    masks_t = torch.as_tensor(masks)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    logits = model(x, masks_t[None].to(device), text.to(device), size=ready.input_size(h, w, evaluate))["logits"][0]
    return logits.float().softmax(-1).cpu()
