"""Fault-campaign checkpoint defects (issue 10, item 8.5): truncated and bit-flipped checkpoints."""
import copy

import pytest
import torch

from pipeline.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_or_set_aside,
    save_checkpoint,
    set_aside,
    set_aside_folder,
)
from pipeline.errors import FovsegError
from tests.conftest import run_recipe


def _state() -> dict:
    torch.manual_seed(0)
    w = torch.arange(20000, dtype=torch.float32) * 0.5 + 1.0  # a recognisable byte pattern
    return {"model": {"w": w, "b": torch.zeros(3, dtype=torch.bfloat16)}, "step": 7, "history": [{"loss": 0.5}]}


def test_round_trip_keeps_the_content(tmp_path):
    save_checkpoint(_state(), tmp_path / "c.pt")
    got = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(got["model"]["w"], _state()["model"]["w"]) and got["step"] == 7
    assert "sha256" not in got  # the digest is checked and stripped


def test_the_same_checkpoint_is_the_same_bytes_every_time(tmp_path):
    """DVC hashes outputs: a re-run that computes the same weights must write the same file (each save goes
    through a differently named temp file)."""
    save_checkpoint(_state(), tmp_path / "a" / "model.pt")
    save_checkpoint(_state(), tmp_path / "b" / "model.pt")
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_truncated_checkpoint_is_one_clear_error_naming_the_path(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.pt.*truncated or corrupt.*delete it"):
        load_checkpoint(path)
    assert issubclass(CheckpointError, FovsegError)  # a known failure: one line, no traceback


def test_bit_flipped_checkpoint_is_detected(tmp_path):
    path = tmp_path / "model.pt"
    state = _state()
    save_checkpoint(state, path)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(state["model"]["w"][1000:1004].numpy().tobytes())
    assert at > 0
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model.pt.*sha256"):
        load_checkpoint(path)


def test_a_checkpoint_without_digest_still_loads(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "old.pt")  # written before digests existed
    assert torch.equal(load_checkpoint(tmp_path / "old.pt")["model"]["w"], torch.ones(2))


def test_corrupt_resume_checkpoint_is_set_aside_not_blocking(tmp_path, caplog):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert load_or_set_aside(path) is None
    assert not path.exists() and not list(tmp_path.iterdir())
    aside = list(set_aside_folder(path).glob("last.pt.corrupt*"))
    assert len(aside) == 1 and "set aside" in caplog.text and str(aside[0]) in caplog.text


def test_set_aside_goes_beside_the_folder_and_never_over_an_earlier_one(tmp_path):
    folder = tmp_path / "outputs" / "checkpoints"
    folder.mkdir(parents=True)
    moved = []
    for content in (b"first", b"second"):  # within one second: same time stamp
        (folder / "last.pt").write_bytes(content)
        moved.append(set_aside(folder / "last.pt", "finished"))
    assert [m.parent for m in moved] == [tmp_path / "outputs" / "checkpoints.set-aside"] * 2
    assert [m.read_bytes() for m in moved] == [b"first", b"second"] and not list(folder.iterdir())


def test_builder_checkpoint_reader_verifies_and_reports_the_path(tmp_path):
    from pipeline.build.classifier import read_checkpoint

    model = torch.nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    save_checkpoint({"model": model.state_dict()}, path)
    copy.deepcopy(model).load_state_dict(read_checkpoint(path)["model"])
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


def test_training_hook_sets_a_truncated_last_checkpoint_aside(tmp_path, toy_root):
    """`dvc repro train` is not blocked by a truncated outputs/checkpoints/last.pt: training starts over."""
    import torch.nn.functional as F

    from models.classifier import FOVSeg
    from models.clip_backbone import build_clip
    from models.mask_encoder import TevaConfig
    from models.trainable import select_trainable
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.registry import get_benchmark
    from pipeline.train.data import TrainSet

    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=1, fiser_layers=1)
    select_trainable(model, "q")
    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    ts = TrainSet(ds, None, 64, 0.5, 1.5, "gt", 12, image_size=64, grid=32)
    emb = F.normalize(torch.randn(len(ds.vocab), model.embed_dim), dim=-1)
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    out = run_recipe(model, ts, lambda: emb, out_dir=tmp_path, iterations=2, batch_size=2, lr=1e-3, weight_decay=0.05,
                backbone_lr_mult=0.1, warmup_iters=0, schedule="poly", checkpoint_every=2,
                loss_weights={"ce": 2.0, "fiser": 1.0}, amp=False, seed=0, device=torch.device("cpu"),
                config={"test": 1})
    assert out["resumed_from"] == 0
    assert list(set_aside_folder(tmp_path / "last.pt").glob("last.pt.corrupt*"))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2  # the new checkpoint carries a digest and verifies
