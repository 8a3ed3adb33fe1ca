"""Training targets from semantic-only ground truth (COCO-Stuff, Table III).

A semantic map has no instances, so each class present in an image becomes one segment (its whole
region, things included: touching instances of a class are one region). The segment id is
``label + 1`` (0 stays void, which is also what LSJ pads with); the ignore label is void.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.data.loaders import Sample, Segment
from pipeline.data.vocab import Vocabulary


def with_class_segments(sample: Sample, vocab: Vocabulary) -> Sample:
    """A copy of a semantic-only ``sample`` with ``id_map``/``segments``: one segment per present class.
    Samples that already have panoptic segments are returned unchanged."""
    if sample.id_map is not None:
        return sample
    if sample.semantic is None:
        raise ValueError(f"image {sample.image_id}: neither panoptic nor semantic ground truth to train on")
    sem = sample.semantic
    valid = (sem != sample.ignore_label) & (sem >= 0) & (sem < len(vocab))
    id_map = np.where(valid, sem + 1, 0).astype(np.int64)
    labels = np.unique(sem[valid]).tolist()
    segments = [Segment(int(c) + 1, vocab.classes[c].id, int(c), False, vocab.classes[c].isthing) for c in labels]
    return dataclasses.replace(sample, id_map=id_map, segments=segments)
