"""TeVA: per-image targets (K_max padding), the replace (eqs. 7-10) and residual forms, MaskCLIP's mask attention,
the vocabulary key/value cache, width/shared."""
import torch
import torch.nn.functional as F

from models.mask_encoder import TevaConfig
from tests.models.conftest import make_fovseg

TEVA = TevaConfig(True)


def _teva_model(clip, teva=TEVA, **kw):
    model = make_fovseg(clip, teva=teva, adapter_layers=2, **kw)
    torch.manual_seed(3)
    for block in model.visual.blocks:
        t = block.teva
        if t is not None:
            torch.nn.init.normal_(t.g_o.weight if t.g_o is not None else t.g_v.weight, std=0.3)
    return model


def _inputs(n_images=2, q=3):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n_images, 3, 64, 64, generator=g) * 255
    masks = (torch.rand(n_images, q, 8, 8, generator=g) > 0.6).float().repeat_interleave(8, -1).repeat_interleave(8, -2)
    text = F.normalize(torch.randn(6, 64, generator=g), dim=-1)
    return images, masks, text


def test_image_targets_handle_1_and_kmax_classes_and_padding_changes_nothing(tiny_clip):
    clip, _ = tiny_clip
    model = _teva_model(clip)
    images, masks, text = _inputs()
    sets = [[4], [0, 2, 3, 5]]  # K = 1 and K = K_max
    with torch.no_grad():
        batch = model(images, masks, text, class_sets=sets)["mask_embeds"]
        for i, s in enumerate(sets):
            alone = model(images[i:i + 1], masks[i:i + 1], text, class_sets=[s])["mask_embeds"]
            direct = model.visual(model.preprocess(images[i:i + 1]), _fit(model, masks[i:i + 1]), text[s])
            assert torch.allclose(batch[i], alone[0], atol=1e-5)
            assert torch.allclose(alone[0], F.normalize(direct["mask_embeds"][0], dim=-1), atol=1e-5)
        # the targets matter: the whole vocabulary gives other embeddings
        vocab = model(images, masks, text)["mask_embeds"]
    assert not torch.allclose(vocab, batch, atol=1e-3)


