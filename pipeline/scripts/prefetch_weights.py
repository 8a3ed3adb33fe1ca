"""Fill the weight caches a params file needs, on a machine with internet, for an offline cluster.

    python -m pipeline.scripts.prefetch_weights --params pipeline/presets/paper.yaml

downloads the CLIP (open_clip, via the Hugging Face hub) and Mask2Former (transformers) weights into the
Hugging Face cache (``$HF_HOME``, default ``~/.cache/huggingface``) and prints what to copy. On the cluster,
put that folder at the same ``$HF_HOME`` and set ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def prefetch(params) -> list[str]:
    from models.clip_backbone import build_clip
    from models.generators import build_mask2former

    done = []
    clip = params.backbones.clip
    if clip.pretrained:
        build_clip(clip.model, clip.pretrained)
        done.append(f"CLIP {clip.model}/{clip.pretrained}")
    gen = params.backbones.generator
    if gen.source == "hub":
        build_mask2former(gen.name)
        done.append(f"Mask2Former {gen.name}")
    return done


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import load_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    done = prefetch(load_params(args.params))
    if not done:
        print(f"{args.params} needs no downloadable weights (the toy preset pre-trains its own)")
        return
    print("cached: " + "; ".join(done))
    print(f"copy {cache_dir()} to the cluster (same $HF_HOME) and set HF_HUB_OFFLINE=1 there")


if __name__ == "__main__":
    main()
