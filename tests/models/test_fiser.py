import pytest
import torch
import torch.nn.functional as F

from models.fiser import FiserPredictor, fiser_loss


def test_loss_is_the_same_alone_and_padded():
    torch.manual_seed(0)
    pred = FiserPredictor(32, layers=2, heads=4).eval()
    text = F.normalize(torch.randn(10, 32), dim=-1)
    tokens = torch.randn(1, 16, 32)
    alone = fiser_loss(pred, text, [[1, 4, 7]], tokens, masked_index=torch.tensor([1]))
    # the same image in a batch whose K_max is 6
    batch = fiser_loss(pred, text, [[1, 4, 7], [0, 2, 3, 5, 6, 8]], torch.cat([tokens, torch.randn(1, 16, 32)]),
                       masked_index=torch.tensor([1, 0]))
    per_image = []
    from models.fiser import pad_class_sets
    emb, valid = pad_class_sets(text, [[1, 4, 7], [0, 2, 3, 5, 6, 8]])
    logits = pred(emb, valid, torch.tensor([1, 0]), torch.cat([tokens, torch.randn(1, 16, 32)]))
    per_image = F.cross_entropy(logits, torch.tensor([1, 0]), reduction="none")
    assert torch.allclose(per_image[0], alone, atol=1e-5)
    assert torch.isfinite(batch)


def test_images_without_classes_add_nothing():
    pred = FiserPredictor(16, layers=1, heads=2)
    text = F.normalize(torch.randn(3, 16), dim=-1)
    loss = fiser_loss(pred, text, [[], []], torch.randn(2, 4, 16))
    assert loss.item() == 0.0
    loss = fiser_loss(pred, text, [[], [2]], torch.randn(2, 4, 16))
    assert torch.isfinite(loss)


# --- text_encoder variant (eqs. 1-6 through CLIP's text transformer)
NAMES = ["cat", "dog", "traffic light", "sky", "potted plant", "wall", "fire hydrant"]


def _text_model(tiny_clip):
    from tests.models.conftest import make_fovseg

    clip, tokenizer = tiny_clip
    model = make_fovseg(clip, fiser_layers=1)
    model.set_label_names(NAMES, tokenizer)
    return model, tokenizer


def test_label_sequence_is_clip_tokenisation_of_the_joined_names(tiny_clip):
    from models.fiser import build_label_sequence, label_tokens

    _, tokenizer = tiny_clip
    toks = label_tokens(tokenizer, NAMES)
    seq, pos = build_label_sequence(toks, [0, 2, 3], 1, 16)
    ref = tokenizer(["cat, traffic light, sky"])[0]
    assert seq == ref[: len(seq)].tolist() and int(ref[len(seq):].abs().sum()) == 0
    assert [seq[p] for p in pos] == list(toks.names[2]) and len(pos) == 2  # "traffic light" = 2 BPE tokens


def test_sequences_longer_than_the_context_drop_other_labels_never_the_masked_one(tiny_clip):
    from models.fiser import build_label_sequence, label_tokens

    _, tokenizer = tiny_clip
    toks = label_tokens(tokenizer, NAMES)
    labels = list(range(7))  # 7 names + separators exceed the tiny tower's 16 tokens
    for masked in range(7):
        seq, pos = build_label_sequence(toks, labels, masked, 16)
        assert len(seq) <= 16 and seq[0] == toks.sot and seq[-1] == toks.eot
        assert [seq[p] for p in pos] == list(toks.names[masked])
    seq, _ = build_label_sequence(toks, labels, 0, 16)
    assert seq == tokenizer(["cat, dog, traffic light, sky, potted plant, wall"])[0][: len(seq)].tolist()