def _fit(model, masks):
    from models.classifier import MASK_CELLS, fit_masks

    return fit_masks(masks, (64 // 8 * MASK_CELLS,) * 2)


def test_image_without_classes_gets_no_target_step(tiny_clip):
    clip, _ = tiny_clip
    model = _teva_model(clip)
    images, masks, text = _inputs(1)
    plain = make_fovseg(clip, teva=TevaConfig(False), adapter_layers=2)
    plain.visual.adapter.load_state_dict(model.visual.adapter.state_dict())
    with torch.no_grad():
        got = model(images, masks, text, class_sets=[[]])["mask_embeds"]
        ref = plain(images, masks, text)["mask_embeds"]
    assert torch.isfinite(got).all() and torch.allclose(got, ref, atol=1e-5)


def test_vocabulary_targets_ignore_class_sets(tiny_clip):
    clip, _ = tiny_clip
    model = _teva_model(clip)
    model.teva_train_targets = "vocabulary"
    images, masks, text = _inputs()
    with torch.no_grad():
        a = model(images, masks, text, class_sets=[[1], [2, 3]])["mask_embeds"]
        b = model(images, masks, text)["mask_embeds"]
    assert torch.equal(a, b)


def test_vocabulary_keys_values_are_computed_once_and_reused_exactly(tiny_clip):
    clip, _ = tiny_clip
    model = _teva_model(clip)
    images, masks, text = _inputs()
    calls = []
    hook = model.visual.blocks[0].teva.g_k.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        fresh = [model(images[i:i + 1], masks[i:i + 1], text.clone())["logits"] for i in range(2)]
        assert len(calls) == 1  # equal vocabulary (even a new tensor): projected once for both images
        model.prepare_vocabulary(text)  # explicit preparation always recomputes ...
        prepared = model(images[:1], masks[:1], text)["logits"]
        assert len(calls) == 2 and torch.equal(prepared, fresh[0])  # ... and the forward reuses it
        with torch.enable_grad():  # training (autograd on) never uses the cache
            out = model(images[:1], masks[:1], text)["logits"]
        assert len(calls) == 3 and out.requires_grad and torch.allclose(out, fresh[0], atol=1e-6)
        model.visual.clear_vocabulary_cache()
        uncached = [model(images[i:i + 1], masks[i:i + 1], text)["logits"] for i in range(2)]
        other = model(images[:1], masks[:1], text[:4])["logits"]  # another vocabulary: recomputed
        assert len(calls) == 5 and other.shape[-1] == 4
        model.visual.blocks[0].teva.g_k.weight.add_(0.1)  # changed weights invalidate the cache
        model(images[:1], masks[:1], text[:4])
        assert len(calls) == 6
    hook.remove()
    for a, b in zip(fresh, uncached):
        assert torch.equal(a, b)
    assert not torch.allclose(fresh[0][0, 0], fresh[0][0, 1])


def test_vocabularies_used_in_turn_are_each_projected_once(tiny_clip):
    """A few vocabularies used in turn (two benchmarks, an application switching vocabularies) keep their
    keys/values; the least recently used one is evicted beyond KV_CACHE_VOCABULARIES."""
    from models.mask_encoder import KV_CACHE_VOCABULARIES

    clip, _ = tiny_clip
    model = _teva_model(clip)
    images, masks, text = _inputs(1)
    vocabularies = [text[:n] for n in range(2, 3 + KV_CACHE_VOCABULARIES)]  # one more than the cache holds
    calls = []
    hook = model.visual.blocks[0].teva.g_k.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        first = [model(images, masks, v)["logits"] for v in vocabularies[:2]]
        again = [model(images, masks, v.clone())["logits"] for v in vocabularies[:2] * 3]
        assert len(calls) == 2
        assert all(torch.equal(a, first[i % 2]) for i, a in enumerate(again))
        for v in vocabularies[2:]:  # fills the cache and evicts the least recently used (vocabularies[0])
            model(images, masks, v)
        assert len(calls) == 2 + len(vocabularies) - 2
        model(images, masks, vocabularies[1])
        assert len(calls) == len(vocabularies)
        model(images, masks, vocabularies[0])
        assert len(calls) == len(vocabularies) + 1
    hook.remove()


def test_mask_tokens_never_attend_to_mask_tokens_themselves_included(tiny_clip):
    """MaskCLIP's mask attention (``attn_mask[:, :, :q] = True``): a mask token's keys are [CLS] and its masked
    patches only. With an empty mask its attention reads [CLS] alone, so the output is CLS's value whatever the
    mask token holds (with itself among the keys, its own value would mix in)."""
    clip, _ = tiny_clip
    model = make_fovseg(clip, teva=TevaConfig(False))
    images, _, text = _inputs(1, q=2)
    empty = torch.zeros(1, 2, 64, 64)
    with torch.no_grad():
        block = model.visual.blocks[0]
        x = torch.randn(1, 65, 96)
        m = torch.randn(1, 2, 96)
        bias = model.visual.mask_bias(_fit(model, empty), (8, 8))
        out = block(x, m, bias)[1] - m  # the residual updates of the two mask tokens
        v_cls = block.attn.out_proj(block.attn.v_proj(block.ln_1(x)[:, :1]))
        attn_only = out - block.ls_2(block.mlp(block.ln_2(m + block.ls_1(v_cls))))
    assert torch.allclose(attn_only, block.ls_1(v_cls).expand_as(attn_only), atol=1e-5)


def test_replace_form_feeds_f_q_with_the_target_mixture_not_the_mask_token(tiny_clip):
    """Eqs. 7-10: [MASK^] = softmax(q_mask k_tgt^T) v_tgt *is* f_q's input. With a single target the softmax is
    1, so every mask token hands f_q the same input whatever its own state; the residual form ([MASK] + TeVA)
    keeps them apart."""
    clip, _ = tiny_clip
    x, bias = torch.randn(1, 65, 96), torch.zeros(1, 1, 2, 65)
    m = torch.randn(1, 2, 96)
    target = F.normalize(torch.randn(1, 1, 64), dim=-1)
    q_inputs = {}
    for form in ("replace", "residual"):
        model = make_fovseg(clip, teva=TevaConfig(True, form))
        block = model.visual.blocks[0]
        torch.nn.init.normal_(block.teva.g_v.weight, std=0.3)  # the residual form starts at zero otherwise
        seen: list = []
        hook = block.attn.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            block(x, m, bias, block.teva.keys_values(target))
        hook.remove()
        q_inputs[form] = seen[-1]  # the mask tokens' call (the image tokens' comes first)
    assert torch.allclose(q_inputs["replace"][0, 0], q_inputs["replace"][0, 1], atol=1e-6)
    assert not torch.allclose(q_inputs["residual"][0, 0], q_inputs["residual"][0, 1], atol=1e-3)


def test_replace_form_is_randomly_initialised_residual_form_starts_as_maskclip(tiny_clip):
    """The paper: g_q, g_k, g_v "randomly initialized" (an untrained TeVA changes the classifier); the residual
    form zero-initialises its last projection (an untrained TeVA is plain MaskCLIP)."""
    clip, _ = tiny_clip
    images, masks, text = _inputs()
    plain = make_fovseg(clip, teva=TevaConfig(False))
    torch.manual_seed(0)
    replace = make_fovseg(clip, teva=TevaConfig(True, "replace"))
    residual = make_fovseg(clip, teva=TevaConfig(True, "residual"))
    assert residual.visual.blocks[0].teva.g_v.weight.abs().sum() == 0
    assert replace.visual.blocks[0].teva.g_v.weight.abs().sum() > 0
    with torch.no_grad():
        ref = plain(images, masks, text)["logits"]
        assert torch.allclose(residual(images, masks, text)["logits"], ref, atol=1e-5)
        assert not torch.allclose(replace(images, masks, text)["logits"], ref, atol=1e-2)


def test_table_iv_i_rows_run_and_differ(tiny_clip):
    """The four Table IV(i) rows (baseline; + mask-image x-att = the adapter's reweighting; + mask-target x-att;
    both) are four different classifiers: each pair gives different logits on the same inputs."""
    clip, _ = tiny_clip
    images, masks, text = _inputs()
    masks = masks * torch.linspace(0.6, 1.0, 64)  # soft masks: the adapter has something to reweight
    rows = {}
    for target, adapter in ((False, 0), (False, 2), (True, 0), (True, 2)):
        torch.manual_seed(0)
        model = make_fovseg(clip, teva=TevaConfig(target), adapter_layers=adapter)
        if model.visual.adapter is not None:
            torch.nn.init.normal_(model.visual.adapter.net[-1].weight, std=0.5)
        with torch.no_grad():
            out = model(images, masks, text, class_sets=[[0], [1, 2]])["logits"]
        assert torch.isfinite(out).all()
        assert (model.visual.blocks[0].teva is not None) == target
        assert (model.visual.adapter is not None) == bool(adapter)
        rows[(target, adapter)] = out
    keys = list(rows)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not torch.allclose(rows[a], rows[b], atol=1e-3), (a, b)


def test_lightweight_teva_width_and_shared(tiny_clip):
    clip, _ = tiny_clip

    def teva_params(model):
        return sum(p.numel() for n, p in model.named_parameters() if ".teva." in n)

    full = teva_params(make_fovseg(clip, teva=TevaConfig(True)))
    narrow = make_fovseg(clip, teva=TevaConfig(True, "residual", width=16))
    shared = make_fovseg(clip, teva=TevaConfig(True, shared=True))
    assert teva_params(narrow) < full and teva_params(shared) * 3 == full  # 3 blocks in the tiny tower
    assert narrow.visual.blocks[0].teva.g_q.out_features == 16
    assert shared.visual.blocks[0].teva is shared.visual.blocks[2].teva
    images, masks, text = _inputs()
    plain = make_fovseg(clip, teva=TevaConfig(False))
    with torch.no_grad():  # an untrained residual TeVA is an identity at any width
        ref = plain(images, masks, text)["logits"]
        assert torch.allclose(narrow(images, masks, text)["logits"], ref, atol=1e-5)
    trained = _teva_model(clip, teva=TevaConfig(True, width=16, shared=True))
    loss = trained(images, masks, text, class_sets=[[0], [1, 2]])["logits"].logsumexp(-1).mean()
    loss.backward()
    assert trained.visual.blocks[0].teva.g_k.weight.grad.abs().sum() > 0


def test_cache_works_for_a_model_built_in_inference_mode(tiny_clip):
    """Weights created under inference_mode carry no version counter; the cache still works."""
    clip, _ = tiny_clip
    images, masks, text = _inputs(1)
    with torch.inference_mode():
        model = _teva_model(clip)
        a = model(images, masks, text)["logits"]
        b = model(images, masks, text)["logits"]
        model.prepare_vocabulary(text)
        c = model(images, masks, text)["logits"]
    assert torch.equal(a, b) and torch.equal(a, c)


def test_cache_keeps_autocast_and_full_precision_projections_apart(tiny_clip):
    """A vocabulary projected under bf16 autocast is not reused by a full-precision call (a dtype error, or
    silently rounded keys), nor the reverse."""
    clip, _ = tiny_clip
    images, masks, text = _inputs(1)
    model = _teva_model(clip)
    with torch.no_grad():
        full = model(images, masks, text)["logits"]
        model.visual.clear_vocabulary_cache()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(images, masks, text)["logits"]  # the cache now holds bf16 keys/values
        after_half = model(images, masks, text)["logits"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half_again = model(images, masks, text)["logits"]
    assert torch.isfinite(half).all() and not torch.equal(half.float(), full)
    assert torch.equal(after_half, full) and torch.equal(half_again, half)
