"""``fovseg predict``: segment files, folders or globs with any vocabulary.

Per image ``<stem>``: ``<stem>_panoptic.png`` (COCO panoptic RGB ids, id = R + 256 G + 256^2 B),
``<stem>_segments.json`` (COCO ``segments_info`` with each mask as compressed RLE, plus label name and score),
``<stem>_semantic.png`` (class index per pixel, 255 = no class; 16-bit PNG with 65535 for vocabularies of more
than 255 classes) and ``<stem>_overlay.png`` (colours, contours, a legend). ``predictions.json`` holds the
COCO-panoptic ``annotations`` + ``categories`` of the whole run (what ``fovseg evaluate --pred-json-file``
reads). An ``--out`` folder that already holds predictions (predictions.json or ``*_panoptic.png``) is refused before
the model is built; ``--overwrite`` removes its earlier prediction files first, so predictions.json always
describes the folder.

The model is built once (generator + classifier) and applied to every image.
"""
from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.build.classifier import ReadyClassifier, build_classifier, classify_image
from pipeline.build.generator import build_generator
from pipeline.config import EvaluateParams
from pipeline.data.formats import atomic_path, bbox_of, pixel_limit_guard, read_image, write_json, write_panoptic_png
from pipeline.data.vocab import Vocabulary, load_vocabulary, packaged_vocabularies, vocabulary_from_names
from pipeline.errors import CheckpointError, FovsegError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_SUFFIXES = ("_panoptic.png", "_segments.json", "_semantic.png", "_overlay.png")  # per image <stem><suffix>
RUN_FILE = "predictions.json"


class PredictError(FovsegError, ValueError):
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


def class_list(text: str, flag: str) -> list[str]:
    """``--classes`` / ``--stuff``: names separated by commas or newlines, or ``@FILE`` with one name per line
    (blank lines and ``#`` comments skipped)."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PredictError(f"{flag} {text}: cannot read {path} ({exc}); give a UTF-8 text file with one class "
                               "name per line") from None
        return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [n.strip() for n in re.split(r"[,\n]", text) if n.strip()]


def check_unique(named: list[tuple[str, str, int]]) -> None:
    """(name, flag, 1-based entry) triples: each name once, compared case-insensitively."""
    seen: dict[str, tuple[str, str, int]] = {}
    for name, flag, k in named:
        key = name.lower()
        if key in seen:
            first, first_flag, first_k = seen[key]
            raise PredictError(f"class {name!r} is given twice: {first_flag} entry {first_k} ({first!r}) and {flag} "
                               f"entry {k} (names are compared case-insensitively); give each class once")
        seen[key] = (name, flag, k)


def resolve_vocabulary(classes: str | None, stuff: str | None, vocab: str | None) -> Vocabulary:
    """``--vocab NAME|FILE.json`` (a packaged or JSON vocabulary, thing/stuff flags included) or ``--classes``
    (+ ``--stuff``)."""
    if classes is not None and vocab is not None:
        raise PredictError("give either --classes or --vocab, not both")
    if stuff and classes is None:
        raise PredictError("--stuff adds amorphous classes to --classes; give --classes too (a --vocab carries its "
                           "own thing/stuff flags)")
    if vocab is not None:
        return load_vocabulary(vocab)
    if classes is None:
        raise PredictError("give the classes to look for: --classes \"a, b\" (or @FILE) or --vocab NAME (packaged: "
                           f"{', '.join(packaged_vocabularies())})")
    things, stuff_names = class_list(classes, "--classes"), class_list(stuff or "", "--stuff")
    if not things:
        raise PredictError(f"--classes {classes!r} holds no class name; give names separated by commas, e.g. "
                           "--classes \"red circle, sky\"")
    check_unique([(n, "--classes", k) for k, n in enumerate(things, 1)] +
                 [(n, "--stuff", k) for k, n in enumerate(stuff_names, 1)])
    v = vocabulary_from_names(things + stuff_names, "predict")
    stuff_set = {n.lower() for n in stuff_names}
    return Vocabulary(v.name, tuple(replace(c, isthing=c.name.lower() not in stuff_set) for c in v.classes))


def check_images_readable(images: list[Path]) -> None:
    """Open each file's header (cheap) so that a non-image or a decompression bomb (a header claiming more pixels
    than the limit, see :func:`pipeline.data.formats.pixel_limit_guard`) fails before the model is built."""
    for path in images:
        with pixel_limit_guard(path):
            try:
                with Image.open(path):
                    pass
            except (OSError, SyntaxError, ValueError) as exc:
                raise PredictError(f"{path} is not an image Pillow can read ({exc}); give image files "
                                   f"({', '.join(IMAGE_EXTS)})") from None


def earlier_predictions(out: Path) -> list[Path]:
    """Files of an earlier run in ``out``: predictions.json and every ``<stem>_panoptic.png`` / ``_segments.json``
    / ``_semantic.png`` / ``_overlay.png``."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.is_file() and (p.name == RUN_FILE or p.name.endswith(OUTPUT_SUFFIXES)))


