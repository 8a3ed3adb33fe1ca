"""What the ``train`` stage (and a sweep trial) calls: :func:`run_training` builds the classifier, the training
set and the periodic evaluator, runs a :class:`~pipeline.train.recipe.TrainingRecipe`, writes the weights and
the curves, and returns the summary of ``metrics/train.json``."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from models.classifier import FOVSeg
from models.trainable import count_parameters
from pipeline.build.classifier import build_classifier, file_digest
from pipeline.config import (
    ClipParams,
    DataParams,
    EvaluateParams,
    GeneratorParams,
    ModelParams,
    ProposalsParams,
    TrainParams,
    to_dict,
)
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.registry import dataset_root, get_benchmark
from pipeline.data.vocab import vocabulary_from_names
from pipeline.train.data import TrainSet
from pipeline.train.distributed import world
from pipeline.train.generator_tuning import build_generator_tuner
from pipeline.train.recipe import TrainingRecipe

log = logging.getLogger(__name__)


def summary_metrics(result: dict, counts: dict, device: torch.device) -> dict:
    """metrics/train.json: parameter counts, time, speed and the mean of the last 10 logged loss terms."""
    history = result["history"]
    last = history[-10:]
    evals = result.get("evals") or []
    best = max(evals, key=lambda e: e["score"]) if evals else None
    return {**counts, "train_seconds": result["train_seconds"], "it_per_s": result["it_per_s"],
            **({"best_step": best["step"], "best_score": best["score"], "best_metric": best["metric"]} if best else {}),
            "iterations": result["iterations"], "resumed_from": result["resumed_from"],
            **({"schedule_changed_at": result["schedule_changed_at"]}
               if result.get("schedule_changed_at") is not None else {}),
            # no GPU-hours on CPU: absent, not 0.0
            **({"gpu_hours": result["train_seconds"] / 3600 * world()[1]} if device.type == "cuda" else {}),
            "device": str(device),
            **{k: sum(r.get(k, 0.0) for r in last) / max(len(last), 1) for k in (history[-1] if history else {})
               if k.startswith("loss")}}


def run_training(*, data: DataParams, clip: ClipParams, model: ModelParams, train: TrainParams,
                 generator: GeneratorParams, proposals: ProposalsParams, evaluate: EvaluateParams, seed: int,
                 device: torch.device, backbones_dir: str | Path, proposals_dir: str | Path | None,
                 checkpoints_dir: str | Path, out_dir: str | Path, curve_path: str | Path,
                 eval_proposals_dir: str | Path | None = None, eval_curve_path: str | Path | None = None,
                 on_metrics: Callable[[dict, int], None] | None = None) -> dict:
    """Build the classifier, train (or resume) it, write ``<out_dir>/last.pt`` (and ``best.pt`` with
    ``train.eval_every``: the best periodic score on ``train.eval_benchmark``), the loss curve CSV and the
    evaluation curve CSV; returns the metrics of ``metrics/train.json``."""
    ready = build_classifier(clip, model, backbones_dir, device)
    ds = BenchmarkDataset(get_benchmark(data.train_benchmark), dataset_root(data.root or None))
    # tune-generator: live proposals from the generator replace the store; the set yields gt segments only
    tuner = (build_generator_tuner(generator, proposals, train, backbones_dir, len(ds.vocab))
             if model.tune_generator else None)
    store = ProposalStore(proposals_dir) if train.mask_source != "gt" and tuner is None else None
    # samples arrive at the classifier's input size (the generator being tuned sees the crop itself)
    train_set = TrainSet(ds, store, train.crop_size, train.lsj_min_scale, train.lsj_max_scale,
                         "gt" if tuner is not None else train.mask_source, train.max_masks,
                         image_size=train.crop_size if tuner is not None else ready.model.image_size,
                         grid=ready.model.mask_grid, data_fraction=train.data_fraction)
    counts = count_parameters(ready.model)
    identity = {"model": to_dict(model), "clip": to_dict(clip), "clip_weights": ready.weights_id,
                "benchmark": data.train_benchmark,
                "proposals": file_digest(Path(proposals_dir) / "meta.json") if store is not None else None}
    no_object = vocabulary_from_names([train.no_object_text], "no_object")
    evaluator = None
    if train.eval_every and eval_proposals_dir is not None:
        evaluator = periodic_evaluator(ready, data, train, evaluate, eval_proposals_dir, model.tune_text)
    recipe = TrainingRecipe(ready.model, train_set, ready.text_source(ds.vocab, differentiable=model.tune_text),
                            train, seed=seed, device=device, checkpoint_dir=checkpoints_dir, identity=identity,
                            generator_tuner=tuner,
                            no_object_source=ready.text_source(no_object, differentiable=model.tune_text),
                            evaluator=evaluator, best_path=Path(out_dir) / "best.pt")
    log.info("training FOV-Seg on %s at %d x %d (mask grid %d x %d), LSJ crop %d, batch %d, up to %d proposals per "
             "image, %d iterations, on %s", clip.model, ready.model.image_size, ready.model.image_size,
             train_set.grid, train_set.grid, train.crop_size, train.batch_size, train.max_masks, train.iterations,
             device)
    recipe.setup()
    result = recipe.train(on_metrics=on_metrics)
    recipe.save_model(Path(out_dir) / "last.pt", {"params": counts})
    if tuner is not None and recipe.rank == 0:  # evaluate with: proposals stage --generator <out_dir>/mask2former
        tuner.save(Path(out_dir) / "mask2former")
    if recipe.rank == 0:
        write_curve(result["history"], Path(curve_path))
        if eval_curve_path is not None:
            write_curve(result["evals"], Path(eval_curve_path))
    return summary_metrics(result, counts, device)


def periodic_evaluator(ready, data: DataParams, train: TrainParams, evaluate: EvaluateParams,
                       proposals_dir: str | Path, fresh_text: bool) -> Callable[[FOVSeg], dict]:
    """``train.eval_every``'s scoring: the evaluate stage's loop on the first ``train.eval_images`` images of
    ``train.eval_benchmark`` with its stored proposals; the score is PQ (panoptic benchmarks) or mIoU."""
    from pipeline.eval.loop import ModelClassifier, StoredProposals, default_evaluators, groups_of, inference_on_dataset

    bench = train.eval_benchmark
    ds = BenchmarkDataset(get_benchmark(bench), dataset_root(data.root or None))
    proposals = StoredProposals(ProposalStore(proposals_dir))
    groups = groups_of(bench, data.train_benchmark)
    metric = "PQ" if ds.bench.task == "panoptic" else "mIoU"

    def run(model: FOVSeg) -> dict:
        with torch.no_grad():  # a text tower that trains gives new embeddings: no cache then
            text = ready.text_source(ds.vocab, differentiable=True)() if fresh_text else None
        out = inference_on_dataset(ds, proposals, ModelClassifier(ready, ds.vocab, evaluate, text=text),
                                   default_evaluators(ds, groups), object_threshold=evaluate.object_threshold,
                                   overlap_threshold=evaluate.overlap_threshold, max_images=train.eval_images,
                                   score=evaluate.score, progress=False)
        scores = {f"{bench}/{k}": out[k] for k in ("PQ", "mIoU", "PQ_unseen", "mIoU_unseen") if k in out}
        return {**scores, "metric": f"{bench}/{metric}", "score": out[metric]}
    return run


def write_curve(history: list[dict], path: Path) -> None:
    """Training curve as CSV (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)
