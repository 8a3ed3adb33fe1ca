"""Parameter counts of FOV-Seg built on the meta device (no weights, no memory):
``python -m pipeline.scripts.param_counts --model ViT-L-14-336-quickgelu``.

Prints (1) the Table II breakdown at paper settings (f_q tuned, 2-layer adapter, FiSeR predictor):
f_q alone, TeVA, adapter, predictor (training only) and the total trainable at inference, for
full-width TeVA and the "lightweight" variants (``model.teva.width`` / ``model.teva.shared``),
saying which sums round to the paper's 25M; (2) trainable/total counts for every selection."""
from __future__ import annotations

import argparse
import re

import torch

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.trainable import SELECTIONS, count_parameters, select_trainable

PAPER_TRAINABLE_M = 25  # Table II, FOV-Seg "Trainable Params (M)"
TEVA_VARIANTS = (("full width, per block", TevaConfig()), ("full width, shared", TevaConfig(shared=True)),
                 ("width 256, per block", TevaConfig(width=256)), ("width 64, per block", TevaConfig(width=64)),
                 ("width 256, shared", TevaConfig(width=256, shared=True)),
                 ("width 64, shared", TevaConfig(width=64, shared=True)))


def build(model_name: str, teva: TevaConfig, adapter_layers: int = 2, fiser_layers: int = 2,
          fiser_heads: int = 8) -> FOVSeg:
    with torch.device("meta"):
        clip, _ = build_clip(model_name, allow_random=True, device="meta")
        return FOVSeg(clip, teva, adapter_layers=adapter_layers, fiser_layers=fiser_layers, fiser_heads=fiser_heads)


def breakdown(model: FOVSeg, selection: str = "q") -> dict[str, int]:
    """Trainable parameters by part (shared modules counted once)."""
    select_trainable(model, selection)
    parts = {"f_q": 0, "teva": 0, "adapter": 0, "predictor": 0, "other": 0}
    for name, p in model.named_parameters():  # named_parameters() lists a shared tensor once
        if not p.requires_grad:
            continue
        if ".teva." in name:
            parts["teva"] += p.numel()
        elif name.startswith("visual.adapter."):
            parts["adapter"] += p.numel()
        elif name.startswith("fiser."):
            parts["predictor"] += p.numel()
        elif re.search(r"^visual\.blocks\.\d+\.attn\.q_proj\.", name):
            parts["f_q"] += p.numel()
        else:
            parts["other"] += p.numel()
    parts["inference"] = parts["f_q"] + parts["teva"] + parts["adapter"] + parts["other"]
    parts["training"] = parts["inference"] + parts["predictor"]
    return parts


def counts_for(model_name: str, selection: str, adapter_layers: int = 2, fiser_layers: int = 2,
               teva: bool = True) -> dict[str, int]:
    model = build(model_name, TevaConfig(teva), adapter_layers, fiser_layers)
    select_trainable(model, selection)
    counts = count_parameters(model)
    backbone = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.blocks")
                   and ".teva." not in n)
    return {**counts, "selected_clip": backbone}


def _m(n: int) -> str:
    return f"{n / 1e6:.3f}M"


def print_table_ii(model_name: str) -> None:
    print(f"Table II accounting at paper settings ({model_name}; f_q tuned, adapter 2 layers x 16 channels, "
          "FiSeR predictor 2 layers)")
    print(f"{'TeVA variant':<24} {'f_q':>8} {'TeVA':>8} {'adapter':>9} {'predictor*':>11} {'inference':>10} "
          f"{'training':>9}")
    rows = []
    for label, teva in TEVA_VARIANTS:
        c = breakdown(build(model_name, teva))
        rows.append((label, c))
        print(f"{label:<24} {_m(c['f_q']):>8} {_m(c['teva']):>8} {c['adapter']:>9,} {_m(c['predictor']):>11} "
              f"{_m(c['inference']):>10} {_m(c['training']):>9}")
    print("* the predictor trains but is discarded after training; 'inference' = f_q + TeVA + adapter")
    f_q = rows[0][1]["f_q"]
    print(f"paper's {PAPER_TRAINABLE_M}M vs: f_q alone = {_m(f_q)} "
          f"({'matches' if round(f_q / 1e6) == PAPER_TRAINABLE_M else 'does not match'})")
    for what in ("inference", "training"):
        hits = [label for label, c in rows if round(c[what] / 1e6) == PAPER_TRAINABLE_M]
        print(f"  {what} total rounds to {PAPER_TRAINABLE_M}M for: " + (", ".join(hits) or "no variant listed"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-L-14-336-quickgelu")
    ap.add_argument("--selections", nargs="*", default=[*SELECTIONS, "lora:64", "lora:128", "lora:256"])
    args = ap.parse_args(argv)
    print_table_ii(args.model)
    print()
    print(f"{'selection':<10} {'CLIP weights tuned':>18} {'trainable (all)':>16} {'total':>14}")
    for sel in args.selections:
        c = counts_for(args.model, sel)
        print(f"{sel:<10} {c['selected_clip'] / 1e6:>17.2f}M {c['trainable'] / 1e6:>15.2f}M {c['total'] / 1e6:>13.2f}M")
    c = counts_for(args.model, "q", adapter_layers=0, fiser_layers=0, teva=False)
    print(f"f_q alone, no new modules: {c['trainable'] / 1e6:.2f}M trainable")


if __name__ == "__main__":
    main()
