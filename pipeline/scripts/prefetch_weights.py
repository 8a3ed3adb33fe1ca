"""Fill the weight caches a params file needs, on a machine with internet, for an offline cluster.

    python -m pipeline.scripts.prefetch_weights                  # what ./params.yaml needs
    python -m pipeline.scripts.prefetch_weights --preset paper   # what a preset needs, params.yaml untouched
    python -m pipeline.scripts.prefetch_weights --params other-params.yaml

downloads the CLIP (open_clip, via the Hugging Face hub) and Mask2Former (transformers) weights into the
Hugging Face cache (``$HF_HOME``, default ``~/.cache/huggingface``) and prints what to copy. On the cluster,
put that folder at the same ``$HF_HOME`` and set ``HF_HUB_OFFLINE=1``. The files in ``pipeline/presets/`` are
overrides, not params files: name them with ``--preset``. Without network (the hub unreachable, or
``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set) it prints one line saying what to do and exits 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
HUB = "the Hugging Face hub (huggingface.co)"


def cache_dir() -> Path:
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def offline_settings() -> list[str]:
    """The offline variables set to a true value here (``HF_HUB_OFFLINE=1``, ...)."""
    return [f"{v}={os.environ[v]}" for v in OFFLINE_VARS
            if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]


def unavailable(what: str, exc: BaseException) -> str:
    """One line: what could not be fetched from the hub, why, and what to copy where."""
    from models.errors import WeightsUnavailableError

    cause = exc.__context__ if isinstance(exc, WeightsUnavailableError) and exc.__context__ else exc
    why = " ".join(str(cause).split())
    why = why if len(why) <= 240 else why[:237] + "..."
    offline = offline_settings()
    where = (f"{' and '.join(offline)} is set here, so nothing is downloaded" if offline else
             "the hub cannot be reached from here")
    return (f"cannot fetch {what} from {HUB} ({why}): {where}. Run this on a machine with internet (no "
            f"{'/'.join(OFFLINE_VARS)} set there), then copy its $HF_HOME folder to this machine's $HF_HOME "
            f"({cache_dir()}) and set HF_HUB_OFFLINE=1 here")


def _from_hub(what: str, local: str, build: Callable[[], object]) -> None:
    """``build()``; a failure to get hub weights (not a local file's) becomes one WeightsUnavailableError line."""
    from models.errors import WeightsUnavailableError

    try:
        build()
    except (WeightsUnavailableError, OSError) as exc:
        if local and Path(local).exists():
            raise
        raise WeightsUnavailableError(unavailable(what, exc)) from None


def prefetch(params) -> list[str]:
    """Build (so download) each hub backbone ``params`` uses; returns what was cached."""
    from models import clip_backbone, generators

    done = []
    clip = params.backbones.clip
    if clip.pretrained:
        what = f"CLIP {clip.model}/{clip.pretrained}"
        _from_hub(what, clip.pretrained, lambda: clip_backbone.build_clip(clip.model, clip.pretrained))
        done.append(what)
    gen = params.backbones.generator
    if gen.source == "hub":
        what = f"Mask2Former {gen.name}"
        _from_hub(what, gen.name, lambda: generators.build_mask2former(gen.name))
        done.append(what)
    return done


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """open_clip and transformers log their own error lines before raising; the one line we print says it all."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def load(args: argparse.Namespace):
    """The params of ``--preset`` or ``--params`` (a preset's overrides file is refused, naming ``--preset``)."""
    from pipeline.errors import ParamsError
    from pipeline.params_file import load_params
    from pipeline.presets import PRESET_DIR, preset_params

    if args.preset:
        return preset_params(args.preset)
    path = Path(args.params or "params.yaml")
    if path.is_file() and path.resolve().parent == PRESET_DIR.resolve():
        raise ParamsError(f"{path} holds only the overrides of preset {path.stem!r}, not a params file: use "
                          f"`--preset {path.stem}`")
    return load_params(path)


def main(argv: list[str] | None = None) -> None:
    from pipeline.errors import FovsegError
    from pipeline.presets import preset_names

    ap = argparse.ArgumentParser(prog="python -m pipeline.scripts.prefetch_weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--params", default=None, help="params file (default: params.yaml)")
    source.add_argument("--preset", default=None, choices=preset_names(),
                        help="a preset's params (pipeline/presets), without switching params.yaml")
    args = ap.parse_args(argv)
    name = f"preset {args.preset}" if args.preset else (args.params or "params.yaml")
    try:
        params = load(args)
        with _quiet_libraries():
            done = prefetch(params)
    except (FovsegError, FileNotFoundError) as exc:
        print(f"prefetch_weights: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
    if not done:
        print(f"{name} needs no downloadable weights (the toy preset pre-trains its own)")
        return
    print("cached: " + "; ".join(done))
    print(f"copy {cache_dir()} to the cluster (same $HF_HOME) and set HF_HUB_OFFLINE=1 there")


if __name__ == "__main__":
    main()
