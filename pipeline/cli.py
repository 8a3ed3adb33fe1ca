"""``fovseg`` console script.

- ``fovseg predict IMAGE --classes "red circle, grass, sky"``: segment your own image with any vocabulary;
  writes ``<out>/<stem>_overlay.png`` and ``<out>/<stem>_segments.json``.
- ``fovseg preset {toy,paper}``: switch params.yaml to a preset.
- ``fovseg evaluate --gt_json_file ... --pred_json_file ...`` (panoptic) or ``--gt_folder --pred_folder --vocab``
  (semantic): score a prediction folder, no model needed (see ``fovseg evaluate -h``).
- ``fovseg sweep GRID``: run a Table IV / Fig. 9 ablation grid on Ray Tune (resumable; see pipeline/sweeps/).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image


def _overlay(image: np.ndarray, id_map: np.ndarray, segments: list[dict], names: list[str]) -> Image.Image:
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    colours = rng.integers(40, 255, (len(segments) + 1, 3))
    out = image.astype(np.float32).copy()
    for k, s in enumerate(segments):
        m = id_map == s["id"]
        out[m] = 0.45 * out[m] + 0.55 * colours[k]
    scale = max(1, 512 // max(image.shape[:2]))
    pil = Image.fromarray(out.astype(np.uint8)).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                        Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    for s in segments:
        ys, xs = np.nonzero(id_map == s["id"])
        if len(xs):
            label = f"{names[s['label']]} {s['score']:.2f}"
            x, y = int(xs.mean() * scale), int(ys.mean() * scale)
            draw.text((x - 3 * len(label), y - 5), label, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return pil


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def writable_dir(text: str) -> str:
    """argparse type: a folder we can create and write into, checked before any model is built."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {path} ({exc.strerror or exc}); choose another "
                                         "folder") from None
    return text


def predict(args: argparse.Namespace) -> dict:
    import torch

    from models.inference import panoptic_inference, semantic_inference
    from pipeline.builder import build_classifier, build_generator, classify_image
    from pipeline.config import load_params
    from pipeline.data.formats import bbox_of, read_image
    from pipeline.data.vocab import vocabulary_from_names
    from pipeline.errors import CheckpointError
    from pipeline.runtime import pick_device

    params = load_params(args.params)
    device = pick_device(params.device)
    _default_paths_from_dvc_yaml(args)
    stuff = {n.strip().lower() for n in (args.stuff or "").split(",") if n.strip()}
    vocab = vocabulary_from_names(args.classes.split(",") + [n for n in (args.stuff or "").split(",")], "predict")
    image = read_image(args.image)
    generator = build_generator(params.backbones.generator, params.proposals, args.backbones, device)
    checkpoint = None if args.zero_shot else Path(args.checkpoint)
    if checkpoint is not None and not checkpoint.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found: run `dvc repro train`, pass --checkpoint, "
                              "or use --zero-shot to classify with the pretrained CLIP alone")
    ready = build_classifier(params.backbones.clip, params.model, args.backbones, device, checkpoint=checkpoint)
    props = generator([image])[0]
    masks = torch.from_numpy(props.masks)
    probs = classify_image(ready, image, masks, ready.text_embeddings(vocab),
                           (params.evaluate.test_short_side, params.evaluate.test_max_side))
    obj = torch.from_numpy(props.scores)
    is_thing = torch.tensor([name.lower() not in stuff for name in vocab.names])  # stuff classes merge
    id_map, segs = panoptic_inference(probs, masks.float(), obj, is_thing, args.threshold,
                                      params.evaluate.overlap_threshold)
    semantic = semantic_inference(probs, masks.float(), obj)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    id_np = id_map.numpy()
    _overlay(image, id_np, segs, vocab.names).save(out_dir / f"{stem}_overlay.png")
    result = {"image": str(args.image), "classes": vocab.names, "proposals": len(props.masks),
              "segments": [{"id": s["id"], "label": vocab.names[s["label"]], "score": round(s["score"], 4),
                            "area": s["area"], "bbox": bbox_of(id_np == s["id"])} for s in segs],
              "semantic_pixel_share": {vocab.names[c]: round(float((semantic == c).float().mean()), 4)
                                       for c in semantic.unique().tolist()}}
    (out_dir / f"{stem}_segments.json").write_text(json.dumps(result, indent=2))
    print(f"{len(segs)} segments -> {out_dir / f'{stem}_overlay.png'}, {out_dir / f'{stem}_segments.json'}")
    return result


def _default_paths_from_dvc_yaml(args: argparse.Namespace) -> None:
    """``--backbones`` / ``--checkpoint`` default to where dvc.yaml (in the current folder) puts them."""
    from pipeline.dvcfile import stage_argument
    from pipeline.errors import FovsegError

    if args.backbones is not None and (args.checkpoint is not None or args.zero_shot):
        return
    if not Path("dvc.yaml").is_file():
        raise FovsegError("no dvc.yaml here to find the pipeline's outputs: run from the repository root or pass "
                          "--backbones and --checkpoint")
    if args.backbones is None:
        args.backbones = stage_argument("dvc.yaml", "backbones", "--out")
    if args.checkpoint is None:
        args.checkpoint = str(Path(stage_argument("dvc.yaml", "train", "--out")) / "model.pt")


