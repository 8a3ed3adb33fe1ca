"""``fovseg predict``: segment files, folders or globs with any vocabulary.

Per image ``<stem>``: ``<stem>_panoptic.png`` (COCO panoptic RGB ids, id = R + 256 G + 256^2 B),
``<stem>_segments.json`` (COCO ``segments_info`` with each mask as compressed RLE, plus label name and score),
``<stem>_semantic.png`` (class index per pixel, 255 = no class; 16-bit PNG with 65535 for vocabularies of more
than 255 classes) and ``<stem>_overlay.png`` (colours, contours, a legend). ``predictions.json`` holds the
COCO-panoptic ``annotations`` + ``categories`` of the whole run (what ``fovseg evaluate --pred_json_file``
reads).

The model is built once (generator + classifier) and applied to every image.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.data.formats import atomic_path, bbox_of, read_image, write_json, write_panoptic_png
from pipeline.data.vocab import Vocabulary, load_packaged_vocabulary, vocabulary_from_names

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PredictError(ValueError):
    """Bad predict input: names the argument and what to do."""


# ----------------------------------------------------------------------------- inputs
def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (their images, not recursive) and globs (``**`` recursive) -> image files, in order."""
    out: list[Path] = []
    for item in items:
        if any(ch in item for ch in "*?["):
            hits = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTS)
            if not hits:
                raise PredictError(f"the pattern {item!r} matches no image ({', '.join(IMAGE_EXTS)})")
            out += hits
        elif Path(item).is_dir():
            hits = sorted(p for p in Path(item).iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not hits:
                raise PredictError(f"the folder {item} holds no image ({', '.join(IMAGE_EXTS)})")
            out += hits
        elif Path(item).is_file():
            out.append(Path(item))
        else:
            raise PredictError(f"input {item} not found (give image files, folders or glob patterns)")
    return list(dict.fromkeys(out))


def resolve_vocabulary(classes: str | None, stuff: str | None, vocab: str | None) -> Vocabulary:
    """``--vocab NAME`` (a packaged vocabulary, thing/stuff flags included) or ``--classes`` (+ ``--stuff``)."""
    if bool(classes) == bool(vocab):
        raise PredictError("give exactly one of --classes \"a, b\" or --vocab NAME (packaged: "
                           f"{', '.join(packaged_vocabularies())})")
    if vocab:
        if vocab not in packaged_vocabularies():
            raise PredictError(f"--vocab {vocab}: no such packaged vocabulary; choose from "
                               f"{', '.join(packaged_vocabularies())}")
        return load_packaged_vocabulary(vocab)
    things = [n for n in classes.split(",") if n.strip()]
    stuff_names = [n for n in (stuff or "").split(",") if n.strip()]
    v = vocabulary_from_names(things + stuff_names, "predict")
    stuff_set = {n.strip().lower() for n in stuff_names}
    from dataclasses import replace

    return Vocabulary(v.name, tuple(replace(c, isthing=c.name.lower() not in stuff_set) for c in v.classes))


def packaged_vocabularies() -> list[str]:
    from importlib import resources

    return sorted(p.name[:-5] for p in (resources.files("pipeline") / "vocab").iterdir() if p.name.endswith(".json"))


def check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PredictError(f"--out {out}: cannot create it ({exc.strerror}); choose a writable folder") from None
    if not os.access(out, os.W_OK):
        raise PredictError(f"--out {out} is not writable; choose a writable folder")


# ----------------------------------------------------------------------------- outputs
def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE (``{"size": [h, w], "counts": str}``), what pycocotools.mask.decode reads."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_semantic_png(path: Path, labels: np.ndarray, n_classes: int) -> None:
    with atomic_path(path) as tmp:
        if n_classes < 255:
            Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")
        else:
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")


def segment_colour(k: int) -> tuple[int, int, int]:
    """A distinct colour per segment (matplotlib's tab20), so that the legend tells segments of similar
    classes apart (class colours would repeat the object's own colour)."""
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab20"](k % 20)
    return int(255 * r), int(255 * g), int(255 * b)


def overlay(image: np.ndarray, id_map: np.ndarray, segments: list[dict], vocab: Vocabulary) -> Image.Image:
    """Segments tinted by class colour, white/black contours between segments, a legend on the right."""
    scale = max(1, 512 // max(image.shape[:2]))
    img = np.repeat(np.repeat(image, scale, 0), scale, 1).astype(np.float32)
    ids = np.repeat(np.repeat(id_map, scale, 0), scale, 1)
    for k, s in enumerate(segments):
        m = ids == s["id"]
        img[m] = 0.35 * img[m] + 0.65 * np.array(segment_colour(k))
    edge = np.zeros(ids.shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    img[edge] = 255
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    row, pad = 16, 6
    legend_w = 30 + 7 * max([len(_legend_text(s, vocab)) for s in segments] + [12])
    canvas = Image.new("RGB", (pil.width + legend_w, max(pil.height, pad * 2 + row * (len(segments) + 1))),
                       (255, 255, 255))
    canvas.paste(pil, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = pil.width + pad
    draw.text((x0, pad), f"{len(segments)} segments", fill=(0, 0, 0))
    for k, s in enumerate(segments, start=1):
        y = pad + k * row
        draw.rectangle((x0, y + 2, x0 + 10, y + 12), fill=segment_colour(k - 1), outline=(0, 0, 0))
        draw.text((x0 + 14, y + 1), f"{k} {_legend_text(s, vocab)}", fill=(0, 0, 0))
        spot = label_spot(id_map == s["id"])
        if spot is not None:  # the segment's number, matching the legend
            draw.text((spot[1] * scale + scale // 2 - 3, spot[0] * scale + scale // 2 - 5), str(k),
                      fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return canvas


def label_spot(mask: np.ndarray, max_erosions: int = 64) -> tuple[int, int] | None:
    """A pixel deep inside ``mask`` (erode while something is left, then the pixel nearest the centroid)."""
    if not mask.any():
        return None
    core = np.pad(mask, 1)  # outside the image counts as outside the segment
    for _ in range(max_erosions):
        inner = core.copy()
        inner[1:] &= core[:-1]
        inner[:-1] &= core[1:]
        inner[:, 1:] &= core[:, :-1]
        inner[:, :-1] &= core[:, 1:]
        if not inner.any():
            break
        core = inner
    ys, xs = np.nonzero(core[1:-1, 1:-1])
    j = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return int(ys[j]), int(xs[j])


def _legend_text(s: dict, vocab: Vocabulary) -> str:
    return f"{vocab.classes[s['label']].name} {s['score']:.2f}"


# ----------------------------------------------------------------------------- model (until pipeline.builder)
@dataclass
class Segmenter:
    """Generator + classifier + text embeddings, built once; ``__call__(image)`` -> (id map, segments, semantic)."""

    generator: object
    model: torch.nn.Module
    text: torch.Tensor
    is_thing: torch.Tensor
    short_side: int
    max_side: int
    object_threshold: float
    overlap_threshold: float
    device: torch.device

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, list[dict], np.ndarray, int]:
        from models.inference import panoptic_inference, semantic_inference
        from pipeline.evaluation import classifier_input_size

        props = self.generator([image])[0]
        h, w = image.shape[:2]
        masks = torch.from_numpy(props.masks)
        if len(masks) == 0:
            return np.zeros((h, w), np.int32), [], np.full((h, w), -1, np.int64), 0
        size = classifier_input_size(h, w, self.short_side, self.max_side, self.model.visual.patch_size)
        logits = self.model.eval()(torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device),
                                   masks[None].to(self.device), self.text, size=size)["logits"][0]
        probs = logits.float().softmax(-1).cpu()
        obj = torch.from_numpy(props.scores)
        id_map, segs = panoptic_inference(probs, masks.float(), obj, self.is_thing, self.object_threshold,
                                          self.overlap_threshold)
        semantic = semantic_inference(probs, masks.float(), obj)
        return id_map.numpy(), segs, semantic.numpy(), len(props.masks)


def build_segmenter(params, vocab: Vocabulary, backbones: str, checkpoint: str | None, threshold: float,
                    device: torch.device) -> Segmenter:
    """Build from params and the backbones stage's outputs (swap for ``pipeline.builder`` once it lands)."""
    from models.generators import Mask2FormerGenerator, build_mask2former
    from pipeline.modeling import (
        TEXT_CACHE_DIR,
        load_checkpoint_weights,
        prepare_classifier,
        trained_weights_id,
        vocabulary_embeddings,
    )

    gen_p, prop_p = params.backbones.generator, params.proposals
    gen_name = gen_p.name if gen_p.source == "hub" else str(Path(backbones) / "mask2former")
    generator = Mask2FormerGenerator(build_mask2former(gen_name), gen_p.image_size, prop_p.max_proposals,
                                     prop_p.mask_threshold, prop_p.min_area, device)
    model, tokenizer, weights_id = prepare_classifier(params.backbones.clip, params.model, backbones, device)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found: run `dvc repro train`, pass --checkpoint, "
                                    "or use --zero-shot to classify with the pretrained CLIP alone")
        load_checkpoint_weights(model, checkpoint)
        weights_id = trained_weights_id(weights_id, checkpoint, params.model)
    text = vocabulary_embeddings(model, tokenizer, vocab, params.model.templates, TEXT_CACHE_DIR,
                                 params.backbones.clip.model, weights_id, device)
    return Segmenter(generator, model, text, torch.tensor([c.isthing for c in vocab.classes]),
                     params.evaluate.test_short_side, params.evaluate.test_max_side, threshold,
                     params.evaluate.overlap_threshold, device)


# ----------------------------------------------------------------------------- driver
def predict_images(segmenter, images: list[Path], vocab: Vocabulary, out: Path, progress: bool = True) -> dict:
    """Run ``segmenter`` on every image and write its four outputs; returns the run summary."""
    from tqdm import tqdm

    annotations, stems, summary = [], set(), []
    for path in tqdm(images, desc="fovseg predict", unit="image", disable=not progress):
        stem = path.stem
        k = 1
        while stem in stems:  # same file name in two folders
            k += 1
            stem = f"{path.stem}_{k}"
        stems.add(stem)
        image = read_image(path)
        id_map, segs, semantic, n_props = segmenter(image)
        infos = [{"id": int(s["id"]), "category_id": int(vocab.classes[s["label"]].id),
                  "label": vocab.classes[s["label"]].name, "isthing": int(vocab.classes[s["label"]].isthing),
                  "iscrowd": 0, "score": round(float(s["score"]), 4), "area": int((id_map == s["id"]).sum()),
                  "bbox": bbox_of(id_map == s["id"]), "segmentation": rle_encode(id_map == s["id"])} for s in segs]
        write_panoptic_png(out / f"{stem}_panoptic.png", id_map)
        ignore = 255 if len(vocab) < 255 else 65535
        write_semantic_png(out / f"{stem}_semantic.png", np.where(semantic < 0, ignore, semantic), len(vocab))
        with atomic_path(out / f"{stem}_overlay.png") as tmp:
            overlay(image, id_map, segs, vocab).save(tmp, format="PNG")
        record = {"image": str(path), "file_name": f"{stem}_panoptic.png", "height": int(image.shape[0]),
                  "width": int(image.shape[1]), "proposals": n_props, "segments_info": infos}
        write_json(out / f"{stem}_segments.json", record)
        annotations.append({"image_id": stem, "file_name": f"{stem}_panoptic.png", "segments_info": infos})
        summary.append({"image": str(path), "stem": stem, "segments": len(infos)})
    categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)}
                  for c in vocab.classes]
    write_json(out / "predictions.json", {"annotations": annotations, "categories": categories})
    return {"images": summary, "classes": vocab.names, "out": str(out)}


