"""The paper path at the paper's shapes, every stage through `dvc repro` (opt in: `pytest -m paper_smoke -s`).

The paper preset with tiny amounts of work (pipeline/presets/paper_smoke.yaml): the real ViT-L/14-336 and Swin-B
Mask2Former architectures with random weights written to local files (no hub call), the classifier at 896 px with
100 proposals and the 1024 LSJ crop, a detectron2-layout COCO-panoptic (the two real COCO images) and ADE20K-150
generated here, 2 training iterations at batch 2, evaluation on one image per benchmark, the benchmark, attention
and report stages. Prints each stage's time and peak memory. About 12-15 minutes on 2 CPU cores; the train
stage peaks at about 21 GB of RAM.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from layouts import write_ade20k_150, write_coco_panoptic

from pipeline.config import to_dict
from pipeline.presets import preset_params

pytestmark = pytest.mark.paper_smoke
REPO = Path(__file__).resolve().parents[1]


def _random_backbones(weights: Path) -> tuple[str, str]:
    """ViT-L-14-336 (open_clip's config, QuickGELU) and Mask2Former Swin-B (the COCO-panoptic architecture),
    random weights saved where the paper preset's loaders read local files."""
    import open_clip
    import torch
    from transformers import Mask2FormerForUniversalSegmentation

    from models.generators import swin_b_mask2former_config

    weights.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-L-14-336-quickgelu", pretrained=None)
    torch.save(clip.state_dict(), weights / "vit-l-14-336.pt")
    del clip
    Mask2FormerForUniversalSegmentation(swin_b_mask2former_config()).save_pretrained(weights / "mask2former-swin-b")
    return str(weights / "vit-l-14-336.pt"), str(weights / "mask2former-swin-b")


def _project(tmp: Path) -> Path:
    """A fresh git + DVC project with this repository's pipeline and committed toy metrics, as a clone has them
    (the report must leave the toy's files out of the paper preset's tables)."""
    project = tmp / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    for d in ("pipeline", "models", "stages", "metrics"):  # metrics/: the toy's, committed, as in a clone
        shutil.copytree(REPO / d, project / d, ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=project, check=True)
    return project


def _stage_times(log: str) -> list[tuple[str, float, str]]:
    """(DVC stage, seconds, peak memory) from DVC's "Running stage" lines and the stages' closing log lines."""
    names = re.findall(r"Running stage '([^']+)'", log)
    done = re.findall(r"python -m stages\.\w+ done in ([\d.]+) s, peak memory (.+)", log)
    return [(name, float(seconds), memory) for name, (seconds, memory) in zip(names, done)]


def test_every_stage_runs_at_the_papers_shapes(tmp_path):
    t0 = time.perf_counter()
    data = tmp_path / "datasets"
    write_coco_panoptic(data, "train")
    write_coco_panoptic(data, "val")
    write_ade20k_150(data, n=2, size=(480, 640))
    clip_file, generator_dir = _random_backbones(tmp_path / "weights")
    project = _project(tmp_path)
    params = to_dict(preset_params("paper_smoke"))
    params["data"]["root"] = str(data)
    params["backbones"]["clip"]["pretrained"] = clip_file
    params["backbones"]["generator"]["name"] = generator_dir
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "FOVSEG_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"\nfixtures and random paper-size weights: {time.perf_counter() - t0:.0f} s", flush=True)
    log_path = tmp_path / "repro.log"
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=45 * 60)
    log = log_path.read_text()
    print(f"{'stage':<28} {'seconds':>8}  peak memory")
    for stage, seconds, memory in _stage_times(log):
        print(f"{stage:<28} {seconds:>8.1f}  {memory}")
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    assert proc.returncode == 0, log[-6000:]
    # the paper's shapes, as the stages report them
    assert "ViT-L-14-336-quickgelu" in log and "896 x 896" in log and "100 proposals" in log
    assert "Swin backbone (embed 128, depths [2, 2, 18, 2])" in log
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["iterations"] == 2 and train["trainable"] > 20e6
    for bench in params["data"]["eval_benchmarks"]:
        m = json.loads((project / f"metrics/eval/{bench}.json").read_text())
        assert m["images"] == 1 and "mIoU" in m
    bench = json.loads((project / "metrics/benchmark.json").read_text())
    assert round(bench["accounting"]["this_run"]["trainable_kept"] / 1e6) == 25
    report = (project / "reports/README.md").read_text()
    assert "| toy_open" not in report  # the committed toy metrics are not this run's
    last = project / "outputs/train/last.pt"
    assert last.stat().st_size < 1e9  # the trainable state, not the frozen CLIP
