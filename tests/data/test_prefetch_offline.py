"""`python -m pipeline.scripts.prefetch_weights` without network: one line naming the hub, $HF_HOME and the offline
variables, exit 1, no traceback; `--preset NAME` reads a preset without switching params.yaml."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import models.clip_backbone as cb
import models.generators as gens
from models.errors import WeightsUnavailableError
from pipeline.scripts import prefetch_weights

REPO = Path(__file__).resolve().parents[2]
HUB_MISS = ("An error happened while trying to locate the file on the Hub and we cannot find the requested files in "
            "the local cache. Please check your connection and try again or make sure your Internet connection is on.")


def _offline_clip(model: str, pretrained: str):
    """What build_clip raises without network: the hub's OSError wrapped, ``from None`` (kept as __context__)."""
    try:
        raise OSError(f"Failed to download file (open_clip_pytorch_model.bin) for timm/{model}. Last error: {HUB_MISS}")
    except OSError as exc:
        raise WeightsUnavailableError(f"could not load open_clip weights {model}/{pretrained} ({exc}). Download them "
                                      "on a machine with internet ...") from None


def _offline_mask2former(name: str):
    """What build_mask2former raises when transformers cannot reach the hub."""
    try:
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      f"the cached files. Check your internet connection or see how to run the library in offline "
                      f"mode at 'https://huggingface.co/docs/transformers/installation#offline-mode'. ({name})")
    except OSError as exc:
        raise WeightsUnavailableError(f"could not load Mask2Former {name!r} ({exc}). On a machine with internet ..."
                                      ) from None


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in prefetch_weights.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hf"


def _fails_with_one_line(capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        prefetch_weights.main(["--preset", "paper"])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_offline_clip_is_one_line_naming_the_hub_hf_home_and_offline_variables(hf_home, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cb, "build_clip", _offline_clip)
    monkeypatch.setattr(gens, "build_mask2former", lambda name: pytest.fail("not reached"))
    line = _fails_with_one_line(capsys)
    assert "CLIP ViT-L-14-336-quickgelu/openai" in line and "Hugging Face hub" in line
    assert "HF_HUB_OFFLINE=1 is set here" in line and str(hf_home) in line and "$HF_HOME" in line
    assert "cannot find the requested files in the local cache" in line  # the hub's own reason, kept short


def test_unreachable_hub_for_mask2former(hf_home, monkeypatch, capsys):
    monkeypatch.setattr(cb, "build_clip", lambda model, pretrained: None)
    monkeypatch.setattr(gens, "build_mask2former", _offline_mask2former)
    line = _fails_with_one_line(capsys)
    assert "Mask2Former facebook/mask2former-swin-base-coco-panoptic" in line
    assert "cannot be reached" in line and "HF_HUB_OFFLINE" in line and str(hf_home) in line


def test_preset_option_reads_the_preset_without_params_yaml(hf_home, monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(cb, "build_clip", lambda model, pretrained: calls.append(model))
    monkeypatch.setattr(gens, "build_mask2former", lambda name: calls.append(name))
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    prefetch_weights.main(["--preset", "paper"])
    out = capsys.readouterr().out
    assert calls == ["ViT-L-14-336-quickgelu", "facebook/mask2former-swin-base-coco-panoptic"]
    assert "cached: CLIP" in out and str(hf_home) in out and "HF_HUB_OFFLINE=1" in out


def test_a_presets_overrides_file_points_to_the_preset_option(capsys):
    with pytest.raises(SystemExit) as exc:
        prefetch_weights.main(["--params", str(REPO / "pipeline/presets/paper.yaml")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "--preset paper" in err and "\n" not in err


def test_real_libraries_offline_give_one_line(tmp_path):
    """The real open_clip / huggingface_hub path with HF_HUB_OFFLINE=1 and an empty cache (no network used)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.scripts.prefetch_weights", "--preset", "paper"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in lines[0] and "Hugging Face hub" in lines[0] and str(tmp_path / "hf") in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0]
