"""FLOPs of the FOV-Seg mask classifier at paper scale, counted on the meta device (no weights, no
memory) with ``torch.utils.flop_counter.FlopCounterMode``:
``python -m pipeline.scripts.flops [--model ViT-L-14-336-quickgelu --size 896 --proposals 100]``.

Prints per-image inference FLOPs for each vocabulary size and the vocabulary-dependent share (TeVA's
mask-target attention over the targets + the final cosine classification), which is linear in the
number of classes C: F(C) = F_0 + a*C, with a and F_0 solved from two vocabulary sizes. TeVA's
g_k/g_v projections of the vocabulary run once per vocabulary (``FOVSeg.prepare_vocabulary``) and are
reported separately, not per image. Counted: matmuls, convolutions and attention (what
FlopCounterMode counts); the mask generator (Mask2Former) is not included.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig


def build(model_name: str, size: int, teva: TevaConfig) -> FOVSeg:
    with torch.device("meta"):
        clip, _ = build_clip(model_name, allow_random=True, device="meta")
        return FOVSeg(clip, teva, adapter_layers=2, fiser_layers=0, image_size=size).eval()


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure(model: FOVSeg, size: int, proposals: int, classes: int) -> tuple[int, int]:
    """(per-image FLOPs with the vocabulary prepared, one-time vocabulary preparation FLOPs)."""
    images = torch.zeros(1, 3, size, size, device="meta")
    masks = torch.zeros(1, proposals, size, size, device="meta")
    text = torch.zeros(classes, model.embed_dim, device="meta")
    with torch.no_grad():
        prep = count(lambda: model.prepare_vocabulary(text))
        per_image = count(lambda: model(images, masks, text))
    return per_image, prep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-L-14-336-quickgelu")
    ap.add_argument("--size", type=int, default=896)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--classes", type=int, nargs=2, default=[150, 847])
    ap.add_argument("--teva-width", type=int, default=0)
    ap.add_argument("--teva-shared", action="store_true")
    args = ap.parse_args(argv)
    teva = TevaConfig(width=args.teva_width, shared=args.teva_shared)
    model = build(args.model, args.size, teva)
    (f1, p1), (f2, p2) = (measure(model, args.size, args.proposals, c) for c in args.classes)
    c1, c2 = args.classes
    slope = (f2 - f1) / (c2 - c1)
    base = f1 - slope * c1
    print(f"{args.model}, {args.size}x{args.size} px, {args.proposals} proposals, TeVA width "
          f"{teva.width or 'full'}{', shared' if teva.shared else ''} (mask classifier only, per image)")
    print(f"vocabulary-independent FLOPs: {base / 1e9:,.1f} GFLOPs")
    for c, f, p in ((c1, f1, p1), (c2, f2, p2)):
        dep = slope * c
        print(f"{c:>4} classes: total {f / 1e9:,.1f} GFLOPs, vocabulary-dependent {dep / 1e9:.3f} GFLOPs = "
              f"{100 * dep / f:.3f}% of the total (target <= 0.1%); one-time g_k/g_v over the vocabulary "
              f"{p / 1e9:.3f} GFLOPs")


if __name__ == "__main__":
    main()
