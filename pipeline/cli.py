"""``fovseg`` console script.

- ``fovseg predict IMAGES... --classes "red circle, blue star" [--stuff "grass, sky"]`` or ``--vocab ade20k_150``:
  segment files, folders or globs; per image a panoptic PNG, COCO segments JSON (RLE masks), a semantic PNG
  and an overlay with legend and contours (see pipeline/predict.py).
- ``fovseg attention IMAGES... --classes "sky, grass" --out DIR``: Fig. 6 maps, original CLIP vs trained.
- ``fovseg preset {toy,paper,paper_coco_stuff}``: switch params.yaml to a preset (refuses to overwrite edits).
- ``fovseg evaluate --gt_json_file ... --pred_json_file ...`` (panoptic) or ``--gt_folder --pred_folder --vocab``
  (semantic): score a prediction folder, no model needed (see ``fovseg evaluate -h``).
- ``fovseg sweep GRID``: run a Table IV / Fig. 9 ablation grid on Ray Tune (resumable; see pipeline/sweeps/).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

PRESETS = ("toy", "paper", "paper_coco_stuff")


def preset_text(name: str) -> str:
    """The packaged preset ``pipeline/presets/<name>.yaml`` (toy.yaml is a copy of the repository's params.yaml)."""
    return (resources.files("pipeline") / "presets" / f"{name}.yaml").read_text()


def set_preset(args: argparse.Namespace) -> None:
    """Write a preset into params.yaml, never losing edits: a params.yaml that is not exactly one of the
    packaged presets is refused, or with ``--force`` kept as ``params.yaml.<time>.bak``."""
    from pipeline.errors import ParamsError

    target = Path(args.params)
    new = preset_text(args.name)
    if target.exists():
        current = target.read_text()
        if current == new:
            print(f"{target} already holds the {args.name} preset")
            return
        if current not in {preset_text(n) for n in PRESETS}:
            backup = target.with_name(f"{target.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
            if not getattr(args, "force", False):
                raise ParamsError(f"{target} has edits that are in no preset (it differs from every "
                                  "pipeline/presets/*.yaml); switching would lose them. Keep them with "
                                  f"`git commit` or `cp {target} my-params.yaml`, or rerun with --force "
                                  f"(your file is then kept as {backup.name})")
            shutil.copy2(target, backup)
            print(f"your edited {target} is kept as {backup}")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, target)
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
          f"{summary['failed_trials']} failed -> {opts.metrics} (`dvc repro report` renders it into reports/)")
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:  # dispatched before the heavy imports below: evaluate starts in a blink
        from pipeline.score import main as evaluate_main

        evaluate_main(argv[1:])
        return
    from pipeline.cli_args import add_attention_arguments, add_predict_arguments  # light: no torch
    from pipeline.errors import FovsegError

    ap = argparse.ArgumentParser(prog="fovseg", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="segment images (files, folders, globs) with any vocabulary")
    add_predict_arguments(p)
    a = sub.add_parser("attention", help="Fig. 6: text-to-image attention maps, original CLIP vs trained")
    add_attention_arguments(a)
    sub.add_parser("evaluate", help="score a prediction folder against ground truth (PQ or mIoU); "
                                    "see `fovseg evaluate -h`", add_help=False)
    s = sub.add_parser("preset", help="switch params.yaml to a preset (refuses to overwrite edits)")
    s.add_argument("name", choices=PRESETS)
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--force", action="store_true", help="switch even if params.yaml has edits (kept as a .bak)")
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
    if args.command != "preset":
        from pipeline.runtime import setup_logging  # imports torch: after parsing, so --help answers at once

        setup_logging()
    try:
        if args.command == "predict":
            from pipeline.predict import run_predict

            run_predict(args)
        elif args.command == "attention":
            from pipeline.attention import run_attention

            run_attention(args)
        elif args.command == "sweep":
            sweep(args)
        else:
            set_preset(args)
    except (FovsegError, FileNotFoundError) as exc:
        print(f"fovseg: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
