from pathlib import Path

import pytest
import yaml

from pipeline.config import ParamsError, load_params, params_from_dict, to_dict

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_are_the_valid_toy_preset():
    p = load_params(REPO / "params.yaml")
    assert p.preset == "toy" and p.train.iterations > 0


def test_paper_preset_is_valid_and_has_the_paper_recipe():
    p = load_params(REPO / "pipeline" / "presets" / "paper.yaml")
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
