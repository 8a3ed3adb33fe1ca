import copy

import pytest
import torch
import torch.nn.functional as F

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from tests.models.conftest import make_fovseg


def _clip_image_embedding(clip, model: FOVSeg, images):
    return clip.encode_image(model.preprocess(images))


@pytest.mark.parametrize("teva", [TevaConfig(False), TevaConfig(True, "residual")])
def test_full_mask_token_is_clip_image_embedding_tiny(tiny_clip, teva):
    """The parity test: without TeVA (or with the residual form, untrained) a mask covering the whole image
    reproduces CLIP's own image embedding."""
    clip, _ = tiny_clip
    model = make_fovseg(clip, teva=teva)
    images = torch.rand(2, 3, 64, 64) * 255
    masks = torch.ones(2, 3, 64, 64)
    text = F.normalize(torch.randn(5, model.embed_dim), dim=-1)
    with torch.no_grad():
        out = model.visual(model.preprocess(images), masks, text)
        ref = _clip_image_embedding(clip, model, images)
    assert torch.allclose(out["mask_embeds"], ref[:, None].expand_as(out["mask_embeds"]), atol=1e-5)
    assert torch.allclose(out["image_embeds"], ref, atol=1e-5)


def test_full_mask_token_is_clip_image_embedding_vit_b16():
    torch.manual_seed(0)
    clip, _ = build_clip("ViT-B-16", allow_random=True)
    clip.eval()
    model = FOVSeg(copy.deepcopy(clip), teva=TevaConfig(False), adapter_layers=0).eval()
    images = torch.rand(1, 3, 224, 224) * 255
    with torch.no_grad():
        out = model.visual(model.preprocess(images), torch.ones(1, 2, 224, 224))
        ref = clip.encode_image(model.preprocess(images))
    assert (out["mask_embeds"][0] - ref).abs().max() < 1e-5


def _randomise_new_modules(model):
    torch.manual_seed(1)
    for block in model.visual.blocks:  # give TeVA and the adapter a non-zero effect
        if block.teva is not None:
            torch.nn.init.normal_(block.teva.g_v.weight, std=0.2)
    if model.visual.adapter is not None:
        torch.nn.init.normal_(model.visual.adapter.net[-1].weight, std=0.5)


def _top_left_mask():
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., :30, :27] = 1  # touches exactly the top-left 4x4 patches (patch 8), some only partly
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:4, :4] = False
    return masks, torch.cat([torch.tensor([False]), outside.flatten()])


@pytest.mark.parametrize("teva", [TevaConfig(False), TevaConfig(True), TevaConfig(True, "residual")])
@pytest.mark.parametrize("adapter_layers", [0, 2])
def test_mask_token_ignores_tokens_outside_its_mask(tiny_clip, teva, adapter_layers):
    """Eq. 11 with or without the adapter: in every block a mask token reads only [CLS] and the patches
    its mask touches (MaskCLIP's baseline also itself).

    (End to end, pixels outside a mask still reach it through the image tokens, which keep plain
    CLIP self-attention by design; so the invariance is checked where it holds: at each block, and
    for the first block's input pixels.)"""
    clip, _ = tiny_clip
    model = make_fovseg(clip, teva=teva, adapter_layers=adapter_layers)
    _randomise_new_modules(model)
    masks, outside = _top_left_mask()
    with torch.no_grad():
        bias = model.visual.mask_bias(masks, (8, 8))
    assert torch.isneginf(bias[0, 0, 0, outside]).all()
    assert torch.isfinite(bias[0, 0, 0, ~outside]).all()
    text = F.normalize(torch.randn(4, model.embed_dim), dim=-1)
    x = torch.randn(1, 65, 96)
    m = torch.randn(1, 1, 96)
    y = x.clone()
    y[:, outside] = torch.randn(1, int(outside.sum()), 96)
    with torch.no_grad():
        kv = model.visual.target_keys_values(text[None])
        for block in model.visual.blocks:
            _, ma = block(x, m, bias, kv.get(id(block.teva)))
            _, mb = block(y, m, bias, kv.get(id(block.teva)))
            assert torch.allclose(ma, mb, atol=1e-6)
            assert not torch.allclose(ma, m)

        for block in model.visual.blocks:  # the gradient of the mask token w.r.t. the image tokens: 0 outside
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                block(xg, m, bias, kv.get(id(block.teva)))[1].sum().backward()
            assert (xg.grad[0, outside] == 0).all() and (xg.grad[0, ~outside].abs().sum(-1) > 0).all()
        # first-layer pixels: changing pixels outside the mask changes no patch the mask token reads in block 0
        images = torch.rand(1, 3, 64, 64) * 255
        changed = images.clone()
        changed[..., 32:, :] = 0
        xa = model.visual.conv1(model.preprocess(images)).flatten(2)
        xb = model.visual.conv1(model.preprocess(changed)).flatten(2)
        assert torch.equal(xa.reshape(96, 8, 8)[:, :4, :4], xb.reshape(96, 8, 8)[:, :4, :4])


