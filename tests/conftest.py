"""Shared fixtures: a small generated toy world and the COCO-panoptic sample in tests/fixtures."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
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
