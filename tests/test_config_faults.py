"""Fault-campaign params defects (issue 10, item 8.5): each bad file gets one clear ParamsError."""
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params_file import load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
BASE = (REPO / "params.yaml").read_text()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def _with(tmp_path: Path, section: str, key: str, raw: str) -> Path:
    """params.yaml with ``section.key`` replaced by the raw YAML text ``raw`` (as a user would type it)."""
    data = yaml.safe_load(BASE)
    if section:
        data[section][key] = "@@"
    else:
        data[key] = "@@"
    return _write(tmp_path, yaml.safe_dump(data, sort_keys=False).replace("'@@'", raw))


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n"])
def test_empty_params_file_is_an_error_not_silent_defaults(tmp_path, text):
    with pytest.raises(ParamsError, match=r"params.yaml.*empty.*fovseg preset toy"):
        load_params(_write(tmp_path, text))


def test_params_file_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ParamsError, match=r"expected a mapping"):
        load_params(_write(tmp_path, "- a\n- b\n"))


def test_duplicate_yaml_key_names_the_key(tmp_path):
    text = BASE.replace("\n  lr: ", "\n  lr: 0.5\n  lr: ", 1)
    assert text.count("lr: 0.5") == 1
    with pytest.raises(ParamsError, match=r"duplicate key 'lr'.*line \d+"):
        load_params(_write(tmp_path, text))


@pytest.mark.parametrize("raw,value", [("1e-3", 1e-3), ("2E-4", 2e-4), ("1.5e-3", 1.5e-3), ("5e-4", 5e-4)])
def test_lr_in_scientific_notation_is_a_float(tmp_path, raw, value):
    p = load_params(_with(tmp_path, "train", "lr", raw))
    assert p.train.lr == pytest.approx(value)


def test_strings_that_are_not_numbers_still_refused(tmp_path):
    with pytest.raises(ParamsError, match=r"train.lr: expected a number"):
        load_params(_with(tmp_path, "train", "lr", "fast"))


@pytest.mark.parametrize("raw", ["1e20", "100000000000000000000", "-1"])
def test_seed_out_of_range_is_refused(tmp_path, raw):
    with pytest.raises(ParamsError, match=r"seed: "):
        load_params(_with(tmp_path, "", "seed", raw))


@pytest.mark.parametrize("raw", ["1e23", "100000000000000000000000"])
def test_absurd_iterations_are_refused(tmp_path, raw):
    with pytest.raises(ParamsError, match=r"train.iterations: "):
        load_params(_with(tmp_path, "train", "iterations", raw))


def test_warmup_longer_than_training_is_refused():
    d = yaml.safe_load(BASE)
    d["train"].update(iterations=10, warmup_iters=50)
    with pytest.raises(ParamsError, match=r"train.warmup_iters: .*iterations \(10\)"):
        params_from_dict(d, "params.yaml")


@pytest.mark.parametrize("templates", [["a photo of a {x}."], ["a {} and a {}."], ["no placeholder"],
                                       ["a photo of a {0}."], ["{}}"]])
def test_templates_need_exactly_one_empty_placeholder(templates):
    d = yaml.safe_load(BASE)
    d["model"]["templates"] = templates
    with pytest.raises(ParamsError, match=r"model.templates\[0\]: "):
        params_from_dict(d, "params.yaml")


def test_unknown_clip_model_says_how_to_list_valid_names():
    d = yaml.safe_load(BASE)
    d["backbones"]["clip"]["model"] = "ViT-Q-99"
    with pytest.raises(ParamsError, match=r"backbones.clip.model: unknown CLIP model 'ViT-Q-99'.*list_models"):
        params_from_dict(d, "params.yaml")


def test_cuda_without_gpu_is_a_clear_params_error(monkeypatch):
    import torch

    from pipeline.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"device: 'cuda' requested but no CUDA device"):
        pick_device("cuda")
