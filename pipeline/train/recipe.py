"""FOV-Seg training as a recipe (torchtune's single-device recipe is the model): ``setup`` (parameter
groups, warmup + poly schedule, AMP scaler, resume), ``train`` (a DataLoader over steps feeding
``train_step``), ``save_checkpoint`` / ``save_model``. AMP and DDP on GPUs, checkpoints every N iterations
and on SIGTERM/SIGINT, exact resume, NaN guard. :func:`run_training` is what the ``train`` stage calls.

Determinism: the batch of step ``s`` (which images, their augmentation) is drawn in the data loader from an
RNG seeded by (seed, s), and the model's own draws (FiSeR's masked class) from another seeded by (seed, s), so
the weights do not depend on ``train.num_workers`` and a run killed and resumed reaches the same weights as
one that was not (bitwise on CPU; on CUDA some backward kernels, e.g. adaptive max pooling and attention, use
atomics and differ in the last bits from run to run). Under DDP each rank draws its images' augmentation from
its own stream (rank 0's is the single-process one).

Resume: a checkpoint is resumed when everything that changes the result matches (model, CLIP weights,
proposals, seed and every ``train`` key except ``iterations``, ``checkpoint_every``, ``log_every`` and
``num_workers``); otherwise the stage stops, names the keys that differ and leaves the checkpoint alone.
Extending ``iterations`` continues from the checkpoint. The warmup + poly/cosine schedule depends on the total,
so (choice) the continued steps follow the schedule of the *new* total: at the resume step the learning rate
moves from its old-schedule value to the new schedule's value there, and the run is not bitwise equal to
a fresh run of the new length (reaching that would need retraining from step 0). ``metrics/train.json``
records ``resumed_from`` and ``schedule_changed_at`` when this happens. A checkpoint past the new total is
refused.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from models.classifier import FOVSeg
from models.matching import IGNORE, classification_loss, hungarian_targets, iou_targets, matched_counts
from models.trainable import count_parameters, is_backbone_parameter
from pipeline.build.classifier import build_classifier, file_digest
from pipeline.checkpoints import load_or_set_aside, load_trainable_state, save_checkpoint, set_aside, trainable_state
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
from pipeline.console import progress
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.registry import dataset_root, get_benchmark
from pipeline.data.vocab import vocabulary_from_names
from pipeline.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from pipeline.tracking import code_digest
from pipeline.train.data import Batch, StepBatches, TrainSet, step_loader
from pipeline.train.distributed import world
from pipeline.train.generator_tuning import build_generator_tuner

log = logging.getLogger(__name__)

# train keys that do not change the trained weights: a checkpoint resumes across changes to them
RESUME_NEUTRAL_KEYS = ("iterations", "checkpoint_every", "log_every", "num_workers")


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "poly":
            return (1 - progress) ** 0.9
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0
    return f


NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm,
              torch.nn.LocalResponseNorm)
EMBEDDING_NAMES = ("token", "embed", "embedding", "class_embedding", "positional_embedding", "logit_scale")


def decay_exempt_names(model: torch.nn.Module, rule: str) -> set[str]:
    """Parameters without weight decay. ``norm+embed`` (MaskCLIP's detectron2 optimizer: WEIGHT_DECAY_NORM and
    WEIGHT_DECAY_EMBED 0.0, biases decayed): every parameter of a normalisation layer and every embedding
    (``nn.Embedding`` weights; learned tokens, position embeddings, the logit scale by name). ``1d``: every
    parameter with one dimension or none (biases, norm scales, single vectors)."""
    if rule == "1d":
        return {n for n, p in model.named_parameters() if p.ndim <= 1}
    exempt = set()
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if isinstance(module, NORM_TYPES) or isinstance(module, torch.nn.Embedding) or \
                    any(key in pname for key in EMBEDDING_NAMES):
                exempt.add(full)
    return exempt


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, backbone_mult: float,
                 decay_exempt: str = "norm+embed") -> list[dict]:
    """Backbone (pre-trained CLIP) weights get ``lr * backbone_mult``; the ``decay_exempt`` rule's parameters
    (:func:`decay_exempt_names`) get no weight decay. Each group is named (``backbone``/``new``, ``/no_decay``)
    for the logged learning rates."""
    exempt = decay_exempt_names(model, decay_exempt)
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((is_backbone_parameter(name), name in exempt), []).append(p)
    return [{"params": ps, "lr": lr * (backbone_mult if bb else 1.0), "weight_decay": 0.0 if no_decay else weight_decay,
             "name": ("backbone" if bb else "new") + ("/no_decay" if no_decay else "")}
            for (bb, no_decay), ps in sorted(groups.items())]


def model_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s draws inside the model (FiSeR), a stream distinct from the data's."""
    return (seed * 1_000_003 + step) ^ 0x5DEECE66D


