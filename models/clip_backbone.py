"""Build an open_clip CLIP: pretrained tag, local checkpoint file, or the project's tiny configs.

Model variants live as JSON files in ``models/configs`` (open_clip's own format); they are added
to open_clip's registry explicitly by :func:`build_clip`, never as an import side effect. open_clip
itself is imported when first used (about 1 s with torchvision), so stages that never build a CLIP
(the generator's proposals) do not pay for it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.errors import WeightsUnavailableError  # noqa: F401  (re-exported)

CONFIG_DIR = Path(__file__).parent / "configs"


def _register_local_configs() -> None:
    import open_clip

    for path in CONFIG_DIR.glob("fovseg-*.json"):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


def build_clip(model_name: str, pretrained: str = "", device: str | torch.device = "cpu",
               allow_random: bool = False) -> tuple[nn.Module, object]:
    """Return ``(clip_model, tokenizer)``.

    ``pretrained`` is an open_clip tag (``openai``, ...), a local checkpoint path, or "" for
    random weights, which is refused unless ``allow_random`` (toy pre-training, tests, meta builds).
    """
    import open_clip

    _register_local_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {model_name!r}; use an open_clip name such as 'ViT-B-16' or "
                         f"'ViT-L-14-336-quickgelu', or one of {[p.stem for p in CONFIG_DIR.glob('*.json')]}")
    if not pretrained and not allow_random:
        raise WeightsUnavailableError(
            f"no weights given for {model_name}: set backbones.clip.pretrained to an open_clip tag "
            "(e.g. 'openai') or a local checkpoint file; random weights are only used when asked for")
    tokenizer = open_clip.get_tokenizer(model_name)
    is_file_path = bool(pretrained) and (Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
                                         or Path(pretrained).is_file())
    if is_file_path:
        if not Path(pretrained).is_file():
            raise WeightsUnavailableError(f"CLIP checkpoint {pretrained} not found; download the {model_name} "
                                          "weights and put the file there, or fix backbones.clip.pretrained")
        # open_clip loads local checkpoints itself (weights_only, 'state_dict'/'module.' unwrapping, strict)
        return open_clip.create_model(model_name, pretrained=str(pretrained), device=device), tokenizer
    if not pretrained:
        return open_clip.create_model(model_name, pretrained=None, device=device), tokenizer
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
    except (RuntimeError, OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"could not load open_clip weights {model_name}/{pretrained} ({exc}). Download them on a machine with "
            f"internet (`python -c \"import open_clip; open_clip.create_model('{model_name}', "
            f"pretrained='{pretrained}')\"` fills the Hugging Face cache, ~/.cache/huggingface), copy that cache "
            "here, or point backbones.clip.pretrained at a local checkpoint file") from None
    return model, tokenizer


def clip_input_stats(clip_model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std CLIP's preprocessing normalises with."""
    import open_clip

    visual = clip_model.visual
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return tuple(mean), tuple(std)
