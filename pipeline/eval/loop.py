"""Evaluation as one loop feeding evaluators (detectron2's ``DatasetEvaluator`` / ``inference_on_dataset``).

:func:`inference_on_dataset` reads each sample, takes its masks from a *proposal source* (the stored
proposals of the frozen generator, or the ground truth = oracle generator), labels them with a
*classifier source* (the FOV-Seg classifier, or the ground truth = oracle classifier, Fig. 2a), merges them
into semantic / panoptic predictions and hands each (sample, prediction) to every evaluator:
:class:`PanopticEvaluator` (PQ/SQ/RQ), :class:`SemanticEvaluator` (mIoU, fwIoU, mACC, pACC),
:class:`PredictionWriter` (COCO-format panoptic PNGs + json, semantic label maps) and
:class:`TimingEvaluator` (classifier seconds per image). :func:`evaluate_benchmark` is what the
``evaluate`` stage runs: trained model, oracle generator, oracle classifier and the untrained baseline.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.generators import oracle_proposals
from models.inference import merge_proposals, oracle_class_probs
from pipeline.build.classifier import ReadyClassifier, build_classifier, classify_image
from pipeline.config import ClipParams, DataParams, EvaluateParams, ModelParams, override
from pipeline.console import progress as console_progress
from pipeline.data.formats import bbox_of, write_json, write_label_map, write_panoptic_png
from pipeline.data.loaders import BenchmarkDataset, Sample, check_images_evaluated, iter_samples
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.registry import benchmark_vocabulary, dataset_root, get_benchmark
from pipeline.data.vocab import Vocabulary
from pipeline.device import seed_everything
from pipeline.eval.metrics import PQStat, SemanticStat

HEADLINE = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen",
            "fwIoU", "mACC", "pACC")


def seen_unseen_groups(vocab_names: list[str], train_names: list[str]) -> dict[str, list[int]]:
    """Classes whose name is in the training vocabulary are 'seen', the others 'unseen'."""
    train = {n.lower() for n in train_names}
    seen = [i for i, n in enumerate(vocab_names) if n.lower() in train]
    return {"seen": seen, "unseen": [i for i in range(len(vocab_names)) if i not in set(seen)]}


def ground_truth_regions(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Panoptic segments (crowd included), or one region per class of a semantic-only ground truth."""
    if s.id_map is not None:
        return s.segment_masks(include_crowd=True)
    labels = [int(c) for c in np.unique(s.semantic) if c != s.ignore_label]
    if not labels:
        return np.zeros((0, *s.semantic.shape), bool), np.zeros((0,), np.int64)
    return np.stack([s.semantic == c for c in labels]), np.array(labels, np.int64)