def resume_identity(identity: dict) -> dict:
    """What a checkpoint must match to be resumed: everything but the result-neutral train keys."""
    out = dict(identity)
    out["train"] = {k: v for k, v in identity.get("train", {}).items() if k not in RESUME_NEUTRAL_KEYS}
    return out


def with_defaults(identity: dict) -> dict:
    """A checkpoint's identity with the params keys it predates filled in at their defaults: a key added to
    the code later (at a default that keeps the old behaviour) does not block resuming."""
    from pipeline.config import ClipParams, ModelParams, TrainParams

    def merge(base: dict, over: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in over.items()}}

    out = dict(identity)
    for key, cls in (("model", ModelParams), ("clip", ClipParams), ("train", TrainParams)):
        if isinstance(out.get(key), dict):
            out[key] = merge(to_dict(cls()), out[key])
    return out


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return keys


def _atomic_save(obj: dict, path: Path) -> None:
    save_checkpoint(obj, path)  # atomic, with a content digest checked on load


class TrainingRecipe:
    """``setup()`` then ``train()``; ``identity`` (params, weights and data ids) decides what may resume."""

    def __init__(self, model: FOVSeg, train_set: TrainSet, text_source: Callable[[], torch.Tensor],
                 cfg: TrainParams, *, seed: int, device: torch.device, checkpoint_dir: str | Path,
                 identity: dict | None = None, generator_tuner=None,
                 no_object_source: Callable[[], torch.Tensor] | None = None,
                 evaluator: Callable[[FOVSeg], dict] | None = None, best_path: str | Path | None = None):
        self.model, self.train_set, self.text_source, self.cfg = model, train_set, text_source, cfg
        if cfg.assignment == "hungarian" and no_object_source is None:
            raise ValueError("train.assignment: hungarian needs the no-object class's text embedding")
        self.no_object_source = no_object_source  # (1,E): MaskCLIP's "other", appended to the training classes
        self.generator_tuner = generator_tuner  # Table IV(b): the generator trains too (pipeline/generator_training)
        self.seed, self.device = seed, torch.device(device)
        self.ckpt_path = Path(checkpoint_dir) / "last.pt"
        self.identity = {**(identity or {}), "train": to_dict(cfg), "seed": seed}
        self.code = code_digest()  # kept beside the identity: other code never blocks resuming an unfinished run
        self.loss_weights = {"fiser": cfg.loss_weights.fiser, "ce": cfg.loss_weights.ce,
                             "generator": cfg.loss_weights.generator}
        self.rank, self.world = world()
        self.start, self.history, self.train_seconds = 0, [], 0.0
        self.schedule_changed_at: int | None = None
        # periodic evaluation (train.eval_every): the scores so far and the best one, saved as best_path
        self.evaluator, self.best_path = evaluator, Path(best_path) if best_path else None
        self.evals: list[dict] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, model = self.cfg, self.model.to(self.device).train()
        model.set_label_names([c.synonyms[0] if c.synonyms else c.name for c in self.train_set.ds.vocab.classes])
        if self.generator_tuner is not None:  # [tune-generator hook 1/4] optimiser, checkpoint and resume include it
            self.generator_tuner.attach(model)
        self.ddp_model: torch.nn.Module = model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult,
                                                        cfg.decay_exempt), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.schedule, cfg.warmup_iters, cfg.iterations))
        self.use_amp = cfg.amp and self.device.type == "cuda"
        # bf16 where the GPU has it natively (Ampere+); fp16 with loss scaling on older GPUs (V100, T4), where
        # torch would otherwise report emulated bf16 as supported
        native_bf16 = self.use_amp and torch.cuda.is_bf16_supported(including_emulation=False)
        self.amp_dtype = torch.bfloat16 if native_bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        ckpt = self._load_resume_checkpoint()
        if ckpt is not None:
            self._resume(ckpt)

    def _load_resume_checkpoint(self) -> dict | None:
        """``last.pt`` if sound; a damaged one is renamed aside with a warning and never blocks. Under DDP rank 0
        checks (and sets aside) first and the other ranks load after it, so they never race to rename it."""
        if self.world == 1:
            return load_or_set_aside(self.ckpt_path)
        ckpt = load_or_set_aside(self.ckpt_path) if self.rank == 0 else None
        dist.barrier()
        return ckpt if self.rank == 0 else load_or_set_aside(self.ckpt_path)

    def _set_aside_finished(self, why: str) -> None:
        if self.rank == 0:  # the other ranks loaded it after rank 0 and only start over
            aside = set_aside(self.ckpt_path, "finished")
            log.warning("%s holds a finished run %s; set aside as %s, training starts over", self.ckpt_path, why,
                        aside)

    def _resume(self, ckpt: dict) -> None:
        """Continue from ``ckpt``. One with other settings is refused while unfinished (it may be wanted), and
        set aside when finished (nothing is left to resume: changed params start a new run, as dvc expects). A
        finished one written by other code (``code_digest``) is set aside too: DVC re-runs training after a code
        change, and the old weights must not come back as the new result. An unfinished one from other code
        resumes, with a warning (a long run killed, then the code edited, need not start over)."""
        want, have = resume_identity(self.identity), resume_identity(with_defaults(ckpt.get("identity") or {}))
        total = (ckpt.get("identity") or {}).get("train", {}).get("iterations")
        finished = total is not None and int(ckpt["step"]) >= int(total)
        if want != have:
            diff = _differences(have, want) or ["(checkpoint written by another version: no identity)"]
            if finished:
                self._set_aside_finished(f"with other settings ({'; '.join(diff[:6])})")
                return
            raise CheckpointError(
                f"{self.ckpt_path} was trained with other settings ({'; '.join(diff[:6])}); it is kept as is. "
                "Restore those settings to resume it, or move/delete it to train from scratch")
        if ckpt.get("code") != self.code:
            if finished:
                self._set_aside_finished("written by other code (models/ or pipeline/ changed since)")
                return
            log.warning("%s was written by other code (models/ or pipeline/ changed since); resuming it anyway",
                        self.ckpt_path)
        step = int(ckpt["step"])
        if step > self.cfg.iterations:
            raise CheckpointError(f"{self.ckpt_path} is at iteration {step}, past train.iterations = "
                                  f"{self.cfg.iterations}; raise train.iterations, or move/delete the checkpoint "
                                  "to train a shorter run from scratch")
        load_trainable_state(self.model, ckpt["model"], self.ckpt_path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.evals = list(ckpt.get("evals", []))
        self.scheduler.load_state_dict(ckpt["scheduler"])  # lr_lambdas are not in the state: the new total holds
        if ckpt.get("scaler"):  # empty when written without fp16 loss scaling (CPU, bf16)
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start, self.history = step, list(ckpt["history"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        self.schedule_changed_at = ckpt.get("schedule_changed_at")
        if int(ckpt.get("iterations", self.cfg.iterations)) != self.cfg.iterations and step < self.cfg.iterations:
            self.schedule_changed_at = step
            log.warning("train.iterations changed %s -> %d: continuing from iteration %d with the schedule of "
                        "the new total", ckpt.get("iterations"), self.cfg.iterations, step)
        log.info("resuming from %s at iteration %d", self.ckpt_path, step)

    # ------------------------------------------------------------------ step
    def train_step(self, step: int, batch: Batch) -> dict:
        """One optimisation step on ``batch``; returns the logged row."""
        torch.manual_seed(model_seed(self.seed, step))  # this step's model-side draws (FiSeR)
        device, model, cfg = self.device, self.model, self.cfg
        with torch.autocast(device_type=device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            # [tune-generator hook 2/4] live proposals replace the cached ones; adds the "generator" loss
            batch, gen_terms = self.generator_tuner(batch) if self.generator_tuner is not None else (batch, {})
            text = self.text_source().to(device)
            extra = self.no_object_source().to(device) if cfg.assignment == "hungarian" else None
            use_fiser = model.fiser is not None and self.loss_weights.get("fiser", 0) > 0
            masks = batch.proposal_masks(device)
            out = self.ddp_model(batch.images.to(device), masks, text, extra_classes=extra,
                                 fiser_class_sets=batch.class_sets if use_fiser else None, class_sets=batch.class_sets)
            logits = out["logits"].float()
            if not torch.isfinite(logits).all():
                raise TrainingDiverged(f"the classifier's logits became non-finite at iteration {step} (before the "
                                       f"loss); the last good checkpoint is {self.ckpt_path}. Lower train.lr or check "
                                       "the inputs")
            targets = self.targets(step, logits, masks, batch, num_classes=text.shape[0])
            no_object_weight = cfg.no_object_weight if cfg.assignment == "hungarian" else None
            terms = {"ce": classification_loss(logits, targets, no_object_weight)}
            if use_fiser:
                terms["fiser"] = out["loss_fiser"]
            terms.update(gen_terms)
            loss = sum(self.loss_weights.get(k, 1.0) * v for k, v in terms.items())
        matched, assigned = matched_counts(targets, text.shape[0])
        if matched == 0:
            log.warning("iteration %d: no proposal got a class target (%d proposals, %d ground-truth segments; "
                        "%s): its classification loss is 0", step + 1, int(batch.valid.sum()),
                        int(batch.gt_valid.sum()), "no proposal overlaps a segment by train.assign_iou"
                        if cfg.assignment == "iou" else "no segment in the crops")
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at iteration {step} (terms: "
                f"{ {k: float(v) for k, v in terms.items()} }); the last good checkpoint is {self.ckpt_path}. "
                "Lower train.lr or check the inputs")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.generator_tuner is not None:  # [tune-generator hook 3/4] outside the classifier's DDP
            self.generator_tuner.all_reduce_gradients()
        if self.cfg.clip_grad_norm > 0:  # MaskCLIP / detectron2 "full_model" clipping: one L2 norm over all
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        lrs = {f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups}  # after this step's update
        base = self.cfg.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        return {"step": step + 1, "loss": loss.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
                "matched": matched, "lr": base, **lrs}

    @torch.no_grad()
    def targets(self, step: int, logits: torch.Tensor, masks: torch.Tensor, batch: Batch,
                num_classes: int) -> torch.Tensor:
        """(B,Q) targets of this step's proposals (:mod:`models.matching`): bipartite matching on the current
        class probabilities, or the IoU assignment; IGNORE at padding."""
        cfg = self.cfg
        targets = torch.full(logits.shape[:2], IGNORE, dtype=torch.long, device=logits.device)
        gen = torch.Generator().manual_seed(model_seed(self.seed, step) + 1)  # the matcher's sampled points
        for i, (gt_masks, gt_labels) in enumerate(batch.segments(logits.device)):
            keep = batch.valid[i].to(logits.device)
            if cfg.assignment == "hungarian":
                m = cfg.match
                targets[i, keep] = hungarian_targets(
                    logits[i, keep].softmax(-1), masks[i, keep], gt_masks, gt_labels, num_classes,
                    class_weight=m.class_weight, mask_weight=m.mask_weight, dice_weight=m.dice_weight,
                    num_points=m.points, generator=gen)
            else:
                targets[i, keep] = iou_targets(masks[i, keep], gt_masks, gt_labels, cfg.assign_iou)
        return targets

    # ------------------------------------------------------------------ save
    def save_checkpoint(self, step: int) -> None:
        if self.rank == 0:
            _atomic_save({"model": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                          "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                          "step": step, "iterations": self.cfg.iterations, "history": self.history,
                          "identity": self.identity, "code": self.code, "train_seconds": self.train_seconds,
                          "schedule_changed_at": self.schedule_changed_at, "evals": self.evals}, self.ckpt_path)

    def save_model(self, path: str | Path, extra: dict | None = None) -> None:
        """The trained weights (what evaluate/benchmark/predict load: the trainable parameters, the FiSeR
        predictor dropped) with ``extra`` metadata."""
        if self.rank == 0:
            _atomic_save({"model": trainable_state(self.model, exclude=("fiser.",)), "identity": self.identity,
                          **(extra or {})}, Path(path))

    def evaluate(self, step: int, on_metrics: Callable[[dict, int], None] | None = None) -> None:
        """Score the current weights (``evaluator``); the best score so far saves them as ``best_path``."""
        row = {"step": step, **self.evaluator(self.model)}
        self.model.train()
        best = max((e["score"] for e in self.evals), default=float("-inf"))
        self.evals.append(row)
        if on_metrics:
            on_metrics({k: v for k, v in row.items() if k != "step"}, step)
        if row["score"] > best and self.best_path is not None:
            self.save_model(self.best_path, {"step": step, "score": row["score"]})
            log.info("iteration %d: %s %.2f, the best so far -> %s", step, row["metric"], row["score"],
                     self.best_path)

    # ------------------------------------------------------------------ loop
    def train(self, on_metrics: Callable[[dict, int], None] | None = None,
              on_step: Callable[[int], None] | None = None) -> dict:
        """Train from the resumed step to ``iterations``; returns iterations, resumed_from, history,
        train_seconds (all segments of the run) and it_per_s (iterations / train_seconds)."""
        cfg = self.cfg
        stop = {"signal": None}

        def handler(signum, _frame):
            stop["signal"] = signum

        # signal handlers exist only in the main thread (a Ray Tune trial runs in another one: it resumes
        # from the last periodic checkpoint instead)
        in_main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
        batches = StepBatches(self.train_set, cfg.batch_size, self.seed, self.rank, self.world)
        bar = progress(total=cfg.iterations, initial=self.start, desc="train", disable=self.rank != 0)
        step = self.start
        try:
            t0 = time.perf_counter()
            for step, batch in enumerate(step_loader(batches, self.start, cfg.iterations, cfg.num_workers),
                                         start=self.start):
                row = self.train_step(step, batch)
                self.train_seconds += time.perf_counter() - t0
                self.history.append(row)
                bar.update(1)
                if self.rank == 0:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k.startswith("loss")}, refresh=False)
                    if on_metrics and (step + 1) % cfg.log_every == 0:
                        on_metrics(row, step + 1)
                if on_step:
                    on_step(step + 1)
                if self.evaluator is not None and self.rank == 0 and cfg.eval_every and \
                        ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.iterations):
                    self.evaluate(step + 1, on_metrics)
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.iterations:
                    self.save_checkpoint(step + 1)
                if stop["signal"] is not None:
                    self.save_checkpoint(step + 1)
                    raise TrainingInterrupted(f"stopped by signal {stop['signal']} after iteration {step + 1}; "
                                              f"checkpoint {self.ckpt_path}; run the stage again to resume")
                t0 = time.perf_counter()
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
            if self.generator_tuner is not None:  # [tune-generator hook 4/4] last.pt holds the classifier alone
                self.generator_tuner.detach_from(self.model)
        its = cfg.iterations / self.train_seconds if self.train_seconds > 0 else 0.0
        return {"iterations": cfg.iterations, "resumed_from": self.start, "history": self.history,
                "train_seconds": self.train_seconds, "it_per_s": its,
                "schedule_changed_at": self.schedule_changed_at, "evals": self.evals}


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
            "gpu_hours": result["train_seconds"] / 3600 * world()[1] if device.type == "cuda" else 0.0,
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
