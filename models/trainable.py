"""Which parameters train: selection by name (Table IV), LoRA via peft, parameter counts.

New modules (TeVA's g_q/g_k/g_v, the adapter, FiSeR) always train. The CLIP visual tower trains
only as selected: ``q``, ``k``, ``v``, ``q+k``, ``q+v``, ``q+k+v``, ``mlp``, ``all`` or
``lora:<rank>`` (LoRA on the split q/k/v linears). The text tower and the mask generator train
only when asked.
"""
from __future__ import annotations

import re

from torch import nn

SELECTIONS = ("q", "k", "v", "q+k", "q+v", "q+k+v", "mlp", "all")
NEW_MODULE_PATTERNS = (r"\.teva\.", r"^visual\.adapter\.", r"^fiser\.")
_PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj"}


def parse_selection(selection: str) -> tuple[str, int | set[str]]:
    """``("lora", rank)`` or ``("names", {"q_proj", ...} | {"mlp"} | {"all"})``."""
    s = selection.strip().lower()
    if s.startswith("lora:"):
        try:
            rank = int(s.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad LoRA rank in {selection!r}") from None
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        return "lora", rank
    if s not in SELECTIONS:
        raise ValueError(f"unknown trainable selection {selection!r}")
    if s in ("mlp", "all"):
        return "names", {s}
    return "names", {_PROJ[p] for p in s.split("+")}


def _is_new(name: str) -> bool:
    return any(re.search(p, name) for p in NEW_MODULE_PATTERNS)


def _selected(name: str, which: set[str]) -> bool:
    if not name.startswith("visual."):
        return False
    if "all" in which:
        return True
    if "mlp" in which:
        return bool(re.search(r"^visual\.blocks\.\d+\.mlp\.", name))
    return any(re.search(rf"^visual\.blocks\.\d+\.attn\.{p}\.", name) for p in which)


def apply_lora(model: nn.Module, rank: int, alpha: int | None = None) -> nn.Module:
    """Inject peft LoRA adapters into the visual tower's split q/k/v linears (in place)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=0.0,
                        target_modules=r".*visual\.blocks\.\d+\.attn\.(q_proj|k_proj|v_proj)")
    return inject_adapter_in_model(config, model)


def select_trainable(model: nn.Module, selection: str, tune_text: bool = False,
                     generator: nn.Module | None = None, tune_generator: bool = False) -> list[str]:
    """Set ``requires_grad`` by selection; returns the names of the trainable parameters."""
    kind, arg = parse_selection(selection)
    if kind == "lora":
        apply_lora(model, int(arg))
    for name, p in model.named_parameters():
        if kind == "lora":
            on = "lora_" in name or _is_new(name)
        else:
            on = _is_new(name) or _selected(name, arg)  # type: ignore[arg-type]
        if name.startswith("clip."):
            on = tune_text and not name.startswith("clip.logit_scale")
        p.requires_grad_(on)
    if generator is not None:
        for p in generator.parameters():
            p.requires_grad_(tune_generator)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}


def is_backbone_parameter(name: str) -> bool:
    """Pre-trained CLIP weights (lr x backbone multiplier); new modules and LoRA adapters are not."""
    return not (_is_new(name) or "lora_" in name)