def check_out_folder(out: Path, overwrite: bool, images: Iterable[Path] = ()) -> list[Path]:
    """Refuse an ``--out`` that holds an earlier run's predictions unless ``overwrite``; never one whose earlier
    prediction files are among the input images. Returns the files ``overwrite`` will remove."""
    old = earlier_predictions(out)
    marks = [p for p in old if p.name == RUN_FILE or p.name.endswith("_panoptic.png")]
    if marks and not overwrite:
        raise PredictError(f"--out {out} already holds predictions ({len(marks)} file(s) such as {marks[0].name}); "
                           "pass --overwrite to replace them (the folder's earlier prediction files are removed "
                           "first) or choose another --out folder")
    inputs = {p.resolve() for p in images}
    clash = next((p for p in old if p.resolve() in inputs), None)
    if clash is not None:
        raise PredictError(f"input {clash} is an earlier prediction in --out {out}; --overwrite would delete it. "
                           "Choose another --out folder or move the input images")
    return old


def clear_earlier_predictions(out: Path, overwrite: bool) -> None:
    """With ``overwrite``, remove an earlier run's files from ``out`` (so that predictions.json matches the
    folder); otherwise refuse a folder that holds predictions."""
    for path in check_out_folder(out, overwrite):
        path.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------- model
@dataclass
class Segmenter:
    """Generator + classifier + text embeddings, built once; ``__call__(image)`` -> (id map, segments, semantic,
    number of proposals)."""

    generator: Callable
    ready: ReadyClassifier
    text: torch.Tensor
    is_thing: torch.Tensor
    evaluate: EvaluateParams  # the classifier's input size and the segment score (evaluate.score)
    object_threshold: float

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, list[dict], np.ndarray, int]:
        from models.inference import merge_proposals

        with torch.inference_mode():
            props = self.generator([image])[0]
            h, w = image.shape[:2]
            masks = torch.from_numpy(props.masks)
            if len(masks) == 0:
                return np.zeros((h, w), np.int32), [], np.full((h, w), -1, np.int64), 0
            probs = classify_image(self.ready, image, masks, self.text, self.evaluate)
            objectness = torch.from_numpy(props.scores) if self.evaluate.score == "objectness_x_class" else \
                torch.ones(len(props.scores))
            semantic, id_map, segs = merge_proposals(probs, masks, objectness, self.is_thing, self.object_threshold,
                                                     self.evaluate.overlap_threshold, device=self.ready.device)
        return id_map.numpy(), segs, semantic.numpy(), len(props.masks)


def build_segmenter(params, vocab: Vocabulary, backbones: str, checkpoint: str | None, threshold: float,
                    device: torch.device) -> Segmenter:
    """Generator and classifier (``pipeline.build.classifier``) from params and the backbones stage's outputs;
    ``checkpoint`` None: the pretrained CLIP alone."""
    generator = build_generator(params.backbones.generator, params.proposals, backbones, device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found: run `dvc repro train`, pass --checkpoint, "
                              "or use --zero-shot to classify with the pretrained CLIP alone")
    ready = build_classifier(params.backbones.clip, params.model, backbones, device, checkpoint=checkpoint)
    return Segmenter(generator, ready, ready.text_embeddings(vocab), torch.tensor([c.isthing for c in vocab.classes]),
                     params.evaluate, threshold)


# ----------------------------------------------------------------------------- driver
def predict_images(segmenter, images: list[Path], vocab: Vocabulary, out: Path, progress: bool = True,
                   overwrite: bool = False) -> dict:
    """Run ``segmenter`` on every image and write its four outputs; returns the run summary. An ``out`` holding
    an earlier run's predictions is refused, or with ``overwrite`` cleared of them first."""
    from tqdm import tqdm

    annotations, stems, summary = [], set(), []
    clear_earlier_predictions(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
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
    from pipeline.device import pick_device
    from pipeline.outputs import model_paths
    from pipeline.params_file import load_params

    images = expand_inputs(args.inputs)
    vocab = resolve_vocabulary(args.classes, args.stuff, args.vocab)
    check_images_readable(images)
    out = Path(args.out)
    overwrite = bool(getattr(args, "overwrite", False))
    check_out_folder(out, overwrite, images)  # before the model is built
    params = load_params(args.params)
    model_paths(args)
    device = pick_device(args.device or params.device)
    segmenter = build_segmenter(params, vocab, args.backbones, None if args.zero_shot else args.checkpoint,
                                args.threshold, device)
    result = predict_images(segmenter, images, vocab, out, progress=not args.quiet, overwrite=overwrite)
    n = sum(i["segments"] for i in result["images"])
    print(f"{len(images)} image(s), {n} segments -> {out}/ (<stem>_panoptic.png, _segments.json, _semantic.png, "
          "_overlay.png; predictions.json)")
    empty = [i["image"] for i in result["images"] if not i["segments"]]
    if empty:
        print(f"{len(empty)} image(s) got no segment scoring above --threshold {args.threshold} (e.g. {empty[0]}): "
              "lower --threshold to see weaker ones" +
              ("; the toy preset's model knows only the toy shapes world (its colours, shapes and textures at "
               "96 px), not photographs" if params.preset == "toy" else ""))
    return result


def load_segments(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
