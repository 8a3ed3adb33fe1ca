"""Weight decay and learning rates as MaskCLIP's detectron2 optimizer sets them (train.decay_exempt)."""
import torch

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.trainable import select_trainable
from pipeline.train.optimizer import param_groups


def _model():
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "all")  # norms and embeddings of CLIP train too, to see where they land
    return model


def _decay_of(groups, model):
    by_id = {id(p): g for g in groups for p in g["params"]}
    return {n: by_id[id(p)]["weight_decay"] for n, p in model.named_parameters() if id(p) in by_id}


def test_maskclip_rule_decays_biases_but_not_norms_or_embeddings():
    model = _model()
    decay = _decay_of(param_groups(model, 1e-4, 0.05, 0.1, "norm+embed"), model)
    assert decay["visual.blocks.0.attn.q_proj.bias"] == 0.05  # biases decay (detectron2: no bias rule)
    assert decay["visual.blocks.0.attn.q_proj.weight"] == 0.05
    assert decay["visual.blocks.0.ln_1.weight"] == 0.0 and decay["visual.blocks.0.ln_1.bias"] == 0.0  # norm
    assert decay["fiser.mask_token"] == 0.0  # a learned token embedding
    assert decay["visual.positional_embedding"] == 0.0 and decay["visual.class_embedding"] == 0.0
    assert decay["visual.blocks.0.teva.g_q.bias"] == 0.05


def test_one_d_rule_exempts_every_vector():
    model = _model()
    decay = _decay_of(param_groups(model, 1e-4, 0.05, 0.1, "1d"), model)
    assert decay["visual.blocks.0.attn.q_proj.bias"] == 0.0 and decay["visual.blocks.0.attn.q_proj.weight"] == 0.05


def test_backbone_learns_at_a_tenth_and_groups_are_named():
    model = _model()
    groups = param_groups(model, 1e-4, 0.05, 0.1, "norm+embed")
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["backbone"] == lr["backbone/no_decay"] == 1e-5 and lr["new"] == lr["new/no_decay"] == 1e-4
    by_id = {id(p): g["name"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert by_id[id(names["visual.blocks.0.attn.q_proj.weight"])] == "backbone"
    assert by_id[id(names["visual.blocks.0.teva.g_q.weight"])] == "new"