def test_adapter_only_reweights_inside_the_mask(tiny_clip):
    """With the adapter the visible patches get log-probability weights (not all equal); without it 0/-inf;
    the set of visible patches is the same (the raw mask decides, Table IV(f)'s 0 row changes only this)."""
    clip, _ = tiny_clip
    masks, outside = _top_left_mask()
    soft = make_fovseg(clip, adapter_layers=2)
    _randomise_new_modules(soft)
    hard = make_fovseg(clip, adapter_layers=0)
    with torch.no_grad():
        b_soft = soft.visual.mask_bias(masks, (8, 8))[0, 0, 0]
        b_hard = hard.visual.mask_bias(masks, (8, 8))[0, 0, 0]
    assert torch.equal(torch.isneginf(b_soft), torch.isneginf(b_hard))
    assert set(b_hard[~outside].tolist()) == {0.0}
    assert b_soft[1:][~outside[1:]].std() > 0
    assert (b_soft[~outside] <= 0).all()


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_adapter_depthwise_form_equals_the_dense_convs(layers):
    """The adapter writes its one-channel convs as depthwise convs: same outputs and weight gradients as the
    nn.Conv2d stack it holds (and saves), up to float rounding."""
    from models.adapter import DistributionAdapter

    torch.manual_seed(0)
    adapter = DistributionAdapter(layers, 16)
    torch.nn.init.normal_(adapter.net[-1].weight)
    masks = torch.rand(2, 3, 20, 24).round()
    got = adapter(masks)
    got.square().sum().backward()
    fast = [p.grad.clone() for p in adapter.parameters()]
    adapter.zero_grad()
    p = masks.reshape(6, 1, 20, 24).clamp(1e-4, 1 - 1e-4)
    ref = torch.sigmoid(torch.log(p) - torch.log1p(-p) + adapter.net(p)).reshape(2, 3, 20, 24)
    ref.square().sum().backward()
    assert torch.allclose(got, ref, atol=1e-6)
    for g, (name, param) in zip(fast, adapter.named_parameters()):
        assert torch.allclose(g, param.grad, rtol=1e-4, atol=1e-5), name


def test_mask_bias_leaves_empty_masks_out_of_the_adapter(tiny_clip):
    """Batch padding (empty masks) never reaches the adapter; every mask's bias and the adapter's gradients are
    what they are when each mask is computed alone."""
    clip, _ = tiny_clip
    model = make_fovseg(clip, adapter_layers=2)
    _randomise_new_modules(model)
    masks = torch.zeros(2, 4, 32, 32)
    masks[0, 0, :10, :12] = 1
    masks[0, 2, 5:30, 3:9] = 1
    masks[1, 1, 16:, 16:] = 1  # masks[0, 1], [0, 3], [1, 0], [1, 2], [1, 3]: padding
    seen = []
    hook = model.visual.adapter.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    bias = model.visual.mask_bias(masks, (8, 8))
    hook.remove()
    assert seen == [torch.Size([1, 3, 32, 32])]
    assert torch.isneginf(bias[0, 0, 1, 1:]).all() and torch.isneginf(bias[1, 0, 0, 1:]).all()  # [CLS] stays 0
    bias[torch.isfinite(bias)].sum().backward()
    grads = [p.grad.clone() for p in model.visual.adapter.parameters()]
    model.zero_grad()
    one_by_one = torch.stack([model.visual.mask_bias(masks[i:i + 1, j:j + 1], (8, 8))[0, 0, 0]
                              for i in range(2) for j in range(4)]).reshape(2, 4, -1)
    assert torch.allclose(bias[:, 0], one_by_one, atol=1e-6)
    one_by_one[torch.isfinite(one_by_one)].sum().backward()
    for g, p in zip(grads, model.visual.adapter.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_image_tokens_do_not_see_mask_tokens(tiny_clip):
    clip, _ = tiny_clip
    model = make_fovseg(clip, teva=TevaConfig(True), adapter_layers=2)
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        none = model.visual(model.preprocess(images), torch.zeros(2, 0, 64, 64))
        many = model.visual(model.preprocess(images), torch.rand(2, 7, 64, 64).round(),
                            F.normalize(torch.randn(4, model.embed_dim), dim=-1))
    assert torch.equal(none["patch_embeds"], many["patch_embeds"])
    assert torch.equal(none["image_embeds"], many["image_embeds"])


def test_position_embeddings_interpolate_to_any_size(tiny_clip):
    clip, _ = tiny_clip
    model = make_fovseg(clip)
    images = torch.rand(1, 3, 96, 80) * 255
    with torch.no_grad():
        x = (images - model.pixel_mean) / model.pixel_std
        out = model.visual(x, torch.ones(1, 2, 96, 80))
    assert out["patch_embeds"].shape[1] == 12 * 10 and torch.isfinite(out["mask_embeds"]).all()


@pytest.mark.parametrize("n_masks,n_classes", [(0, 3), (3, 1), (5, 847)])
def test_edge_sizes_have_no_nan(tiny_clip, n_masks, n_classes):
    clip, _ = tiny_clip
    model = make_fovseg(clip, teva=TevaConfig(True), adapter_layers=2)
    masks = torch.zeros(2, n_masks, 64, 64)  # empty masks too: only [CLS] is visible
    text = F.normalize(torch.randn(n_classes, model.embed_dim), dim=-1)
    out = model(torch.rand(2, 3, 64, 64) * 255, masks, text)
    assert out["logits"].shape == (2, n_masks, n_classes)
    assert torch.isfinite(out["logits"]).all()
