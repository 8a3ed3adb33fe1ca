"""Side-by-side timings in one run: the FOV-Seg classifier with N proposals vs a plain CLIP image
forward at the same input size, and an 847-class vs a 150-class vocabulary.

``python -m pipeline.scripts.bench_classifier --model ViT-B-16 --size 224 --proposals 100``
(random weights: timing does not depend on them). Variants alternate within every repeat (the order
rotates), so machine drift hits them alike; prints per-image medians, min-max spread and ratios of
medians. The plain-CLIP baseline is open_clip's own ``encode_image`` with its position embeddings
interpolated to the input grid (the classifier's interpolation), so any ``--size`` works. The two
vocabularies alternate too; TeVA's keys/values of each are projected once and then reused from the
classifier's per-vocabulary cache, as in an evaluation (one vocabulary per benchmark), so the timings are the
steady state of a vocabulary in use.

``--end-to-end``: images/s of the whole inference path, generator (a random Mask2Former, ``--generator
tiny|swin-b``) + classifier + panoptic and semantic merging, on ``--image-size`` inputs.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function; every repeat runs all of them, in a rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def clip_at_size(clip: nn.Module, classifier: FOVSeg, size: int) -> nn.Module:
    """A copy of ``clip`` whose vision tower runs at ``size`` (position embeddings interpolated)."""
    clip = copy.deepcopy(clip)
    patch = classifier.visual.patch_size
    grid = (size // patch, size // patch)
    pe = classifier.visual.position_embedding(grid).detach().clone()
    clip.visual.positional_embedding = nn.Parameter(pe)
    if hasattr(clip.visual, "grid_size"):
        clip.visual.grid_size = grid
    return clip


@torch.inference_mode()
def run(model_name: str, size: int, proposals: int, repeats: int, batch: int = 1) -> dict[str, list[float]]:
    """Milliseconds per image of each variant, one entry per repeat."""
    torch.manual_seed(0)
    clip, _ = build_clip(model_name, allow_random=True)
    clip.eval()
    model = FOVSeg(copy.deepcopy(clip), TevaConfig(True), adapter_layers=2, image_size=size).eval()
    plain = clip_at_size(clip, model, size).eval()
    images = torch.rand(batch, 3, size, size) * 255
    masks = (torch.rand(batch, proposals, size // 4, size // 4) > 0.5).float()
    text = {k: F.normalize(torch.randn(k, model.embed_dim), dim=-1) for k in (150, 847)}
    pre = model.preprocess(images)
    times = alternate({"clip": lambda: plain.encode_image(pre),
                       "fovseg_150": lambda: model(images, masks, text[150]),
                       "fovseg_847": lambda: model(images, masks, text[847])}, repeats)
    return {k: [1000 * t / batch for t in v] for k, v in times.items()}


def _fmt(label: str, ms: list[float], base: float | None = None) -> str:
    med = statistics.median(ms)
    extra = f" ({med / base:.2f}x CLIP)" if base else ""
    return f"{label:<32}: {med:8.1f} ms/image  [{min(ms):.1f}-{max(ms):.1f}]{extra}"


def report(r: dict[str, list[float]]) -> None:
    base = statistics.median(r["clip"])
    print(_fmt("plain CLIP image forward", r["clip"]))
    print(_fmt("FOV-Seg classifier, 150 classes", r["fovseg_150"], base))
    print(_fmt("FOV-Seg classifier, 847 classes", r["fovseg_847"], base))
    t150, t847 = statistics.median(r["fovseg_150"]), statistics.median(r["fovseg_847"])
    print(f"847/150 classes time ratio       : {t847 / t150:.3f} (1.0 = vocabulary size costs nothing)")


def run_end_to_end(model_name: str, size: int, image_size: int, proposals: int, classes: int, repeats: int,
                   generator: str) -> dict[str, float]:
    """Images/s of generator + classifier + merging (random weights) on one image at a time."""
    from pipeline.scripts.bench_gpu import EndToEnd, build_generator

    torch.manual_seed(0)
    clip, _ = build_clip(model_name, allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, image_size=size).eval()
    gen = build_generator(generator, proposals, torch.device("cpu"))
    e2e = EndToEnd(gen, model, classes, size, proposals, torch.device("cpu"))
    image = (torch.rand(image_size, image_size, 3) * 255).to(torch.uint8).numpy()
    t = alternate({"e2e": lambda: e2e(image)}, repeats)["e2e"]
    parts = e2e.last_parts
    return {"images_per_s": 1 / statistics.median(t), "spread": (1 / max(t), 1 / min(t)), **parts}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--end-to-end", action="store_true", help="also time generator + classifier + merging")
    ap.add_argument("--image-size", type=int, default=320, help="end-to-end input image side")
    ap.add_argument("--generator", default="tiny", choices=["tiny", "swin-b"])
    ap.add_argument("--classes", type=int, default=150, help="end-to-end vocabulary size")
    args = ap.parse_args(argv)
    print(f"model {args.model}, input {args.size}x{args.size}, {args.proposals} proposals, "
          f"{torch.get_num_threads()} threads, device cpu, {args.repeats} interleaved repeats (median [min-max])")
    report(run(args.model, args.size, args.proposals, args.repeats))
    if args.end_to_end:
        r = run_end_to_end(args.model, args.size, args.image_size, args.proposals, args.classes, args.repeats,
                           args.generator)
        lo, hi = r["spread"]
        print(f"end to end ({args.generator} Mask2Former, {args.image_size}px image, {args.classes} classes): "
              f"{r['images_per_s']:.2f} images/s [{lo:.2f}-{hi:.2f}]; last image: generator "
              f"{r['generator_s'] * 1000:.0f} ms, classifier {r['classifier_s'] * 1000:.0f} ms, "
              f"merging {r['merging_s'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