# ----------------------------------------------------------------------------- sources
class ProposalSource(Protocol):
    def __call__(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(Q,H,W) bool masks and (Q,) objectness scores of one sample."""


class StoredProposals:
    """The frozen generator's proposals, read from the proposal store."""

    def __init__(self, store: ProposalStore):
        self.store = store

    def __call__(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return self.store[sample.image_id]


class GroundTruthProposals:
    """Oracle generator: the ground-truth regions with objectness 1 (Fig. 2, Table IV(j))."""

    def __call__(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        p = oracle_proposals(ground_truth_regions(sample)[0])
        return p.masks, p.scores


class ClassifierSource(Protocol):
    device: torch.device  # where the proposals are merged (the classifier's device)

    def __call__(self, sample: Sample, masks: np.ndarray) -> torch.Tensor:
        """(Q,C) class probabilities of the sample's masks."""


class ModelClassifier:
    """The FOV-Seg classifier against the text embeddings of the benchmark's vocabulary."""

    def __init__(self, ready: ReadyClassifier, vocab: Vocabulary, evaluate: EvaluateParams,
                 text: torch.Tensor | None = None):
        self.ready, self.evaluate = ready, evaluate
        self.text = text if text is not None else ready.text_embeddings(vocab)
        self.device = ready.device

    def __call__(self, sample: Sample, masks: np.ndarray) -> torch.Tensor:
        return classify_image(self.ready, sample.image, masks, self.text, self.evaluate)


class OracleClassifier:
    """Oracle classifier (Fig. 2a): each mask gets the label of its best-IoU ground-truth region."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.device = torch.device("cpu")

    def __call__(self, sample: Sample, masks: np.ndarray) -> torch.Tensor:
        gt_masks, gt_labels = ground_truth_regions(sample)
        return oracle_class_probs(torch.from_numpy(masks), torch.from_numpy(gt_masks), torch.from_numpy(gt_labels),
                                  self.num_classes)


# ----------------------------------------------------------------------------- evaluators
@dataclass
class Prediction:
    """What the loop hands each evaluator for one sample."""

    semantic: np.ndarray  # (H,W) labels; the benchmark's ignore label where no proposal covers the pixel
    id_map: np.ndarray | None  # (H,W) panoptic segment ids, 0 = void (panoptic benchmarks)
    segments: list[dict] | None  # segments_info with contiguous labels
    seconds: float  # classifier time for this image


class DatasetEvaluator:
    """Accumulates over a benchmark: ``reset``, ``process`` per sample, ``evaluate`` -> metrics dict."""

    def reset(self) -> None:
        pass

    def process(self, sample: Sample, prediction: Prediction) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}


class PanopticEvaluator(DatasetEvaluator):
    """PQ/SQ/RQ (all, things, stuff, seen/unseen groups, per class)."""

    def __init__(self, vocab: Vocabulary, groups: dict[str, list[int]] | None = None):
        self.vocab, self.groups = vocab, groups
        self.reset()

    def reset(self) -> None:
        self.stat = PQStat(len(self.vocab))

    def process(self, sample: Sample, prediction: Prediction) -> None:
        gt_segs = [{"id": g.id, "label": g.label, "iscrowd": g.iscrowd} for g in sample.segments]
        self.stat.add(sample.id_map, gt_segs, prediction.id_map, prediction.segments)

    def evaluate(self) -> dict:
        return self.stat.summary(self.vocab.thing_mask, self.groups)


class SemanticEvaluator(DatasetEvaluator):
    """mIoU, fwIoU, mACC, pACC (and per-class IoU, seen/unseen groups)."""

    def __init__(self, num_classes: int, ignore_label: int, groups: dict[str, list[int]] | None = None):
        self.num_classes, self.ignore_label, self.groups = num_classes, ignore_label, groups
        self.reset()

    def reset(self) -> None:
        self.stat = SemanticStat(self.num_classes, self.ignore_label)

    def process(self, sample: Sample, prediction: Prediction) -> None:
        self.stat.add(sample.semantic, prediction.semantic)

    def evaluate(self) -> dict:
        return self.stat.summary(self.groups)


class PredictionWriter(DatasetEvaluator):
    """Writes ``semantic/<id>.png|.tif`` label maps and, on panoptic benchmarks, COCO panoptic
    ``panoptic/<id>.png`` + ``predictions.json`` under ``out_dir``."""

    def __init__(self, out_dir: str | Path, vocab: Vocabulary, panoptic: bool):
        self.out_dir, self.vocab, self.panoptic = Path(out_dir), vocab, panoptic
        self.reset()

    def reset(self) -> None:
        self.annotations: list[dict] = []

    def process(self, sample: Sample, prediction: Prediction) -> None:
        big = len(self.vocab) > 255
        write_label_map(self.out_dir / "semantic" / f"{sample.image_id}{'.tif' if big else '.png'}",
                        prediction.semantic, big)
        if self.panoptic:
            file_name = f"{sample.image_id}.png"
            write_panoptic_png(self.out_dir / "panoptic" / file_name, prediction.id_map)
            info = [{"id": s["id"], "category_id": self.vocab.classes[s["label"]].id, "iscrowd": 0,
                     "area": int(s["area"]), "bbox": bbox_of(prediction.id_map == s["id"]),
                     "score": round(s["score"], 4)} for s in prediction.segments]
            self.annotations.append({"image_id": sample.image_id, "file_name": file_name, "segments_info": info})

    def evaluate(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.panoptic:
            categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in self.vocab.classes]
            write_json(self.out_dir / "predictions.json", {"annotations": self.annotations,
                                                           "categories": categories}, indent=None)
        return {}


class TimingEvaluator(DatasetEvaluator):
    """Classifier seconds per image (proposal reading and merging excluded)."""

    def reset(self) -> None:
        self.seconds, self.n = 0.0, 0

    def __init__(self):
        self.reset()

    def process(self, sample: Sample, prediction: Prediction) -> None:
        self.seconds += prediction.seconds
        self.n += 1

    def evaluate(self) -> dict:
        return {"seconds_per_image": self.seconds / max(self.n, 1)}


def default_evaluators(ds: BenchmarkDataset, groups: dict[str, list[int]] | None = None,
                       pred_dir: str | Path | None = None) -> list[DatasetEvaluator]:
    """PQ (panoptic benchmarks), semantic metrics, timing, and the prediction writer when ``pred_dir``."""
    panoptic = ds.bench.task == "panoptic"
    out: list[DatasetEvaluator] = [PanopticEvaluator(ds.vocab, groups)] if panoptic else []
    out += [SemanticEvaluator(len(ds.vocab), ds.bench.ignore_label, groups), TimingEvaluator()]
    if pred_dir is not None:
        out.append(PredictionWriter(pred_dir, ds.vocab, panoptic))
    return out


# ----------------------------------------------------------------------------- the loop
@torch.inference_mode()
def inference_on_dataset(ds: BenchmarkDataset, proposals: ProposalSource, classify: ClassifierSource,
                         evaluators: list[DatasetEvaluator], *, object_threshold: float, overlap_threshold: float,
                         max_images: int = 0, score: str = "class", progress: bool = True) -> dict:
    """Run the proposal and classifier sources over ``ds`` and feed every evaluator; returns their merged
    metrics plus ``images``, ``skipped_images``, ``empty_images`` and ``classes``.

    ``score`` (``evaluate.score``): a segment's score is its class probability (``class``: Mask2Former's and
    MaskCLIP's panoptic inference, softmax over the benchmark's vocabulary) or that times the generator's
    objectness (``objectness_x_class``); the semantic map weighs masks the same way. Deliberately not copied
    from MaskCLIP (``maskclip/model.py``): its semantic inference drops the last column of the softmax (with a
    test vocabulary that has no appended "other", the benchmark's last real class) and its ``labels.ne(
    num_classes)`` compares against the training vocabulary's size; here the softmax covers exactly the
    benchmark's classes, every one of them a candidate."""
    is_thing = torch.tensor(ds.vocab.thing_mask)
    panoptic = ds.bench.task == "panoptic"
    stats: Counter = Counter()
    for ev in evaluators:
        ev.reset()
    for s in console_progress(iter_samples(ds, limit=max_images, stats=stats), total=max_images or len(ds),
                              desc=f"eval {ds.bench.name}", disable=not progress):
        masks, scores = proposals(s)
        if score == "class":
            scores = np.ones_like(scores)
        t0 = time.perf_counter()
        probs = classify(s, masks)
        seconds = time.perf_counter() - t0
        semantic_t, id_t, segs = merge_proposals(probs, torch.from_numpy(masks), torch.from_numpy(scores),
                                                 is_thing if panoptic else None, object_threshold, overlap_threshold,
                                                 void_label=ds.bench.ignore_label, device=classify.device)
        semantic, id_map = semantic_t.numpy(), id_t.numpy() if panoptic else None
        pred = Prediction(semantic, id_map, segs, seconds)
        for ev in evaluators:
            ev.process(s, pred)
    check_images_evaluated(ds.bench.name, stats["read"], stats)  # zero images: an error, never PQ 0 with exit 0
    out: dict = {}
    for ev in evaluators:
        out.update(ev.evaluate())
    out.update({"images": stats["read"], "skipped_images": stats["skipped"], "empty_images": stats["empty"],
                "classes": ds.vocab.names})
    return out


# ----------------------------------------------------------------------------- the evaluate stage
def groups_of(benchmark: str, train_benchmark: str) -> dict[str, list[int]]:
    vocab = benchmark_vocabulary(get_benchmark(benchmark))
    return seen_unseen_groups(vocab.names, benchmark_vocabulary(get_benchmark(train_benchmark)).names)


# what each evaluation variant uses: (classifier, masks); the evaluate stage runs the first four
VARIANTS = {"trained": ("trained", "proposals"), "oracle_generator": ("trained", "oracle"),
            "oracle_classifier": ("oracle", "proposals"), "baseline": ("untrained", "proposals"),
            "baseline_oracle_generator": ("untrained", "oracle")}
STAGE_VARIANTS = ("trained", "oracle_generator", "oracle_classifier", "baseline")


def maskclip_architecture(model: ModelParams) -> ModelParams:
    """``model`` without the paper's modules: MaskCLIP's classifier (Table IV(j)'s MaskCLIP row)."""
    return override(model, {"teva.target_attention": False, "adapter_layers": 0, "fiser.enabled": False})


def evaluate_benchmark(benchmark: str, *, data: DataParams, clip: ClipParams, model: ModelParams,
                       evaluate: EvaluateParams, seed: int, device: torch.device | str, backbones_dir: str | Path,
                       checkpoint: str | Path | None, proposals_dir: str | Path | None,
                       predictions_dir: str | Path | None = None,
                       variants: tuple[str, ...] = STAGE_VARIANTS) -> dict:
    """Metrics of one benchmark (percent) for each of ``variants`` (:data:`VARIANTS`): the trained classifier on
    the stored proposals (``trained``), on ground-truth masks (``oracle_generator``), ground-truth labels on the
    stored proposals (``oracle_classifier``) and the untrained classifier (``baseline``: MaskCLIP's zero-shot
    mask classification with CLIP's own weights, no TeVA, no adapter; ``baseline_oracle_generator`` on
    ground-truth masks).

    The first variant gives the headline metrics (and the predictions written to ``predictions_dir``); the others
    are sub-dicts under their names. With ``trained`` and ``baseline`` both run, ``per_class`` compares them.
    A value that does not exist is absent, never 0.0: no ``PQ*`` on a semantic-only benchmark, no ``*_unseen``
    on a benchmark without unseen classes (toy_val), no ``*_seen`` on one without seen classes."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown evaluation variant(s) {unknown}; valid: {list(VARIANTS)}")
    ds = BenchmarkDataset(get_benchmark(benchmark), dataset_root(data.root or None))
    groups = groups_of(benchmark, data.train_benchmark)
    classifiers: dict[str, ClassifierSource] = {}

    def classifier(kind: str) -> ClassifierSource:
        if kind not in classifiers:
            if kind == "oracle":
                classifiers[kind] = OracleClassifier(len(ds.vocab))
            else:
                seed_everything(seed)
                # untrained = MaskCLIP zero-shot: CLIP's own weights, mask attention without TeVA or adapter
                arch = model if kind == "trained" else maskclip_architecture(model)
                ready = build_classifier(clip, arch, backbones_dir, device,
                                         checkpoint=checkpoint if kind == "trained" else None)
                classifiers[kind] = ModelClassifier(ready, ds.vocab, evaluate)
        return classifiers[kind]

    results = {}
    for i, name in enumerate(variants):
        kind, masks = VARIANTS[name]
        proposals = GroundTruthProposals() if masks == "oracle" else StoredProposals(ProposalStore(proposals_dir))
        results[name] = inference_on_dataset(
            ds, proposals, classifier(kind), default_evaluators(ds, groups, predictions_dir if i == 0 else None),
            object_threshold=evaluate.object_threshold, overlap_threshold=evaluate.overlap_threshold,
            max_images=evaluate.max_images, score=evaluate.score)
    head = results[variants[0]]
    metrics = {k: head[k] for k in HEADLINE if k in head}
    metrics.update({"benchmark": benchmark, "images": head["images"],
                    "skipped_images": head["skipped_images"], "seconds_per_image": head["seconds_per_image"]})
    for name in variants[1:]:
        metrics[name] = {k: results[name][k] for k in HEADLINE if k in results[name]}
    if "trained" in results and "baseline" in results:
        trained, baseline = results["trained"], results["baseline"]
        metrics["per_class"] = {"class": trained["classes"], "IoU": trained["IoU_per_class"],
                                "unseen": [i in set(groups["unseen"]) for i in range(len(trained["classes"]))],
                                "IoU_baseline": baseline["IoU_per_class"],
                                **({"PQ": trained["PQ_per_class"]} if "PQ_per_class" in trained else {})}
    return metrics
