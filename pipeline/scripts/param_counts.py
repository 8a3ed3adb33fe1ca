"""Print trainable/total parameter counts of FOV-Seg for every selection, built on the meta device
(no weights, no memory): ``python -m pipeline.scripts.param_counts --model ViT-L-14-336-quickgelu``."""
from __future__ import annotations

import argparse

import torch

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.trainable import SELECTIONS, count_parameters, select_trainable


def counts_for(model_name: str, selection: str, adapter_layers: int = 2, fiser_layers: int = 2,
               teva: bool = True) -> dict[str, int]:
    with torch.device("meta"):
        clip, _ = build_clip(model_name, allow_random=True, device="meta")
        model = FOVSeg(clip, TevaConfig(teva, teva), adapter_layers=adapter_layers, fiser_layers=fiser_layers)
    select_trainable(model, selection)
    counts = count_parameters(model)
    backbone = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.blocks")
                   and ".teva." not in n)
    return {**counts, "selected_clip": backbone}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-L-14-336-quickgelu")
    ap.add_argument("--selections", nargs="*", default=[*SELECTIONS, "lora:64", "lora:128", "lora:256"])
    args = ap.parse_args(argv)
    print(f"{'selection':<10} {'CLIP weights tuned':>18} {'trainable (all)':>16} {'total':>14}")
    for sel in args.selections:
        c = counts_for(args.model, sel)
        print(f"{sel:<10} {c['selected_clip'] / 1e6:>17.2f}M {c['trainable'] / 1e6:>15.2f}M {c['total'] / 1e6:>13.2f}M")
    c = counts_for(args.model, "q", adapter_layers=0, fiser_layers=0, teva=False)
    print(f"f_q alone, no new modules: {c['trainable'] / 1e6:.2f}M trainable")


if __name__ == "__main__":
    main()
