import torch
import torch.nn.functional as F

from models.text_cache import TextEmbeddingCache, compute_text_embeddings


def test_class_embedding_is_the_normalised_mean_of_its_normalised_prompts():
    table = {"a": [1.0, 0.0], "b": [0.0, 2.0], "x a": [3.0, 0.0], "x b": [0.0, 1.0], "c": [1.0, 1.0], "x c": [1.0, 1.0]}
    out = compute_text_embeddings(lambda ps: torch.tensor([table[p] for p in ps]), [("a", "b"), ("c",)],
                                  ["{}", "x {}"], batch_size=3)  # chunks cross class boundaries
    assert torch.allclose(out, F.normalize(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), dim=-1))


def test_embeddings_are_computed_on_the_encoders_device_and_cached_on_the_cpu(tmp_path):
    """An encoder on another device (CUDA in the paper preset; meta here) used to meet a CPU accumulator."""
    on_meta = compute_text_embeddings(lambda ps: torch.ones(len(ps), 8, device="meta"), [("a", "b"), ("c",)],
                                      ["{}", "a {}"])
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 8)
    cache = TextEmbeddingCache(tmp_path)
    first = cache.get("m", "w", [("a",), ("b",)], ["{}"], lambda ps: torch.eye(len(ps), 4))
    again = cache.get("m", "w", [("a",), ("b",)], ["{}"], lambda ps: 1 / 0)  # a hit never encodes
    assert first.device.type == again.device.type == "cpu" and torch.equal(first, again)
