"""End-to-end inference FPS, peak CUDA memory and training iterations/s at the paper's scale.

``python -m pipeline.scripts.bench_gpu`` (on a GPU): ViT-L-14-336-quickgelu classifier at 896 px (TeVA,
adapter, FiSeR as in the paper preset), a Swin-B Mask2Former generator built from a transformers config
(random weights: timing and memory do not depend on them; 100 queries, 1024 px input), 100 proposals,
150 and 847 classes; then training iterations/s at batch 16 (f_q trainable, CE + FiSeR loss). Compare with
the paper's Table II (ADE-150: 2.63 FPS, 10.2 GB; ADE-847: 2.42 FPS).

Options: ``--precision bf16`` (autocast; fp32 default), ``--compile`` (torch.compile of the classifier),
``--tiny`` (a tiny CLIP and Mask2Former at 64 px: runs on CPU in seconds; the test uses it),
``--device cpu|cuda``, ``--merge-device cpu`` (merging on the CPU, as the pipeline once did).
Attention is PyTorch's fused ``scaled_dot_product_attention`` for image tokens,
mask tokens and TeVA's text attention (models/mask_encoder.py); on CUDA PyTorch picks the kernel: flash
for image tokens and TeVA (no mask), memory-efficient for mask tokens (flash takes no additive mask bias).
Per image: generator forward -> top-Q masks by objectness at the image's
resolution (kept on the device) -> classifier -> Mask2Former panoptic + semantic merging on the same device
(``models.inference.merge_proposals``, as ``fovseg predict`` and evaluation do), results copied to the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.generators import IMAGENET_MEAN, IMAGENET_STD, build_mask2former, swin_b_mask2former_config
from models.inference import merge_proposals
from models.mask_encoder import TevaConfig

PAPER_TABLE_II = {150: {"fps": 2.63, "memory_gb": 10.2}, 847: {"fps": 2.42}}


@dataclass
class Scale:
    clip: str
    clip_size: int
    generator: str
    generator_size: int
    image_size: int
    proposals: int
    classes: tuple[int, ...]
    train_batch: int
    fiser_layers: int


PAPER = Scale("ViT-L-14-336-quickgelu", 896, "swin-b", 1024, 640, 100, (150, 847), 16, 2)
TINY = Scale("fovseg-tiny", 64, "tiny", 64, 80, 8, (10, 30), 2, 1)


def build_generator(kind: str, proposals: int, device: torch.device, image_size: int = 64) -> nn.Module:
    """A random-weight Mask2Former: ``tiny`` (the toy architecture) or ``swin-b`` (paper scale)."""
    if kind == "swin-b":
        from transformers import Mask2FormerForUniversalSegmentation

        model = Mask2FormerForUniversalSegmentation(swin_b_mask2former_config(max(proposals, 1)))
    else:
        model = build_mask2former("fovseg-tiny", image_size=image_size, random_init=True)
    return model.eval().to(device)


class EndToEnd:
    """One image through generator + classifier + merging; ``last_parts`` holds the seconds of each part."""

    def __init__(self, generator: nn.Module, classifier: FOVSeg, classes: int, clip_size: int, proposals: int,
                 device: torch.device, generator_size: int = 0, precision: str = "fp32",
                 merge_device: torch.device | None = None):
        self.generator, self.classifier, self.device = generator, classifier.eval().to(device), device
        self.clip_size, self.proposals = clip_size, proposals
        self.generator_size = generator_size or int(generator.config.backbone_config.image_size)
        self.text = F.normalize(torch.randn(classes, classifier.embed_dim, device=device), dim=-1)
        self.is_thing = torch.arange(classes) % 3 != 0
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        self.precision = precision
        self.merge_device = merge_device or device
        self.last_parts: dict[str, float] = {}

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
        h, w = image.shape[:2]
        t0 = self._sync()
        img = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()
        with self._autocast():
            x = F.interpolate(img, size=(self.generator_size, self.generator_size), mode="bilinear",
                              align_corners=False, antialias=True)
            res = self.generator(pixel_values=(x - self.mean) / self.std)
            obj = 1 - res.class_queries_logits.float().softmax(-1)[0, :, -1]
            order = obj.argsort(descending=True)[: self.proposals]
            masks = F.interpolate(res.masks_queries_logits[:, order].float(), size=(h, w), mode="bilinear",
                                  align_corners=False)[0].sigmoid()
            t1 = self._sync()
            logits = self.classifier(img, (masks > 0.5)[None].float(), self.text,
                                     size=(self.clip_size, self.clip_size))["logits"][0]
            probs = logits.float().softmax(-1)
        t2 = self._sync()
        semantic, id_map, segments = merge_proposals(probs, masks, obj[order], self.is_thing, 0.5, 0.8,
                                                     device=self.merge_device)  # the pipeline: the device
        t3 = time.perf_counter()
        self.last_parts = {"generator_s": t1 - t0, "classifier_s": t2 - t1, "merging_s": t3 - t2}
        return id_map, segments, semantic


def build_classifier(scale: Scale, device: torch.device) -> FOVSeg:
    torch.manual_seed(0)
    clip, _ = build_clip(scale.clip, allow_random=True)
    return FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=scale.fiser_layers,
                  image_size=scale.clip_size).to(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def bench_inference(scale: Scale, device: torch.device, precision: str, compile_model: bool, repeats: int,
                    merge_device: torch.device | None = None
                    ) -> list[dict]:
    generator = build_generator(scale.generator, scale.proposals, device, scale.generator_size)
    classifier = build_classifier(scale, device).eval()
    if compile_model:
        classifier = torch.compile(classifier)
    image = (torch.rand(scale.image_size, int(scale.image_size * 4 / 3), 3) * 255).to(torch.uint8).numpy()
    rows = []
    for classes in scale.classes:
        e2e = EndToEnd(generator, classifier, classes, scale.clip_size, scale.proposals, device,
                       scale.generator_size, precision, merge_device)
        e2e(image)  # warm-up (and compilation)
        _peak_reset(device)
        times, parts = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            e2e(image)
            times.append(time.perf_counter() - t0)
            parts.append(e2e.last_parts)
        med = statistics.median(times)
        rows.append({"classes": classes, "fps": 1 / med, "fps_min": 1 / max(times), "fps_max": 1 / min(times),
                     "peak_memory_gb": _peak_gb(device),
                     **{k: statistics.median(p[k] for p in parts) for k in parts[0]}})
    return rows


def bench_training(scale: Scale, device: torch.device, precision: str, compile_model: bool, steps: int,
                   train_classes: int = 133) -> dict:
    from models.trainable import select_trainable

    model = build_classifier(scale, device).train()
    select_trainable(model, "q")
    model.set_label_names([f"class {i}" for i in range(train_classes)])  # FiSeR reads the label sequence
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    fwd = torch.compile(model) if compile_model else model
    b, q, s = scale.train_batch, scale.proposals, scale.clip_size
    images = torch.rand(b, 3, s, s, device=device) * 255
    masks = (torch.rand(b, q, s // 4, s // 4, device=device) > 0.5).float()
    text = F.normalize(torch.randn(train_classes, model.embed_dim, device=device), dim=-1)
    target = torch.randint(0, train_classes, (b, q), device=device)
    class_sets = [sorted(set(target[i].tolist())) for i in range(b)]
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def step() -> None:
        with ctx:
            out = fwd(images, masks, text, fiser_class_sets=class_sets if model.fiser is not None else None,
                      class_sets=class_sets)
            loss = F.cross_entropy(out["logits"].float().flatten(0, 1), target.flatten())
            if "loss_fiser" in out:
                loss = loss + out["loss_fiser"].float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        step()  # warm-up
        _peak_reset(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
    except torch.OutOfMemoryError as exc:
        return {"batch": b, "error": f"out of memory at batch {b}: {str(exc).splitlines()[0]}"}
    return {"batch": b, "iterations_per_s": steps / dt, "images_per_s": steps * b / dt,
            "peak_memory_gb": _peak_gb(device), "trainable_params": sum(p.numel() for p in params)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models at 64 px (CPU smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    ap.add_argument("--merge-device", help="where proposals are merged (default: --device, as the pipeline does; "
                    "cpu: masks copied back, as the pipeline once did)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--json", help="also write the figures to this json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but no CUDA device is visible")
    scale = TINY if args.tiny else PAPER
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    label = "tiny" if args.tiny else "paper"
    print(f"device {name}, precision {args.precision}, compile {args.compile}, scale {label}: "
          f"{scale.clip} at {scale.clip_size}px, {scale.generator} Mask2Former at {scale.generator_size}px, "
          f"{scale.proposals} proposals, image {scale.image_size}x{int(scale.image_size * 4 / 3)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    merge_device = torch.device(args.merge_device) if args.merge_device else device
    result: dict = {"device": name, "precision": args.precision, "compile": args.compile,
                    "merge_device": str(merge_device), "scale": "tiny" if args.tiny else "paper", "inference": []}
    for row in bench_inference(scale, device, args.precision, args.compile, args.repeats, merge_device):
        result["inference"].append(row)
        paper = PAPER_TABLE_II.get(row["classes"], {}) if not args.tiny else {}
        mem = f", peak {row['peak_memory_gb']:.2f} GB" if row["peak_memory_gb"] is not None else ""
        ref = f" (paper: {paper['fps']} FPS" + (f", {paper['memory_gb']} GB)" if "memory_gb" in paper else ")") \
            if paper else ""
        print(f"inference {row['classes']:4d} classes: {row['fps']:.2f} FPS [{row['fps_min']:.2f}-{row['fps_max']:.2f}]"
              f"{mem}{ref}; generator {1000 * row['generator_s']:.0f} ms, classifier "
              f"{1000 * row['classifier_s']:.0f} ms, merging {1000 * row['merging_s']:.0f} ms")
    if not args.skip_training:
        tr = bench_training(scale, device, args.precision, args.compile, args.train_steps)
        result["training"] = tr
        if "error" in tr:
            print(f"training batch {tr['batch']}: {tr['error']}")
        else:
            mem = f", peak {tr['peak_memory_gb']:.2f} GB" if tr["peak_memory_gb"] is not None else ""
            print(f"training batch {tr['batch']}: {tr['iterations_per_s']:.3f} it/s ({tr['images_per_s']:.2f} "
                  f"images/s{mem}; {tr['trainable_params']:,} trainable parameters)")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