def set_preset(args: argparse.Namespace) -> None:
    target = Path(args.params)
    if args.name != "toy":
        src = resources.files("pipeline") / "presets" / f"{args.name}.yaml"
        if target.exists() and not (target.parent / "params.toy.yaml").exists():
            shutil.copy(target, target.parent / "params.toy.yaml")
        target.write_text(src.read_text())
    else:
        saved = target.parent / "params.toy.yaml"
        if not saved.exists():
            raise FileNotFoundError(f"{saved} not found; `git checkout params.yaml` restores the toy preset")
        shutil.copy(saved, target)
    print(f"{target} now holds the {args.name} preset")


_SWEEP_PATHS = ("backbones", "proposals_root", "out", "storage", "metrics")


def _sweep_paths_from_dvc_yaml(args: argparse.Namespace, name: str) -> None:
    """Unset path options default to what dvc.yaml's ``sweep@<grid>`` stage passes (for this grid)."""
    import yaml

    from pipeline.dvcfile import command, stages
    from pipeline.errors import FovsegError

    if all(getattr(args, k) is not None for k in _SWEEP_PATHS):
        return
    if not Path("dvc.yaml").is_file():
        raise FovsegError("no dvc.yaml here to find the pipeline's outputs: run from the repository root or pass "
                          + ", ".join(f"--{k.replace('_', '-')}" for k in _SWEEP_PATHS))
    raw = yaml.safe_load(Path(args.params).read_text()) or {}
    raw.setdefault("sweep", {})["grids"] = [name]
    _, argv = command(stages(raw, Path("dvc.yaml"))[f"sweep@{name}"])
    for k in _SWEEP_PATHS:
        if getattr(args, k) is None:
            setattr(args, k, argv[argv.index(f"--{k.replace('_', '-')}") + 1])


def sweep(args: argparse.Namespace) -> dict:
    from pipeline.config import load_params
    from pipeline.sweep import SweepOptions, load_grid, run_sweep

    params = load_params(args.params)
    name = load_grid(args.grid, params).name  # a packaged grid name or a grid file; errors before anything runs
    _sweep_paths_from_dvc_yaml(args, name)
    opts = SweepOptions(out=Path(args.out), storage=Path(args.storage), metrics=Path(args.metrics),
                        backbones=Path(args.backbones), proposals_root=Path(args.proposals_root),
                        address=args.address, max_concurrent=args.max_concurrent,
                        seeds=tuple(args.seeds) if args.seeds else None)
    summary = run_sweep(args.grid, params, opts)
    print(f"sweep {name}: {sum(r['n'] for r in summary['rows'])} trials finished, "
          f"{summary['failed_trials']} failed -> {opts.metrics}")
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:  # dispatched before the heavy imports below: evaluate starts in a blink
        from pipeline.score import main as evaluate_main

        evaluate_main(argv[1:])
        return
    from pipeline.errors import FovsegError
    from pipeline.runtime import setup_logging

    setup_logging()
    ap = argparse.ArgumentParser(prog="fovseg", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="segment an image with any vocabulary")
    p.add_argument("image")
    p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "red circle, blue square"')
    p.add_argument("--stuff", default="", help='comma-separated amorphous classes whose regions merge into one '
                                               'segment, e.g. "grass, sky"')
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--backbones", default=None, help="default: the backbones stage's --out in ./dvc.yaml")
    p.add_argument("--checkpoint", default=None, help="default: model.pt in the train stage's --out in ./dvc.yaml")
    p.add_argument("--zero-shot", action="store_true", help="skip the trained checkpoint (pretrained CLIP only)")
    p.add_argument("--threshold", type=unit_interval, default=0.3, help="minimum segment score, in [0, 1]")
    p.add_argument("--out", type=writable_dir, default="predictions")
    sub.add_parser("evaluate", help="score a prediction folder against ground truth (PQ or mIoU); "
                                    "see `fovseg evaluate -h`", add_help=False)
    s = sub.add_parser("preset", help="switch params.yaml to a preset")
    s.add_argument("name", choices=["toy", "paper", "paper_coco_stuff"])
    s.add_argument("--params", default="params.yaml")
    w = sub.add_parser("sweep", help="run an ablation grid (Table IV / Fig. 9) on Ray Tune")
    w.add_argument("grid", help="grid name (pipeline/sweeps/<grid>.yaml) or a grid YAML file")
    w.add_argument("--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS, else local)")
    w.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: sweep.max_concurrent)")
    w.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: sweep.seeds)")
    w.add_argument("--storage", default=None, help="Ray Tune results, shared storage on a cluster (default: "
                                                    "what dvc.yaml's sweep stage passes, outputs/sweeps/<grid>/ray)")
    w.add_argument("--params", default="params.yaml")
    for k in ("backbones", "proposals-root", "out", "metrics"):
        w.add_argument(f"--{k}", default=None, help="default: what dvc.yaml's sweep@<grid> stage passes")
    args = ap.parse_args(argv)
    try:
        if args.command == "predict":
            predict(args)
        elif args.command == "sweep":
            sweep(args)
        else:
            set_preset(args)
    except (FovsegError, FileNotFoundError) as exc:
        print(f"fovseg: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
