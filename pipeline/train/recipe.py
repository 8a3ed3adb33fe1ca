"""FOV-Seg training as a recipe (torchtune's single-device recipe is the model): ``setup`` (parameter
groups, warmup + poly schedule, AMP scaler, resume), ``train`` (a DataLoader over steps feeding
``train_step``), ``save_checkpoint`` / ``save_model``. AMP and DDP on GPUs, checkpoints every N iterations
and on SIGTERM/SIGINT, exact resume, NaN guard. The ``train`` stage calls it through
:func:`pipeline.train.run.run_training`; the parameter groups and schedule are :mod:`pipeline.train.optimizer`,
what a checkpoint must match to resume is :mod:`pipeline.train.resume`.

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

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from models.classifier import FOVSeg
from models.matching import IGNORE, classification_loss, hungarian_targets, iou_targets, matched_counts
from pipeline.checkpoints import load_or_set_aside, load_trainable_state, save_checkpoint, set_aside, trainable_state
from pipeline.config import TrainParams, to_dict
from pipeline.console import progress
from pipeline.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from pipeline.tracking import code_digest
from pipeline.train.data import Batch, StepBatches, TrainSet, step_loader
from pipeline.train.distributed import world
from pipeline.train.optimizer import lr_lambda, param_groups
from pipeline.train.resume import identity_differences, resume_identity, with_defaults

log = logging.getLogger(__name__)


def model_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s draws inside the model (FiSeR), a stream distinct from the data's."""
    return (seed * 1_000_003 + step) ^ 0x5DEECE66D


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
            diff = identity_differences(have, want) or ["(checkpoint written by another version: no identity)"]
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
        counts = batch.valid.sum(1).tolist()  # proposals come first, padding after (collate, the generator tuner)
        for i, ((gt_masks, gt_labels), n) in enumerate(zip(batch.segments(logits.device), counts)):
            if cfg.assignment == "hungarian":  # slices, not boolean masks: no host sync per image on a GPU
                m = cfg.match
                targets[i, :n] = hungarian_targets(
                    logits[i, :n].softmax(-1), masks[i, :n], gt_masks, gt_labels, num_classes,
                    class_weight=m.class_weight, mask_weight=m.mask_weight, dice_weight=m.dice_weight,
                    num_points=m.points, generator=gen)
            else:
                targets[i, :n] = iou_targets(masks[i, :n], gt_masks, gt_labels, cfg.assign_iou)
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
