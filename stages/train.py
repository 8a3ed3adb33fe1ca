"""Stage `train`: FOV-Seg training on the seen split (resumes from its last checkpoint if one matches)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from models.text_cache import differentiable_text_embeddings
from models.trainable import count_parameters
from pipeline.config import Params, to_dict
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.registry import dataset_root, get_benchmark
from pipeline.modeling import TEXT_CACHE_DIR, file_digest, prepare_classifier, vocabulary_embeddings
from pipeline.runtime import init_seed_and_device, write_metrics
from pipeline.training import TrainingDiverged, TrainingInterrupted, TrainSet, init_distributed, train, write_curve
from stages.common import log, parser, run, tracker


def main(args, params: Params) -> dict:
    device = init_seed_and_device(params.seed, params.device)
    init_distributed(device)
    tp, mp = params.train, params.model
    model, tokenizer, weights_id = prepare_classifier(params.backbones.clip, mp, args.backbones, device)
    ds = BenchmarkDataset(get_benchmark(params.data.train_benchmark), dataset_root(params.data.root or None))
    store = ProposalStore(args.proposals) if tp.mask_source != "gt" else None
    train_set = TrainSet(ds, store, tp.crop_size, tp.lsj_min_scale, tp.lsj_max_scale, tp.mask_source,
                         tp.assign_iou, tp.max_masks, tp.data_fraction)
    if mp.tune_text:
        syn = [c.synonyms for c in ds.vocab.classes]

        def text_fn() -> torch.Tensor:
            return differentiable_text_embeddings(
                lambda p: model.clip.encode_text(tokenizer(p).to(device)), syn, mp.templates)
    else:
        cached = vocabulary_embeddings(model, tokenizer, ds.vocab, mp.templates, TEXT_CACHE_DIR,
                                       params.backbones.clip.model, weights_id, device)

        def text_fn() -> torch.Tensor:
            return cached
    counts = count_parameters(model)
    # a checkpoint is resumed only if it was trained from the same settings, weights and proposals
    config = {"model": to_dict(mp), "train": to_dict(tp), "seed": params.seed, "clip": to_dict(params.backbones.clip),
              "clip_weights": weights_id, "benchmark": params.data.train_benchmark,
              "proposals": file_digest(Path(args.proposals) / "index.json") if store is not None else None}
    with tracker(params, "train") as t:
        try:
            result = train(model, train_set, text_fn, out_dir=Path(args.checkpoints), iterations=tp.iterations,
                           batch_size=tp.batch_size, lr=tp.lr,
                           weight_decay=tp.weight_decay, backbone_lr_mult=tp.backbone_lr_mult,
                           warmup_iters=tp.warmup_iters, schedule=tp.schedule, checkpoint_every=tp.checkpoint_every,
                           loss_weights={"fiser": tp.loss_weights.fiser, "ce": tp.loss_weights.ce}, amp=tp.amp,
                           seed=params.seed, device=device, config=config, log_every=tp.log_every,
                           on_metrics=lambda row, step: t.log_metrics(row, step=step))
        except (TrainingDiverged, TrainingInterrupted) as exc:
            log.error("%s", exc)
            sys.exit(1)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "model.pt.tmp"
        torch.save({"model": model.state_dict(), "config": config, "params": counts}, tmp)
        tmp.replace(out / "model.pt")
        history = result.pop("history")
        write_curve(history, Path(args.curve))
        last = history[-10:]
        metrics = {**counts, "train_seconds": result["train_seconds"], "it_per_s": result["it_per_s"],
                   "iterations": result["iterations"], "resumed_from": result["resumed_from"],
                   "gpu_hours": result["train_seconds"] / 3600 * max(1, torch.cuda.device_count())
                   if device.type == "cuda" else 0.0,
                   "device": str(device),
                   **{k: sum(r.get(k, 0.0) for r in last) / max(len(last), 1) for k in history[-1] if
                      k.startswith("loss")}}
        write_metrics(args.metrics, metrics)
        t.log_metrics({k: v for k, v in metrics.items() if k != "device"})
        t.log_artifact(args.curve)
    return metrics


def build_parser():
    ap = parser(__doc__)
    ap.add_argument("--backbones", default="outputs/backbones")
    ap.add_argument("--proposals", required=True)
    ap.add_argument("--checkpoints", default="outputs/checkpoints")
    ap.add_argument("--out", default="outputs/train")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--curve", default="metrics/train_curve.csv")
    return ap


if __name__ == "__main__":
    run(main, build_parser())
