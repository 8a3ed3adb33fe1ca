"""Run a classifier over a benchmark: panoptic + semantic predictions, PQ/mIoU, COCO-format output."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.classifier import FOVSeg
from models.inference import oracle_class_probs, panoptic_inference, semantic_inference
from pipeline.data.formats import bbox_of, write_json, write_label_map, write_panoptic_png
from pipeline.data.loaders import BenchmarkDataset, check_images_evaluated, iter_samples
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.transforms import eval_resize_shape
from pipeline.metrics import PQStat, SemanticStat


def seen_unseen_groups(vocab_names: list[str], train_names: list[str]) -> dict[str, list[int]]:
    """Classes whose name is in the training vocabulary are 'seen', the others 'unseen'."""
    train = {n.lower() for n in train_names}
    seen = [i for i, n in enumerate(vocab_names) if n.lower() in train]
    return {"seen": seen, "unseen": [i for i in range(len(vocab_names)) if i not in set(seen)]}


def classifier_input_size(h: int, w: int, short: int, max_size: int, patch: int) -> tuple[int, int]:
    th, tw = eval_resize_shape(h, w, short, max_size)
    return max(patch, round(th / patch) * patch), max(patch, round(tw / patch) * patch)


@torch.inference_mode()
def evaluate(model: FOVSeg | None, ds: BenchmarkDataset, text_embeds: torch.Tensor | None, *,
             proposals: ProposalStore | None, short_side: int, max_side: int, object_threshold: float,
             overlap_threshold: float, device: torch.device, groups: dict[str, list[int]] | None = None,
             pred_dir: Path | None = None, max_images: int = 0, oracle_classifier: bool = False) -> dict:
    """Metrics dict (percent) for one benchmark. ``proposals=None`` uses ground-truth masks (oracle generator);
    ``oracle_classifier`` labels each mask by its best-IoU ground truth (Fig. 2a)."""
    vocab = ds.vocab
    is_thing = torch.tensor(vocab.thing_mask)
    pq = PQStat(len(vocab)) if ds.bench.task == "panoptic" else None
    sem = SemanticStat(len(vocab), ds.bench.ignore_label)
    stats: Counter = Counter()
    annotations, t_model, n_img = [], 0.0, 0
    if model is not None:
        model.eval().to(device)
    patch = model.visual.patch_size if model is not None else 1
    for s in tqdm(iter_samples(ds, limit=max_images, stats=stats), total=max_images or len(ds),
                  desc=f"eval {ds.bench.name}"):
        h, w = s.image.shape[:2]
        gt_masks, gt_labels = _ground_truth_regions(s)
        if proposals is None:
            masks, scores = gt_masks, np.ones(len(gt_masks), np.float32)
        else:
            masks, scores = proposals[s.image_id]
            stats["proposals"] += len(masks)
        masks_t = torch.from_numpy(masks)
        t0 = time.perf_counter()
        if oracle_classifier or model is None:
            probs = oracle_class_probs(masks_t, torch.from_numpy(gt_masks), torch.from_numpy(gt_labels), len(vocab))
        else:
            image = torch.from_numpy(s.image).permute(2, 0, 1)[None].to(device)
            size = classifier_input_size(h, w, short_side, max_side, patch)
            logits = model(image, masks_t[None].to(device), text_embeds.to(device), size=size)["logits"][0]
            probs = logits.float().softmax(-1).cpu()
        t_model += time.perf_counter() - t0
        n_img += 1
        mask_probs = masks_t.float()
        obj = torch.from_numpy(scores)
        sem_pred = semantic_inference(probs, mask_probs, obj).numpy()
        sem.add(s.semantic, sem_pred)
        if pred_dir is not None:
            big = len(vocab) > 255
            write_label_map(pred_dir / "semantic" / f"{s.image_id}{'.tif' if big else '.png'}", sem_pred, big)
        if pq is not None:
            id_map, segs = panoptic_inference(probs, mask_probs, obj, is_thing, object_threshold, overlap_threshold)
            gt_segs = [{"id": g.id, "label": g.label, "iscrowd": g.iscrowd} for g in s.segments]
            pq.add(s.id_map, gt_segs, id_map.numpy(), segs)
            if pred_dir is not None:
                annotations.append(_write_prediction(pred_dir, s.image_id, id_map.numpy(), segs, vocab))
    check_images_evaluated(ds.bench.name, n_img, stats)  # zero images: an error, never PQ 0 with exit 0
    if pred_dir is not None:
        pred_dir.mkdir(parents=True, exist_ok=True)
    if pred_dir is not None and pq is not None:
        categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in vocab.classes]
        write_json(pred_dir / "predictions.json", {"annotations": annotations, "categories": categories}, indent=None)
    out: dict = {}
    if pq is not None:
        out.update(pq.summary(vocab.thing_mask, groups))
    out.update(sem.summary(groups))
    out.update({"images": n_img, "skipped_images": stats["skipped"], "empty_images": stats["empty"],
                "seconds_per_image": t_model / max(n_img, 1), "classes": vocab.names})
    return out


def _ground_truth_regions(s) -> tuple[np.ndarray, np.ndarray]:
    """Panoptic segments (crowd included), or one region per class of a semantic-only ground truth."""
    if s.id_map is not None:
        return s.segment_masks(include_crowd=True)
    labels = [int(c) for c in np.unique(s.semantic) if c != s.ignore_label]
    if not labels:
        return np.zeros((0, *s.semantic.shape), bool), np.zeros((0,), np.int64)
    return np.stack([s.semantic == c for c in labels]), np.array(labels, np.int64)


def _write_prediction(pred_dir: Path, image_id: str, id_map: np.ndarray, segs: list[dict], vocab) -> dict:
    file_name = f"{image_id}.png"
    write_panoptic_png(pred_dir / "panoptic" / file_name, id_map)
    info = [{"id": s["id"], "category_id": vocab.classes[s["label"]].id, "iscrowd": 0, "area": int(s["area"]),
             "bbox": bbox_of(id_map == s["id"]), "score": round(s["score"], 4)} for s in segs]
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}
