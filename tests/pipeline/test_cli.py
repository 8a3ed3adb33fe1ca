import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.clip_backbone import build_clip
from models.generators import build_mask2former
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    torch.save(clip.state_dict(), d / "clip.pt")
    build_mask2former("fovseg-tiny", 96, random_init=True).save_pretrained(d / "mask2former")
    return d


def test_predict_writes_overlay_and_segments(tiny_backbones, toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = next((toy_root / "toy/images/open").glob("*.png"))
    main(["predict", str(image), "--classes", "red circle, blue square", "--stuff", "grass, sky", "--params",
          str(REPO / "params.yaml"), "--backbones", str(tiny_backbones), "--zero-shot", "--threshold", "0.0",
          "--out", "pred"])
    result = json.loads((tmp_path / "pred" / f"{image.stem}_segments.json").read_text())
    assert result["classes"] == ["red circle", "blue square", "grass", "sky"]
    stuff_labels = [s["label"] for s in result["segments"] if s["label"] in ("grass", "sky")]
    assert len(stuff_labels) == len(set(stuff_labels))  # one merged segment per stuff class
    assert all(s["label"] in result["classes"] for s in result["segments"])
    overlay = Image.open(tmp_path / "pred" / f"{image.stem}_overlay.png")
    assert overlay.size[0] >= 96


def test_predict_without_checkpoint_says_what_to_do(tiny_backbones, toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = next((toy_root / "toy/images/open").glob("*.png"))
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--classes", "a, b", "--params", str(REPO / "params.yaml"), "--backbones",
              str(tiny_backbones), "--checkpoint", "nope.pt"])
    assert "dvc repro train" in capsys.readouterr().err


def test_preset_switch_round_trips(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    main(["preset", "paper", "--params", str(params)])
    assert "preset: paper" in params.read_text()
    main(["preset", "toy", "--params", str(params)])
    assert params.read_text() == (REPO / "params.yaml").read_text()


def test_packaged_toy_preset_is_the_repository_params():
    assert (REPO / "pipeline" / "presets" / "toy.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_preset_switch_never_loses_edits(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    edited = (REPO / "params.yaml").read_text().replace("iterations: 1000", "iterations: 1234")
    params.write_text(edited)
    with pytest.raises(SystemExit):
        main(["preset", "paper", "--params", str(params)])
    assert "--force" in capsys.readouterr().err and params.read_text() == edited  # refused, untouched
    main(["preset", "paper", "--params", str(params), "--force"])
    assert "preset: paper" in params.read_text()
    backups = list(tmp_path.glob("params.yaml.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == edited  # the edits are kept
