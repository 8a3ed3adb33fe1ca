"""The one builder: a ready classifier from params (+ checkpoint), its cached text embeddings, classify_image."""

import numpy as np
import pytest
import torch

from models.clip_backbone import build_clip
from pipeline.build.classifier import build_classifier, classify_image, text_cache_dir
from pipeline.config import Params
from pipeline.data.vocab import vocabulary_from_names
from pipeline.errors import CheckpointError, WeightsUnavailableError
from pipeline.presets import preset_params


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    torch.save(clip.state_dict(), d / "clip.pt")
    return d


def test_checkpoint_round_trip_and_text_cache(backbones, tmp_path, monkeypatch):
    monkeypatch.setenv("FOVSEG_CACHE", str(tmp_path / "cache"))
    p = Params()
    torch.manual_seed(0)
    ready = build_classifier(p.backbones.clip, p.model, backbones, "cpu")
    with torch.no_grad():
        for param in ready.model.parameters():
            if param.requires_grad:
                param.add_(0.01)
    torch.save({"model": ready.model.state_dict()}, tmp_path / "model.pt")
    loaded = build_classifier(p.backbones.clip, p.model, backbones, "cpu", checkpoint=tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(ready.model.state_dict().values(),
                                                  loaded.model.state_dict().values()))
    assert loaded.weights_id == ready.weights_id  # text tower frozen: the same cached embeddings serve
    vocab = vocabulary_from_names(["red circle", "sky"])
    text = loaded.text_embeddings(vocab)
    assert text.shape == (2, loaded.model.embed_dim) and len(list(text_cache_dir().glob("*.pt"))) == 1
    tuned = p.model.model_copy(update={"tune_text": True})
    assert build_classifier(p.backbones.clip, tuned, backbones, "cpu", checkpoint=tmp_path / "model.pt"
                            ).weights_id != ready.weights_id
    image = np.zeros((40, 56, 3), np.uint8)
    masks = np.zeros((3, 40, 56), bool)
    masks[:, :20] = True
    probs = classify_image(loaded, image, masks, text, p.evaluate)
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(-1), torch.ones(3))


def test_unreadable_checkpoint_and_missing_backbones_are_clear(backbones, tmp_path):
    p = Params()
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} is truncated or corrupt"):
        build_classifier(p.backbones.clip, p.model, backbones, "cpu", checkpoint=bad)
    with pytest.raises(WeightsUnavailableError, match="clip.pt not found; run `dvc repro backbones`"):
        build_classifier(p.backbones.clip, p.model, tmp_path / "none", "cpu")


def test_clip_weights_id_follows_a_local_weights_file_content(tmp_path):
    """The text-embedding cache is keyed by this id: replacing a local ``pretrained`` file at the same path
    must change it (a tag such as ``openai`` stays the tag)."""
    from pipeline.build.classifier import clip_weights_id
    from pipeline.config import ClipParams

    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"first weights")
    first = clip_weights_id(ClipParams(model="ViT-B-16", pretrained=str(weights)), tmp_path)
    weights.write_bytes(b"other weights")
    assert clip_weights_id(ClipParams(model="ViT-B-16", pretrained=str(weights)), tmp_path) != first
    assert clip_weights_id(ClipParams(model="ViT-B-16", pretrained="openai"), tmp_path) == "openai"


def test_synonyms_off_prompts_with_the_class_name_only():
    """model.synonyms: false (the paper preset: "the text inputs consist of the category names")."""
    from pipeline.build.classifier import ReadyClassifier
    from pipeline.data.vocab import ClassInfo, Vocabulary

    vocab = Vocabulary("v", (ClassInfo(0, "person", True, ("person", "people", "human")),
                             ClassInfo(1, "sky", False, ("sky",))))
    both = ReadyClassifier(None, None, "w", "m", ("{}",), torch.device("cpu"))
    names = ReadyClassifier(None, None, "w", "m", ("{}",), torch.device("cpu"), synonyms=False)
    assert both.class_texts(vocab) == [("person", "people", "human"), ("sky",)]
    assert names.class_texts(vocab) == [("person",), ("sky",)]


def test_paper_presets_follow_maskclip_where_the_paper_defers_to_it():
    """Sec. V-C: category names as text, and "all hyperparameters follow those used in MaskCLIP": constant
    LR without warmup ramp, full-model gradient clipping at 0.01, panoptic thresholds 0.5 / 0.5."""

    for preset in ("paper", "paper_coco_stuff"):
        p = preset_params(preset)
        assert p.model.templates == ("{}",) and p.model.synonyms is False
        assert (p.train.schedule, p.train.warmup_iters, p.train.clip_grad_norm) == ("constant", 0, 0.01)
        assert (p.evaluate.object_threshold, p.evaluate.overlap_threshold) == (0.5, 0.5)
        assert (p.train.lr, p.train.weight_decay, p.train.backbone_lr_mult) == (1e-4, 0.05, 0.1)
        assert (p.train.iterations, p.train.batch_size, p.train.crop_size) == (25000, 16, 1024)
