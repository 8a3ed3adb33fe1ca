"""Shared fixtures: a small generated toy world and the COCO-panoptic sample in tests/fixtures."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
# DVC in a test's fresh project (no `core.analytics = false` there) would spawn an analytics daemon after each
# command: it phones home, and it outlives the command that spawned it (a "process left running")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# the text-embedding cache lives outside the repository (pipeline.builder.text_cache_dir); tests use a fresh one
os.environ.setdefault("FOVSEG_CACHE", tempfile.mkdtemp(prefix="fovseg-test-cache-"))
REPO = Path(__file__).resolve().parents[1]

FIXTURES = REPO / "tests" / "fixtures"
COCO_SAMPLE = FIXTURES / "coco_panoptic_sample"  # two COCO val2017 images, see its LICENSE.md


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from pipeline.data.toy import generate_toy_world

    root = tmp_path_factory.mktemp("datasets")
    generate_toy_world(root, seed=0, image_size=64, n_train=12, n_val=6, n_open=6, n_captions=64,
                       caption_size=32, max_things=3)
    return root


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory) -> Path:
    """The fixture sample arranged in the detectron2 layout as coco_panoptic_val."""
    root = tmp_path_factory.mktemp("coco")
    (root / "coco" / "annotations").mkdir(parents=True)
    shutil.copytree(COCO_SAMPLE / "images", root / "coco" / "val2017")
    shutil.copytree(COCO_SAMPLE / "panoptic", root / "coco" / "panoptic_val2017")
    shutil.copy(COCO_SAMPLE / "panoptic.json", root / "coco" / "annotations" / "panoptic_val2017.json")
    return root


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> Path:
    """A backbones folder as the backbones stage writes it: random tiny CLIP (clip.pt) and Mask2Former."""
    import torch

    from models.clip_backbone import build_clip
    from models.generators import build_mask2former

    d = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    torch.save(clip.state_dict(), d / "clip.pt")
    build_mask2former("fovseg-tiny", 96, random_init=True).save_pretrained(d / "mask2former")
    return d


def no_object_embedding(dim: int):
    """A fixed unit vector standing for the no-object class's text embedding ("other") in tests."""
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.randn(1, dim, generator=torch.Generator().manual_seed(99)), dim=-1)


def run_recipe(model, train_set, text_fn, *, out_dir, iterations: int, batch_size: int = 2, lr: float = 1e-3,
               weight_decay: float = 0.05, backbone_lr_mult: float = 0.1, warmup_iters: int = 0,
               schedule: str = "constant", checkpoint_every: int = 10, loss_weights: dict | None = None,
               amp: bool = False, seed: int = 0, device=None, config: dict | None = None, generator_tuner=None,
               assignment: str = "hungarian") -> dict:
    """Train ``model`` with the pipeline's TrainingRecipe from a few explicit knobs (tests only)."""
    import torch

    from pipeline.config import LossWeights, TrainParams
    from pipeline.train.recipe import TrainingRecipe

    lw = loss_weights or {"ce": 2.0, "fiser": 1.0}
    cfg = TrainParams(iterations=iterations, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      backbone_lr_mult=backbone_lr_mult, warmup_iters=warmup_iters, schedule=schedule,
                      checkpoint_every=checkpoint_every, amp=amp, loss_weights=LossWeights(**lw),
                      assignment=assignment)
    recipe = TrainingRecipe(model, train_set, text_fn, cfg, seed=seed, device=device or torch.device("cpu"),
                            checkpoint_dir=out_dir, identity=config or {}, generator_tuner=generator_tuner,
                            no_object_source=lambda: no_object_embedding(model.embed_dim))
    recipe.setup()
    return recipe.train()
