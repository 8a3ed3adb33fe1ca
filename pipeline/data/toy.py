"""The toy "shapes world": coloured shape instances (things) on textured regions (stuff).

Generated deterministically from a seed and written in the real benchmarks' formats (COCO-panoptic
json + png, semantic png), so the same loaders, evaluation and stages run on it. Splits:

- ``train``/``val`` (COCO analogue): only *seen* classes, vocabulary ``toy_seen``;
- ``open`` (ADE-150 analogue): vocabulary ``toy_open``, including classes never seen in training;
- ``open_large`` (ADE-847 analogue): semantic, vocabulary ``toy_all`` (every class);
- ``captions``: image-caption pairs over every class, the web-data analogue for pre-training CLIP.

Unseen classes are compositional (every colour and every shape is seen, some pairs are not) plus
two stuff textures that never appear in training.

The world is built so that the paper's ablations are measurable on it: four clearly distinct shapes,
things large enough to cover several classifier patches (``THING_SCALE`` of the image side), and
scenes and captions in which things often share a colour (``SAME_COLOR_PROB``), so that telling two
things apart (mask classification) and naming a masked label (FiSeR) needs shape, not only colour.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.data.formats import atomic_path, bbox_of, id_to_rgb, write_json
from pipeline.data.vocab import ClassInfo, Vocabulary

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (250, 250, 250), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
STUFF = ("grass", "sky", "brick wall", "water", "sand", "snow", "wood floor", "road")
UNSEEN_STUFF = ("snow", "wood floor")
OPEN_COLORS = ("red", "green", "blue", "yellow")  # toy_open's thing colours (ADE-150 analogue)
THING_SCALE = (0.3, 0.55)  # a thing's outer diameter as a fraction of the image side
SAME_COLOR_PROB = 0.5  # chance that a scene's (or caption's) things all share one colour


def is_unseen_thing(color: str, shape: str) -> bool:
    """A quarter of colour-shape pairs are held out of training, in a Latin-square pattern."""
    return (list(COLORS).index(color) + SHAPES.index(shape)) % 4 == 0


@dataclass(frozen=True)
class ToyClass:
    info: ClassInfo
    color: str | None  # thing colour name, None for stuff
    shape: str | None  # thing shape, None for stuff
    stuff: str | None
    unseen: bool


def _all_classes() -> list[ToyClass]:
    out: list[ToyClass] = []
    cid = 1
    for color, rgb in COLORS.items():
        for shape in SHAPES:
            name = f"{color} {shape}"
            syn = (name, f"{color} {shape}s")
            info = ClassInfo(cid, name, True, syn, rgb)
            out.append(ToyClass(info, color, shape, None, is_unseen_thing(color, shape)))
            cid += 1
    for stuff in STUFF:
        rgb = tuple(int(v) for v in _STUFF_BASE[stuff])
        out.append(ToyClass(ClassInfo(cid, stuff, False, (stuff,), rgb), None, None, stuff, stuff in UNSEEN_STUFF))
        cid += 1
    return out


_STUFF_BASE = {
    "grass": (60, 140, 50), "sky": (130, 180, 240), "brick wall": (165, 70, 50), "water": (40, 90, 170),
    "sand": (215, 190, 130), "snow": (238, 240, 246), "wood floor": (140, 95, 55), "road": (85, 85, 90),
}
TOY_CLASSES = _all_classes()
_BY_NAME = {c.info.name: c for c in TOY_CLASSES}
TOY_VOCABULARIES = ("toy_seen", "toy_open", "toy_all")


def toy_vocabulary(name: str) -> Vocabulary:
    """``toy_seen`` (training), ``toy_open`` (open benchmark) or ``toy_all`` (every class)."""
    if name == "toy_seen":
        keep = [c for c in TOY_CLASSES if not c.unseen]
    elif name == "toy_open":
        keep = [c for c in TOY_CLASSES if c.stuff is not None or c.color in OPEN_COLORS]
    elif name == "toy_all":
        keep = list(TOY_CLASSES)
    else:
        raise KeyError(f"unknown toy vocabulary {name!r}; valid: {TOY_VOCABULARIES}")
    return Vocabulary(name, tuple(c.info for c in keep))


def unseen_class_names() -> set[str]:
    return {c.info.name for c in TOY_CLASSES if c.unseen}


# ----------------------------------------------------------------------------- rendering
def render_stuff(stuff: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 float texture for a stuff class."""
    base = np.array(_STUFF_BASE[stuff], np.float32)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0, 1, (h, w, 1)).astype(np.float32)
    if stuff == "grass":
        img += noise * 18 + (np.sin(xx * 1.7 + rng.uniform(0, 6)) > 0.6)[..., None] * np.array([-25, -30, -15])
    elif stuff == "sky":
        img += (yy / h)[..., None] * np.array([40, 30, 10]) + noise * 3
        for _ in range(rng.integers(1, 3)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 10, h / 5)
            cloud = ((yy - cy) ** 2 / 0.4 + (xx - cx) ** 2) < r ** 2
            img[cloud] = np.array([245, 248, 252]) + rng.normal(0, 3, (int(cloud.sum()), 3))
    elif stuff == "brick wall":
        row = (yy // 8).astype(int)
        mortar = (yy % 8 < 1.5) | (((xx + (row % 2) * 8) % 16) < 1.5)
        img += noise * 10
        img[mortar] = np.array([205, 200, 190])
    elif stuff == "water":
        waves = np.sin(yy * 0.9 + np.sin(xx * 0.3 + rng.uniform(0, 6)) * 2) > 0.7
        img += noise * 6 + waves[..., None] * np.array([60, 70, 60])
    elif stuff == "sand":
        img += noise * 14 + (rng.random((h, w, 1)) > 0.93) * np.array([-50, -50, -40])
    elif stuff == "snow":
        img += noise * 3 + (rng.random((h, w, 1)) > 0.95) * np.array([-40, -30, -10])
    elif stuff == "wood floor":
        planks = (xx % 12) < 1.2
        grain = np.sin(yy * 0.5 + xx * 0.05 + rng.uniform(0, 6))[..., None] * 12
        img += grain + noise * 5
        img[planks] = np.array([70, 45, 25])
    elif stuff == "road":
        img += noise * 8
        dash = (np.abs(xx - w * rng.uniform(0.3, 0.7)) < 1.5) & ((yy % 12) < 6)
        img[dash] = np.array([230, 210, 60])
    return img


def shape_mask(shape: str, cx: float, cy: float, size: float, angle: float, h: int, w: int) -> np.ndarray:
    """Boolean HxW mask of one shape centred at (cx, cy) with outer diameter ``size``."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    r = size / 2

    def poly(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        draw.ellipse([cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5], fill=0)
    elif shape == "square":
        s = r * 0.85
        draw.polygon(poly([(-s, -s), (s, -s), (s, s), (-s, s)]), fill=1)
    elif shape == "triangle":
        draw.polygon(poly([(0, -r), (r * 0.95, r * 0.7), (-r * 0.95, r * 0.7)]), fill=1)
    elif shape == "star":
        pts = [(math.cos(k * math.pi / 5 - math.pi / 2) * (r if k % 2 == 0 else r * 0.45),
                math.sin(k * math.pi / 5 - math.pi / 2) * (r if k % 2 == 0 else r * 0.45)) for k in range(10)]
        draw.polygon(poly(pts), fill=1)
    elif shape == "cross":
        a = r * 0.33
        draw.polygon(poly([(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a),
                           (-r, -a), (-a, -a)]), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas, dtype=bool)


def _stuff_layout(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """HxW region index in [0, n): wavy horizontal bands, then maybe a vertical split."""
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.zeros((h, w), np.int64)
    if n >= 2:
        y0 = rng.uniform(0.3, 0.7) * h
        amp, freq, ph = rng.uniform(0, h / 10), rng.uniform(0.03, 0.12), rng.uniform(0, 6)
        region[yy > y0 + amp * np.sin(xx * freq + ph)] = 1
    if n >= 3:
        x0 = rng.uniform(0.3, 0.7) * w
        region[(region == 1) & (xx > x0)] = 2
    return region


@dataclass
class RenderedImage:
    image: np.ndarray  # HxWx3 uint8
    id_map: np.ndarray  # HxW uint32 segment ids, 0 = void
    segments: list[dict]  # COCO segments_info


def render_scene(things: list[ToyClass], stuffs: list[ToyClass], size: int, rng: np.random.Generator,
                 min_area: int = 20) -> RenderedImage:
    """Draw stuff regions, then things in order (later ones occlude earlier ones)."""
    h = w = size
    region = _stuff_layout(len(stuffs), h, w, rng)
    img = np.zeros((h, w, 3), np.float32)
    id_map = np.zeros((h, w), np.uint32)
    segments: list[dict] = []
    next_id = 1
    for k, st in enumerate(stuffs):
        m = region == k
        img[m] = render_stuff(st.stuff, h, w, rng)[m]
    owner = region.copy()  # -1 - j marks thing j
    placed: list[tuple[float, float, float]] = []
    for j, th in enumerate(things):
        size_px = rng.uniform(*THING_SCALE) * size
        cx, cy = _free_position(size_px, placed, h, w, rng)
        placed.append((cx, cy, size_px / 2))
        m = shape_mask(th.shape, cx, cy, size_px, rng.uniform(0, 2 * math.pi), h, w)
        rgb = np.clip(np.array(COLORS[th.color], np.float32) + rng.normal(0, 10, 3), 0, 255)
        shade = 1 + 0.12 * ((np.mgrid[0:h, 0:w][0] - cy) / size_px)[..., None]
        img[m] = (rgb * shade)[m]
        owner[m] = -1 - j
    for k, st in enumerate(stuffs):
        m = owner == k
        if m.sum() >= min_area:
            id_map[m] = next_id
            segments.append(_segment(next_id, st.info, m))
            next_id += 1
    for j, th in enumerate(things):
        m = owner == -1 - j
        if m.sum() >= min_area:
            id_map[m] = next_id
            segments.append(_segment(next_id, th.info, m))
            next_id += 1
    noise = rng.normal(0, 2.5, img.shape)
    return RenderedImage(np.clip(img + noise, 0, 255).astype(np.uint8), id_map, segments)


def _free_position(size_px: float, placed: list[tuple[float, float, float]], h: int, w: int,
                   rng: np.random.Generator, tries: int = 20) -> tuple[float, float]:
    """A centre whose disc does not overlap the discs already placed (the last try if none is free), so
    things of one colour stay visually separate instances."""
    r = size_px / 2
    for _ in range(tries):
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if all((cx - x) ** 2 + (cy - y) ** 2 >= (r + rr) ** 2 for x, y, rr in placed):
            break
    return cx, cy


def _segment(sid: int, info: ClassInfo, mask: np.ndarray) -> dict:
    return {"id": sid, "category_id": info.id, "area": int(mask.sum()), "bbox": bbox_of(mask), "iscrowd": 0}


# ----------------------------------------------------------------------------- writing splits
SPLITS = {  # split -> (vocabulary, task)
    "train": ("toy_seen", "panoptic"),
    "val": ("toy_seen", "panoptic"),
    "open": ("toy_open", "panoptic"),
    "open_large": ("toy_all", "semantic"),
}


def _sample_scene(vocab: Vocabulary, max_things: int, rng: np.random.Generator) -> tuple[list, list]:
    classes = [_BY_NAME[n] for n in vocab.names]
    things = [c for c in classes if c.info.isthing]
    stuffs = [c for c in classes if not c.info.isthing]
    n_stuff = int(rng.integers(1, min(3, len(stuffs)) + 1))
    chosen_stuff = [stuffs[i] for i in rng.choice(len(stuffs), n_stuff, replace=False)]
    n_things = int(rng.integers(1, max_things + 1))
    return _sample_things(things, n_things, rng), chosen_stuff


def _sample_things(things: list[ToyClass], n: int, rng: np.random.Generator) -> list[ToyClass]:
    """``n`` things; with probability ``SAME_COLOR_PROB`` (and n > 1) all of one colour, distinct shapes
    where the vocabulary has enough of them."""
    if n > 1 and rng.random() < SAME_COLOR_PROB:
        color = things[int(rng.integers(len(things)))].color
        same = [c for c in things if c.color == color]
        order = rng.permutation(len(same))
        return [same[order[i % len(same)]] for i in range(n)]
    return [things[i] for i in rng.integers(0, len(things), n)]


def write_split(root: Path, split: str, n: int, image_size: int, max_things: int, seed: int) -> dict:
    """Generate one split under ``root/toy`` in COCO-panoptic + semantic formats."""
    vocab_name, task = SPLITS[split]
    vocab = toy_vocabulary(vocab_name)
    label_of = vocab.id_to_label()
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    base = root / "toy"
    images, annotations = [], []
    for i in tqdm(range(n), desc=f"toy {split}", leave=False):
        things, stuffs = _sample_scene(vocab, max_things, rng)
        r = render_scene(things, stuffs, image_size, rng)
        stem = f"{split}_{i:06d}"
        Image.fromarray(r.image).save(base / "images" / split / f"{stem}.png")
        sem = np.full(r.id_map.shape, 255, np.int64)
        for s in r.segments:
            sem[r.id_map == s["id"]] = label_of[s["category_id"]]
        Image.fromarray(sem.astype(np.uint8)).save(base / f"semantic_{split}" / f"{stem}.png")
        if task == "panoptic":
            Image.fromarray(id_to_rgb(r.id_map)).save(base / f"panoptic_{split}" / f"{stem}.png")
        images.append({"id": stem, "file_name": f"{stem}.png", "height": image_size, "width": image_size})
        annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": r.segments})
    if task == "panoptic":
        categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color),
                       "supercategory": "thing" if c.isthing else "stuff"} for c in vocab.classes]
        write_json(base / "annotations" / f"panoptic_{split}.json",
                   {"images": images, "annotations": annotations, "categories": categories}, indent=None)
    return {"split": split, "images": n, "segments": sum(len(a["segments_info"]) for a in annotations)}


CAPTION_TEMPLATES = ("a photo of a {t} on {s}.", "a {t} on {s}.", "a {t} and a {t2} on {s}.",
                     "a picture of {s}.", "a {t} next to a {t2}.")


def write_captions(root: Path, n: int, image_size: int, seed: int) -> dict:
    """Image-caption pairs covering every toy class: ``toy/captions/{images.npy,captions.json}``."""
    rng = np.random.default_rng([seed, 99])
    things = [c for c in TOY_CLASSES if c.info.isthing]
    stuffs = [c for c in TOY_CLASSES if not c.info.isthing]
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    captions = []
    for i in tqdm(range(n), desc="toy captions", leave=False):
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        t, t2 = _sample_things(things, 2, rng)
        s = stuffs[int(rng.integers(len(stuffs)))]
        drawn = [t] + ([t2] if "{t2}" in template else []) if "{t}" in template else []
        r = render_scene(drawn, [s], image_size, rng, min_area=1)
        images[i] = r.image
        captions.append(template.format(t=t.info.name, t2=t2.info.name, s=s.info.name))
    out = root / "toy" / "captions"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "images.npy") as tmp:
        with tmp.open("wb") as fh:
            np.save(fh, images)
    write_json(out / "captions.json", captions, indent=None)
    return {"split": "captions", "images": n}


def generate_toy_world(root: str | Path, *, seed: int, image_size: int, n_train: int, n_val: int, n_open: int,
                       n_captions: int, caption_size: int, max_things: int) -> dict:
    """Write the whole toy world under ``root/toy``; returns counts and the wall time.

    Every split and the captions draw from their own seeded stream, so with two or more CPUs the captions
    (half of the work) are rendered in a second process while this one writes the splits: the same files,
    in about half the time."""
    t0 = time.perf_counter()
    root = Path(root)
    base = root / "toy"
    for split in SPLITS:
        for sub in (f"images/{split}", f"semantic_{split}", f"panoptic_{split}", "annotations"):
            (base / sub).mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "val": n_val, "open": n_open, "open_large": n_open}
    if (os.cpu_count() or 1) < 2:
        summary = [write_split(root, s, sizes[s], image_size, max_things, seed) for s in SPLITS]
        summary.append(write_captions(root, n_captions, caption_size, seed))
    else:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            captions = pool.submit(write_captions, root, n_captions, caption_size, seed)
            summary = [write_split(root, s, sizes[s], image_size, max_things, seed) for s in SPLITS]
            summary.append(captions.result())
    manifest = {"seed": seed, "image_size": image_size, "splits": summary,
                "unseen_classes": sorted(unseen_class_names())}
    write_json(base / "manifest.json", manifest)
    return {**manifest, "seconds": round(time.perf_counter() - t0, 2)}


def load_captions(root: str | Path) -> tuple[np.ndarray, list[str]]:
    base = Path(root) / "toy" / "captions"
    images = np.load(base / "images.npy", mmap_mode="r", allow_pickle=False)
    captions = json.loads((base / "captions.json").read_text())
    return images, captions
