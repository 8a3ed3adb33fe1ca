"""Side-by-side timings in one run: the FOV-Seg classifier with N proposals vs a plain CLIP image
forward at the same input size, and an 847-class vs a 150-class vocabulary.

``python -m pipeline.scripts.bench_classifier --model ViT-B-16 --size 224 --proposals 100``
(random weights: timing does not depend on them). Prints per-image milliseconds and ratios.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig


def _time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def run(model_name: str, size: int, proposals: int, repeats: int, batch: int = 1) -> dict[str, float]:
    torch.manual_seed(0)
    clip, _ = build_clip(model_name, allow_random=True)
    clip.eval()
    model = FOVSeg(copy.deepcopy(clip), TevaConfig(True, True), adapter_layers=2, image_size=size).eval()
    images = torch.rand(batch, 3, size, size) * 255
    masks = (torch.rand(batch, proposals, size // 4, size // 4) > 0.5).float()
    text = {k: F.normalize(torch.randn(k, model.embed_dim), dim=-1) for k in (150, 847)}
    pre = model.preprocess(images)
    t_clip = _time(lambda: clip.encode_image(pre), repeats)
    t_150 = _time(lambda: model(images, masks, text[150]), repeats)
    t_847 = _time(lambda: model(images, masks, text[847]), repeats)
    return {"clip_ms": 1000 * t_clip / batch, "fovseg_150_ms": 1000 * t_150 / batch,
            "fovseg_847_ms": 1000 * t_847 / batch}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    r = run(args.model, args.size, args.proposals, args.repeats)
    print(f"model {args.model}, input {args.size}x{args.size}, {args.proposals} proposals, "
          f"{torch.get_num_threads()} threads, device cpu")
    print(f"plain CLIP image forward      : {r['clip_ms']:8.1f} ms/image")
    print(f"FOV-Seg classifier, 150 classes: {r['fovseg_150_ms']:8.1f} ms/image "
          f"({r['fovseg_150_ms'] / r['clip_ms']:.2f}x CLIP)")
    print(f"FOV-Seg classifier, 847 classes: {r['fovseg_847_ms']:8.1f} ms/image "
          f"({r['fovseg_847_ms'] / r['clip_ms']:.2f}x CLIP)")
    print(f"throughput 847 vs 150 classes : {r['fovseg_150_ms'] / r['fovseg_847_ms']:.3f} "
          "(images/s ratio; 1.0 = vocabulary size costs nothing)")


if __name__ == "__main__":
    main()
