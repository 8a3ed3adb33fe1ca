"""fovseg: FOV-Seg's pipeline tools outside dvc repro (fovseg COMMAND -h for each command's options)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline.data.vocab import packaged_vocabularies  # light: json and pathlib only

USAGE = """commands:
  predict IMAGES... --classes "red circle, blue star" [--stuff "grass, sky"] | --vocab ade20k_150
      segment files, folders or globs; per image a panoptic PNG, COCO segments JSON (RLE masks), a semantic
      PNG and an overlay with a legend
  attention IMAGES... --classes "sky, grass" --out DIR
      Fig. 6 maps: text-to-image attention, original CLIP vs trained
  evaluate --gt-json-file ... --pred-json-file ... (panoptic) | --gt-folder ... --pred-folder ... --vocab NAME
      score a prediction folder against ground truth, no model needed
  preset NAME
      switch params.yaml to a preset (refuses to overwrite edits unless --force)
  sweep GRID
      run a Table IV / Fig. 9 ablation grid on Ray Tune, locally or on a cluster (resumable)
  runs [-A]
      the DVC experiments side by side: per benchmark PQ, mIoU (and unseen) and the params that differ
"""


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
    """argparse type: a folder we can write into or create, checked before any model is built. Nothing is
    created here (a run that fails later leaves no empty folder): the folder, or its nearest existing parent,
    must be a writable folder."""
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write to {path}: {existing} is a file; choose another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {path} ({exc.strerror or exc} in {existing}); choose "
                                         "another folder") from None
    return text



CLASS_LIST_HELP = ("class names separated by commas or newlines, or @FILE (one name per line, # comments); "
                   "matched case-insensitively, so each name once")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml). Run from the "
                   "repository root, or pass --params, --backbones and --checkpoint")
    p.add_argument("--backbones", default=None, help="default: the backbones stage's --out in ./dvc.yaml")
    p.add_argument("--checkpoint", default=None, help="default: last.pt in the train stage's --out in ./dvc.yaml")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="default: the params file's device")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """``fovseg predict``'s arguments (run by :func:`pipeline.eval.predict.run_predict`)."""
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote globs: 'imgs/*.jpg')")
    p.add_argument("--classes", default=None, help=f'{CLASS_LIST_HELP}, e.g. "red circle, blue square"')
    p.add_argument("--stuff", default="", help='with --classes: amorphous classes whose regions merge into one '
                                               'segment, e.g. "grass, sky" (same format as --classes)')
    p.add_argument("--vocab", default=None, help="instead of --classes: a packaged vocabulary (" +
                   ", ".join(packaged_vocabularies()) + ") or a vocabulary JSON file in their format")
    _add_model_arguments(p)
    p.add_argument("--zero-shot", action="store_true", help="skip the trained checkpoint (pretrained CLIP only)")
    p.add_argument("--threshold", type=unit_interval, default=0.3,
                   help="minimum segment score, in [0, 1] (default: 0.3)")
    p.add_argument("--out", type=writable_dir, default="predictions", help="output folder (default: predictions/); "
                   "one that already holds predictions is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the predictions already in --out: its earlier "
                   "prediction files (predictions.json, <stem>_panoptic.png, ...) are removed first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_attention_arguments(p: argparse.ArgumentParser) -> None:
    """``fovseg attention``'s arguments (run by :func:`pipeline.eval.attention.run_attention`)."""
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--classes", default=None, help=f'at most 12: {CLASS_LIST_HELP}, e.g. "sky, grass"')
    p.add_argument("--vocab", default=None, help="instead of --classes: a packaged vocabulary or vocabulary JSON "
                   "file (at most 12 classes)")
    _add_model_arguments(p)
    p.add_argument("--out", type=writable_dir, default="attention", help="output folder (default: attention/)")


def set_preset(args: argparse.Namespace) -> None:
    """Write preset ``args.name`` (the schema's defaults with ``pipeline/presets/<name>.yaml``) into params.yaml,
    never losing edits: a params.yaml whose values are not exactly one of the presets is refused, or with
    ``--force`` kept first as ``params.yaml.<time>.bak`` (a new name every time)."""
    from pipeline.config import to_dict
    from pipeline.data.formats import atomic_path
    from pipeline.errors import ParamsError
    from pipeline.params_file import read_params_yaml
    from pipeline.presets import preset_names, preset_params, render_params

    target = Path(args.params)
    new = render_params(args.name)
    if target.exists():
        try:
            current = read_params_yaml(target)
        except ParamsError:
            current = None  # unreadable: an edit like any other
        if current == to_dict(preset_params(args.name)) and target.read_text() == new:
            print(f"{target} already holds the {args.name} preset")
            return
        if not any(current == to_dict(preset_params(n)) for n in preset_names()):
            if not args.force:
                raise ParamsError(f"{target} has edits that are in no preset (its values differ from every "
                                  f"preset: {', '.join(preset_names())}); switching would lose them. Keep them "
                                  f"with `git commit` or `cp {target} my-params.yaml`, or rerun with --force "
                                  f"(your file is then kept as {target.name}.<time>.bak)")
            backup = _unused(target.with_name(f"{target.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak"))
            shutil.copy2(target, backup)
            print(f"your edited {target} is kept as {backup}")
    with atomic_path(target) as tmp:
        tmp.write_text(new)
    print(f"{target} now holds the {args.name} preset")


def _unused(path: Path) -> Path:
    """``path``, or ``path`` with ``.1``, ``.2``, ... inserted before its suffix, whichever does not exist yet."""
    n, candidate = 0, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate


def sweep(args: argparse.Namespace) -> dict:
    from pipeline.params_file import load_params
    from pipeline.sweep.grids import load_grid
    from pipeline.sweep.runner import SweepOptions, run_sweep

    params = load_params(args.params)
    name = load_grid(args.grid, params).name  # a packaged grid name or a grid file; errors before anything runs
    from pipeline.outputs import sweep_paths

    sweep_paths(args, name)
    opts = SweepOptions(out=Path(args.out), storage=Path(args.storage or f"{args.out}/ray"), metrics=Path(args.metrics),
                        backbones=Path(args.backbones), proposals_root=Path(args.proposals_root),
                        address=args.address, max_concurrent=args.max_concurrent,
                        seeds=tuple(args.seeds) if args.seeds else None)
    summary = run_sweep(args.grid, params, opts)
    print(f"sweep {name}: {sum(r['n'] for r in summary['rows'])} trials finished, "
          f"{summary['failed_trials']} failed -> {opts.metrics} (`dvc repro report` renders it into reports/)")
    return summary


def runs(args: argparse.Namespace) -> None:
    from pipeline.errors import FovsegError
    from pipeline.report.runs import experiments_table

    try:
        print(experiments_table(dvc_args=["-A"] if args.all_commits else [],
                                tablefmt="simple" if args.text else "github"))
    except RuntimeError as exc:  # dvc exp show failed: not a DVC repository, no commit, ...
        raise FovsegError(f"{exc} (run `fovseg runs` at the repository root, after a first commit)") from None


def version() -> str:
    """The installed project's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("fovseg")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:  # dispatched before the heavy imports below: evaluate starts in a blink
        from pipeline.eval.score import main as evaluate_main

        evaluate_main(argv[1:])
        return
    from pipeline.errors import FovsegError, permission_message
    from pipeline.presets import preset_names
    from pipeline.sweep.grids import available_grids

    ap = argparse.ArgumentParser(prog="fovseg", description=__doc__, epilog=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"fovseg {version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("predict", help="segment images (files, folders, globs) with any vocabulary")
    add_predict_arguments(p)
    a = sub.add_parser("attention", help="Fig. 6: text-to-image attention maps, original CLIP vs trained")
    add_attention_arguments(a)
    sub.add_parser("evaluate", help="score a prediction folder against ground truth (PQ or mIoU)", add_help=False)
    s = sub.add_parser("preset", help="switch params.yaml to a preset (refuses to overwrite edits)")
    s.add_argument("name", choices=preset_names())
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--force", action="store_true", help="switch even if params.yaml has edits (kept as a .bak)")
    w = sub.add_parser("sweep", help="run an ablation grid (Table IV / Fig. 9) on Ray Tune",
                       description="Run the rows x seeds of an ablation grid as Ray Tune trials, resumable (run the "
                                   "same command again after a kill). Grids: " + ", ".join(available_grids()) + ".",
                       epilog="on a cluster: ray start --head --node-ip-address HEAD_IP on the head node, ray "
                              "start --address HEAD_IP:6379 on the others, then fovseg sweep GRID --address "
                              "HEAD_IP:6379 (docs/sweeps.md)")
    w.add_argument("grid", help="a grid name (listed above) or a grid YAML file")
    w.add_argument("--address", default=None, help="Ray cluster to attach to (default: $RAY_ADDRESS, else local)")
    w.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: sweep.max_concurrent)")
    w.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: sweep.seeds)")
    w.add_argument("--storage", default=None, help="Ray Tune results, shared storage on a cluster (default: "
                                                    "what dvc.yaml's sweep stage passes, outputs/sweeps/<grid>/ray)")
    w.add_argument("--params", default="params.yaml")
    for k in ("backbones", "proposals-root", "out", "metrics"):
        w.add_argument(f"--{k}", default=None, help="default: what dvc.yaml's sweep@<grid> stage passes")
    r = sub.add_parser("runs", help="DVC experiments side by side: per benchmark PQ, mIoU and the params that differ")
    r.add_argument("-A", "--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    r.add_argument("--text", action="store_true", help="plain text instead of a Markdown table")
    args = ap.parse_args(argv)
    if args.command not in ("preset", "runs"):
        from pipeline.console import setup_logging

        setup_logging()
    try:
        if args.command == "predict":
            from pipeline.eval.predict import run_predict

            run_predict(args)
        elif args.command == "attention":
            from pipeline.eval.attention import run_attention

            run_attention(args)
        elif args.command == "sweep":
            sweep(args)
        elif args.command == "runs":
            runs(args)
        else:
            set_preset(args)
    except PermissionError as exc:  # never reported as "not found" or "corrupt"
        print(f"fovseg: error: {permission_message(exc.filename or exc)}", file=sys.stderr)
        sys.exit(1)
    except (FovsegError, FileNotFoundError) as exc:
        print(f"fovseg: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