def run_predict(args) -> dict:
    """The ``fovseg predict`` command (validated arguments -> outputs)."""
    from pipeline.config import load_params
    from pipeline.runtime import pick_device

    if not 0.0 <= args.threshold <= 1.0:
        raise PredictError(f"--threshold {args.threshold}: must be in [0, 1] (a segment score)")
    images = expand_inputs(args.inputs)
    vocab = resolve_vocabulary(args.classes, args.stuff, args.vocab)
    out = Path(args.out)
    check_output_dir(out)
    params = load_params(args.params)
    device = pick_device(params.device)
    segmenter = build_segmenter(params, vocab, args.backbones, None if args.zero_shot else args.checkpoint,
                                args.threshold, device)
    result = predict_images(segmenter, images, vocab, out, progress=not args.quiet)
    n = sum(i["segments"] for i in result["images"])
    print(f"{len(images)} image(s), {n} segments -> {out}/ (<stem>_panoptic.png, _segments.json, _semantic.png, "
          "_overlay.png; predictions.json)")
    return result


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote globs: 'imgs/*.jpg')")
    p.add_argument("--classes", default=None, help='comma-separated class names, e.g. "red circle, blue square"')
    p.add_argument("--stuff", default="", help='with --classes: comma-separated amorphous classes whose regions '
                                               'merge into one segment, e.g. "grass, sky"')
    p.add_argument("--vocab", default=None, help="a packaged vocabulary instead of --classes: " +
                   ", ".join(packaged_vocabularies()))
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--backbones", default="outputs/backbones")
    p.add_argument("--checkpoint", default="outputs/train/model.pt")
    p.add_argument("--zero-shot", action="store_true", help="skip the trained checkpoint (pretrained CLIP only)")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum segment score, in [0, 1]")
    p.add_argument("--out", default="predictions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_segments(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
