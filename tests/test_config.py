from pathlib import Path

import pytest
import yaml

from pipeline.config import to_dict
from pipeline.errors import ParamsError
from pipeline.params_file import load_params, params_from_dict
from pipeline.presets import preset_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_are_the_valid_toy_preset():
    p = load_params(REPO / "params.yaml")
    assert p.preset == "toy" and p.train.iterations > 0


def test_paper_preset_is_valid_and_has_the_paper_recipe():
    p = preset_params("paper")
    assert p.preset == "paper"
    assert p.backbones.clip.model == "ViT-L-14-336-quickgelu" and p.backbones.clip.pretrained == "openai"
    assert p.backbones.clip.image_size == 896
    assert p.backbones.generator.name == "facebook/mask2former-swin-base-coco-panoptic"
    t = p.train
    assert (t.lr, t.weight_decay, t.backbone_lr_mult, t.iterations, t.batch_size) == (1e-4, 0.05, 0.1, 25000, 16)
    assert (t.lsj_min_scale, t.lsj_max_scale, t.crop_size) == (0.1, 2.0, 1024)
    assert (t.loss_weights.fiser, t.loss_weights.ce) == (1.0, 2.0)
    assert p.model.adapter_layers == 2 and p.model.trainable == "q"
    assert (p.evaluate.test_short_side, p.evaluate.test_max_side) == (800, 1333)


def _base() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["train"].update(lrr=1), r"train.lrr: unknown key"),
    (lambda d: d["train"].update(iterations="many"), r"train.iterations: expected an integer"),
    (lambda d: d["train"].update(lr=5.0), r"train.lr: must be in \(0, 1\)"),
    (lambda d: d["model"].update(trainable="qq"), r"model.trainable: unknown trainable selection"),
    (lambda d: d["model"].update(adapter_layers=4), r"model.adapter_layers: must be in \[0, 3\]"),
    (lambda d: d["data"].update(eval_benchmarks=["toy_nope"]), r"unknown benchmark 'toy_nope'"),
    (lambda d: d["model"]["teva"].update(target_attention="yes"), r"model.teva.target_attention: expected true/false"),
])
def test_bad_params_name_the_key(mutate, match):
    d = _base()
    mutate(d)
    with pytest.raises(ParamsError, match=match):
        params_from_dict(d, "params.yaml")


def test_round_trip_to_dict():
    p = load_params(REPO / "params.yaml")
    assert params_from_dict(to_dict(p)) == p


def test_dataclass_defaults_are_the_params_yaml_toy_preset():
    """One set of defaults: the dataclasses hold exactly the toy preset of params.yaml."""
    from pipeline.config import Params

    assert to_dict(Params()) == to_dict(load_params(REPO / "params.yaml"))


def test_params_yaml_is_the_schema_defaults_rendered():
    """One source of every default: params.yaml is what pipeline/config.py generates for the toy preset."""
    from pipeline.presets import render_params

    assert (REPO / "params.yaml").read_text() == render_params("toy"), \
        "params.yaml differs from the schema's defaults: run `fovseg preset toy --force` or fix pipeline/config.py"


def test_every_key_the_code_can_read_is_in_params_yaml():
    from pipeline.config import Params, to_dict
    from pipeline.params_file import missing_keys, read_params_yaml

    data = read_params_yaml(REPO / "params.yaml")
    assert missing_keys(data, Params) == []
    assert to_dict(Params()) == data  # and nothing else: no key the schema lacks


@pytest.mark.parametrize("name", ["paper", "paper_coco_stuff"])
def test_presets_override_only_existing_keys(name, tmp_path):
    from pipeline.config import Params, to_dict
    from pipeline.presets import preset_overrides

    def keys(d, prefix=""):
        return {k2 for k, v in d.items() for k2 in (keys(v, f"{prefix}{k}.") if isinstance(v, dict) else
                                                    {f"{prefix}{k}"})}

    schema = keys(to_dict(Params()))
    assert keys(preset_overrides(name)) <= schema
    assert preset_params(name).preset == "paper"


def test_a_preset_with_an_unknown_key_is_refused(tmp_path, monkeypatch):
    from pipeline import presets

    (tmp_path / "typo.yaml").write_text("train:\n  lrr: 0.1\n")
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    with pytest.raises(ParamsError, match=r"preset typo: train.lrr: unknown key"):
        presets.preset_params("typo")


def test_a_deleted_section_or_key_is_an_error_not_a_default(tmp_path):
    text = (REPO / "params.yaml").read_text()
    no_key = text.replace("  clip_grad_norm: 0.0", "", 1)
    (tmp_path / "a.yaml").write_text(no_key)
    with pytest.raises(ParamsError, match=r"missing key\(s\) train.clip_grad_norm \(default: 0.0\)"):
        load_params(tmp_path / "a.yaml")
    d = yaml.safe_load(text)
    del d["train"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ParamsError, match=r"missing key\(s\) train "):
        load_params(tmp_path / "b.yaml")
