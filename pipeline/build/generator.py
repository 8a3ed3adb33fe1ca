"""Builds the frozen Mask2Former proposal generator from params and the backbones stage's outputs.

Kept apart from the classifier's builder (:mod:`pipeline.build.classifier`) so that the proposal stages
depend only on the generator: a change to TeVA, FiSeR or the
classifier re-runs training and evaluation, not proposal generation (hours of GPU time at paper scale).
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.generators import Mask2FormerGenerator, build_mask2former
from pipeline.build.backbones import TOY_GENERATOR_DIR
from pipeline.config import GeneratorParams, ProposalsParams
from pipeline.errors import WeightsUnavailableError


def generator_name(generator_params: GeneratorParams, backbones_dir: str | Path) -> str:
    """Hub id / local directory (``source: hub``) or the backbones stage's pre-trained toy Mask2Former."""
    if generator_params.source == "hub":
        return generator_params.name
    return str(Path(backbones_dir) / TOY_GENERATOR_DIR)


def build_generator(generator_params: GeneratorParams, proposal_params: ProposalsParams, backbones_dir: str | Path,
                    device: torch.device | str, override: str = "") -> Mask2FormerGenerator:
    """The frozen class-agnostic Mask2Former proposal generator, fed an aspect-preserving resize (short side
    ``proposals.short_side``, long side at most ``proposals.max_side``). ``override``: a saved Mask2Former
    folder to use instead (e.g. the generator tuned by a ``model.tune_generator`` run)."""
    name = override or generator_name(generator_params, backbones_dir)
    if (override or generator_params.source != "hub") and not Path(name).is_dir():
        raise WeightsUnavailableError(f"Mask2Former folder {name} not found; run `dvc repro backbones` first "
                                      "(or pass an existing folder)")
    return Mask2FormerGenerator(build_mask2former(name), proposal_params.short_side, proposal_params.max_proposals,
                                proposal_params.mask_threshold, proposal_params.min_area, device,
                                max_size=proposal_params.max_side)
