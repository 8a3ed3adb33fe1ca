"""The mask classifier on a timm EVA tower (EVA01-style), with a small Eva trunk standing in for EVA01-g."""
import copy
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from timm.models.eva import Eva

from models.classifier import FOVSeg
from models.mask_encoder import TevaConfig
from models.trainable import select_trainable


@pytest.fixture
def tiny_eva_clip(tmp_path, monkeypatch):
    cfg = {"embed_dim": 48, "vision_cfg": {"image_size": 64, "timm_model_name": "eva_giant_patch14_224",
                                           "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
           "custom_text": True}
    path = tmp_path / "fovseg-test-eva.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)

    def small_eva(name, num_classes, global_pool, pretrained=False, **kw):
        return Eva(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2, qkv_fused=True, qkv_bias=True,
                   init_values=0.5, num_classes=num_classes, global_pool=global_pool)
    monkeypatch.setattr(open_clip.timm_model.timm, "create_model", small_eva)
    torch.manual_seed(0)
    model = open_clip.create_model("fovseg-test-eva", pretrained=None)
    return model.eval()


def test_eva_full_mask_token_is_the_image_embedding(tiny_eva_clip):
    clip = tiny_eva_clip
    model = FOVSeg(copy.deepcopy(clip), TevaConfig(True), adapter_layers=0).eval()
    images = torch.rand(2, 3, 64, 64) * 255
    text = F.normalize(torch.randn(5, model.embed_dim), dim=-1)
    with torch.no_grad():
        ref = clip.encode_image(model.preprocess(images))
        out = model.visual(model.preprocess(images), torch.ones(2, 3, 64, 64), text)
    assert ref.shape[-1] == model.embed_dim == 48
    assert torch.allclose(out["mask_embeds"], ref[:, None].expand_as(out["mask_embeds"]), atol=1e-5)


def test_eva_trains_only_f_q_plus_new_modules(tiny_eva_clip):
    model = FOVSeg(copy.deepcopy(tiny_eva_clip), TevaConfig(True), adapter_layers=2)
    names = select_trainable(model, "q")
    backbone = [n for n in names if ".teva." not in n and "adapter" not in n]
    assert backbone and all(".attn.q_proj." in n for n in backbone)
