"""Fault-campaign smaller defects (issue 10, item 8.6): file modes of atomic writes, text-cache write race."""
import os
import stat

import torch

from pipeline.data.formats import atomic_path, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "b.bin") == 0o644


def test_atomic_writes_follow_a_stricter_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o640


def test_text_cache_uses_a_unique_temp_file(tmp_path, monkeypatch):
    """Two processes writing the same key must not share a temp name: each save goes to its own file."""
    from models import text_cache

    saved: list[str] = []
    real_save = torch.save

    def spy(obj, f, *a, **k):
        saved.append(str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(text_cache.torch, "save", spy)

    def encode(prompts):
        return torch.ones(len(prompts), 4)

    for _ in range(2):
        cache = text_cache.TextEmbeddingCache(tmp_path)
        key = text_cache.cache_key("m", "w", [["a"]], ["{}"])
        (tmp_path / f"{key}.pt").unlink(missing_ok=True)
        emb = cache.get("m", "w", [["a"]], ["{}"], encode)
        assert emb.shape == (1, 4)
    assert len(saved) == 2 and saved[0] != saved[1]
    assert all(not p.endswith(f"{key}.tmp") for p in saved)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.pt"]  # no temp left behind
    assert _mode(tmp_path / f"{key}.pt") & 0o044  # readable by others under the usual umask
