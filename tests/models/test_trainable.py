import re

import pytest
import torch
import torch.nn.functional as F

from models.mask_encoder import TevaConfig
from models.trainable import SELECTIONS, count_parameters, select_trainable
from tests.models.conftest import make_fovseg

EXPECTED = {
    "q": [r"attn\.q_proj\."], "k": [r"attn\.k_proj\."], "v": [r"attn\.v_proj\."],
    "q+k": [r"attn\.q_proj\.", r"attn\.k_proj\."], "q+v": [r"attn\.q_proj\.", r"attn\.v_proj\."],
    "q+k+v": [r"attn\.(q|k|v)_proj\."], "mlp": [r"\.mlp\."], "all": [r".*"],
}
NEW = [r"\.teva\.", r"^visual\.adapter\.", r"^fiser\."]


def _loss(model, fiser=True):
    text = F.normalize(torch.randn(4, model.embed_dim), dim=-1)
    model.set_label_names(["cat", "dog", "traffic light", "sky"])
    sets = [[0, 1], [2]]
    out = model(torch.rand(2, 3, 64, 64) * 255, torch.rand(2, 3, 64, 64).round(), text,
                fiser_class_sets=sets if fiser else None, class_sets=sets)
    loss = out["logits"].logsumexp(-1).mean() + out["patch_embeds"].mean()
    if fiser:
        loss = loss + out["loss_fiser"]
    return loss


@pytest.mark.parametrize("selection", SELECTIONS)
def test_gradients_reach_exactly_the_selected_parameters(tiny_clip, selection):
    clip, _ = tiny_clip
    model = make_fovseg(clip, teva=TevaConfig(True), adapter_layers=2, fiser_layers=1)
    for block in model.visual.blocks:
        torch.nn.init.normal_(block.teva.g_v.weight, std=0.02)  # zero-init layers block gradients upstream
    torch.nn.init.normal_(model.visual.adapter.net[-1].weight, std=0.02)
    names = select_trainable(model, selection)
    assert names
    for n in names:
        in_visual = n.startswith("visual.") and not any(re.search(p, n) for p in NEW)
        if in_visual:
            assert any(re.search(p, n) for p in EXPECTED[selection]), f"{n} trainable under {selection}"
    _loss(model).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient for {n}"
            if not n.endswith("pad_token"):
                assert p.grad.abs().sum() > 0, f"zero gradient for {n}"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    expected_backbone = {n for n, _ in model.named_parameters() if n.startswith("visual.")
                         and not any(re.search(p, n) for p in NEW)
                         and any(re.search(p, n) for p in EXPECTED[selection])}
    assert expected_backbone <= set(names)


def test_text_tower_trains_only_when_asked(tiny_clip):
    clip, _ = tiny_clip
    model = make_fovseg(clip)
    assert not any(n.startswith("clip.") for n in select_trainable(model, "q"))
    model = make_fovseg(clip)
    assert any(n.startswith("clip.transformer") for n in select_trainable(model, "q", tune_text=True))


def test_lora_trains_only_adapters_and_grows_with_rank(tiny_clip):
    clip, _ = tiny_clip
    counts = []
    for rank in (4, 8, 16):
        model = make_fovseg(clip, teva=TevaConfig(False))
        names = select_trainable(model, f"lora:{rank}")
        assert names and all("lora_" in n for n in names)
        counts.append(count_parameters(model)["trainable"])
        _loss(model, fiser=False).backward()
        assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert counts[0] < counts[1] < counts[2]


def test_split_qkv_matches_fused_attention(tiny_clip):
    clip, _ = tiny_clip
    block = clip.visual.transformer.resblocks[0]
    from models.mask_encoder import SplitAttention

    split = SplitAttention.from_multihead(block.attn)
    x = torch.randn(2, 10, 96)
    with torch.no_grad():
        ref = block.attn(x, x, x, need_weights=False)[0]
        got = split(x, x)
    assert torch.allclose(ref, got, atol=1e-6)


def test_bad_selection_is_rejected():
    from models.trainable import parse_selection

    for bad in ("qq", "lora:x", "lora:0"):
        with pytest.raises(ValueError):
            parse_selection(bad)