def test_text_fiser_loss_unchanged_by_padding_to_a_larger_kmax(tiny_clip):
    from models.fiser import fiser_text_loss, pad_class_sets

    model, _ = _text_model(tiny_clip)
    torch.manual_seed(0)
    text = F.normalize(torch.randn(7, model.embed_dim), dim=-1)
    tokens = torch.randn(1, 16, model.embed_dim)
    with torch.no_grad():
        alone = fiser_text_loss(model.fiser, model.clip, text, [[1, 4, 6]], tokens, masked_index=torch.tensor([1]))
        sets = [[1, 4, 6], [0, 2, 3, 5, 6]]  # K_max 5, a longer label sequence (padded after [EOT])
        both = torch.cat([tokens, torch.randn(1, 16, model.embed_dim)])
        emb, valid = pad_class_sets(text, sets)
        logits = model.fiser(model.clip, emb, valid, sets, torch.tensor([1, 0]), both)
    per_image = F.cross_entropy(logits, torch.tensor([1, 0]), reduction="none")
    assert torch.allclose(per_image[0], alone, atol=1e-5)
    assert torch.isinf(logits[0, 3:]).all() and torch.isfinite(logits[1]).all()


def test_text_fiser_gradients_reach_mask_token_and_predictor_not_frozen_text_weights(tiny_clip):
    from models.trainable import select_trainable

    model, _ = _text_model(tiny_clip)
    select_trainable(model, "q")
    text = F.normalize(torch.randn(7, model.embed_dim), dim=-1)
    out = model(torch.rand(2, 3, 64, 64) * 255, torch.ones(2, 2, 64, 64), text,
                fiser_class_sets=[[0, 2, 5], [3]], class_sets=[[0, 2, 5], [3]])
    out["loss_fiser"].backward()
    fiser = dict(model.fiser.named_parameters())
    assert fiser["mask_token"].grad is not None and fiser["mask_token"].grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in fiser.items() if n != "mask_token")
    assert all(p.grad is None for p in model.clip.parameters())
    assert model.visual.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0  # through P (patch embeddings)


def test_text_fiser_needs_the_label_names(tiny_clip):
    from tests.models.conftest import make_fovseg

    clip, _ = tiny_clip
    model = make_fovseg(clip, fiser_layers=1)
    with pytest.raises(RuntimeError, match="set_label_names"):
        model(torch.rand(1, 3, 64, 64) * 255, torch.ones(1, 1, 64, 64), F.normalize(torch.randn(3, 64), dim=-1),
              fiser_class_sets=[[0, 1]])


def test_vocabulary_candidates_score_the_masked_label_against_every_class(tiny_clip):
    """``candidates: vocabulary``: eq. 5's cosine over the whole vocabulary, target = the masked label's
    vocabulary index; an image with one class is a real task there (with its own K = 1 classes, a free 0)."""
    from models.fiser import fiser_text_loss, pad_class_sets, vocabulary_logits

    model, _ = _text_model(tiny_clip)
    torch.manual_seed(0)
    text = F.normalize(torch.randn(7, model.embed_dim), dim=-1)
    tokens = torch.randn(2, 16, model.embed_dim)
    sets, masked = [[1, 4, 6], [3]], torch.tensor([2, 0])
    with torch.no_grad():
        loss = fiser_text_loss(model.fiser, model.clip, text, sets, tokens, masked_index=masked,
                               candidates="vocabulary")
        emb, valid = pad_class_sets(text, sets)
        pred = model.fiser(model.clip, emb, valid, sets, masked, tokens, embed_only=True)
        logits = vocabulary_logits(pred, text, model.fiser.logit_scale.exp())
        image_only = fiser_text_loss(model.fiser, model.clip, text, [[3]], tokens[1:], masked_index=masked[1:])
    assert logits.shape == (2, 7)
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([6, 3])), atol=1e-6)
    assert image_only.item() == 0.0  # K = 1 with the image's own candidates
    assert F.cross_entropy(logits[1:], torch.tensor([3])).item() > 0.1


def test_vocabulary_candidates_train_through_the_classifier_and_reject_unknown_modes(tiny_clip):
    from tests.models.conftest import make_fovseg

    clip, tokenizer = tiny_clip
    model = make_fovseg(clip, fiser_layers=1, fiser_candidates="vocabulary")
    model.set_label_names(NAMES, tokenizer)
    text = F.normalize(torch.randn(7, model.embed_dim), dim=-1)
    out = model(torch.rand(2, 3, 64, 64) * 255, torch.ones(2, 2, 64, 64), text,
                fiser_class_sets=[[0, 2, 5], [3]], class_sets=[[0, 2, 5], [3]])
    out["loss_fiser"].backward()
    assert model.fiser.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="FiSeR candidates"):
        make_fovseg(clip, fiser_layers=1, fiser_candidates="batch")
