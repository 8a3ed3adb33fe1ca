"""Shared fixtures: a small generated toy world and the shared COCO-panoptic sample."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]

def _shared_dir() -> Path:
    """``$FOVSEG_SHARED``, else the ``shared/`` folder beside the checkout (as CI lays it out)."""
    if os.environ.get("FOVSEG_SHARED"):
        return Path(os.environ["FOVSEG_SHARED"])
    for parent in REPO.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared"
    return REPO.parent / "shared"


SHARED = _shared_dir()
COCO_SAMPLE = SHARED / "data" / "coco_panoptic_sample"


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from pipeline.data.toy import generate_toy_world

    root = tmp_path_factory.mktemp("datasets")
    generate_toy_world(root, seed=0, image_size=64, n_train=12, n_val=6, n_open=6, n_captions=64,
                       caption_size=32, max_things=3)
    return root


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory) -> Path:
    """The shared sample arranged in the detectron2 layout as coco_panoptic_val."""
    if not COCO_SAMPLE.is_dir():
        pytest.fail(f"shared COCO sample not found at {COCO_SAMPLE}; set FOVSEG_SHARED")
    root = tmp_path_factory.mktemp("coco")
    (root / "coco" / "annotations").mkdir(parents=True)
    shutil.copytree(COCO_SAMPLE / "images", root / "coco" / "val2017")
    shutil.copytree(COCO_SAMPLE / "panoptic", root / "coco" / "panoptic_val2017")
    shutil.copy(COCO_SAMPLE / "panoptic.json", root / "coco" / "annotations" / "panoptic_val2017.json")
    return root
