"""Stage `backbones`: toy preset - pre-train the tiny CLIP and tiny Mask2Former; paper preset - locate
the pretrained weights (open_clip tag / hub id) and record them (``<out>/weights.json``, both presets).
Timings (pre-training seconds) go to ``--timings`` with a ``produced`` block (UTC time, git commit, preset),
not to the DVC metrics file."""
from __future__ import annotations

from pathlib import Path

from models.clip_backbone import build_clip
from models.generators import build_mask2former
from pipeline.build.backbones import pretrain_toy_backbones
from pipeline.config import Params, to_dict
from pipeline.data.formats import write_json, write_metrics
from pipeline.data.registry import dataset_root
from pipeline.device import pick_device
from stages.common import log, parser, run, tracker, write_timings


def main(args, params: Params) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(params.device)
    clip_p, gen_p = params.backbones.clip, params.backbones.generator
    root = dataset_root(params.data.root or None)
    metrics: dict = {}
    with tracker(params, "backbones") as t:
        if clip_p.pretrained:
            build_clip(clip_p.model, clip_p.pretrained)  # fails early with instructions if unreachable
            metrics["clip"] = f"{clip_p.model}/{clip_p.pretrained}"
            log.info("CLIP %s, weights %s: the classifier sees %d x %d", clip_p.model, clip_p.pretrained,
                     clip_p.image_size, clip_p.image_size)
        if gen_p.source == "hub":
            build_mask2former(gen_p.name)
            metrics["generator"] = gen_p.name
        clip_job = None if clip_p.pretrained else dict(model=clip_p.model, **to_dict(clip_p.pretrain))
        gen_job = None if gen_p.source == "hub" else dict(benchmark=params.data.train_benchmark,
                                                          image_size=gen_p.image_size, **to_dict(gen_p.pretrain))
        m, curve = pretrain_toy_backbones(clip_job, gen_job, out, root, params.seed, device)
        write_json(out / "weights.json", {"clip": metrics.get("clip", f"{clip_p.model}/pre-trained here"),
                                          "generator": metrics.get("generator", "pre-trained here")})
        for i, v in enumerate(curve[:: max(1, len(curve) // 100)]):
            t.log_metrics({"clip_loss": v}, step=i)
        metrics.update(m)
        timings = {k: metrics.pop(k) for k in list(metrics) if k.endswith("_seconds")}
        write_metrics(args.metrics, metrics)
        write_timings(args.timings, params, timings)
        t.log_metrics({**metrics, **timings})
    return {**metrics, **timings}


def build_parser():
    return parser(__doc__, "out", "metrics", "timings")


if __name__ == "__main__":
    run(main, build_parser())
