"""Checkpoint faults (issue 29, class 4): a failed write names the file and keeps the previous checkpoint; an empty,
truncated or foreign ``--checkpoint`` (and a damaged toy CLIP) is one CheckpointError naming the file and how to
regenerate it, never a torch traceback; a checkpoint that cannot be read for lack of permission says so and is
never set aside as corrupt."""
import builtins
import errno
import io
import pickle

import pytest
import torch

from pipeline import checkpoints
from pipeline.checkpoints import CheckpointError, load_checkpoint, load_or_set_aside, save_checkpoint


def _state(v: float = 1.0) -> dict:
    return {"model": {"w": torch.full((64,), v)}, "step": 3}


def _damaged(kind: str, good: bytes) -> bytes:
    return {"empty": b"", "half": good[: len(good) // 2], "head": good[:10], "text": b"hello world\n" * 20,
            "pickle": pickle.dumps({"model": "not weights"}), "zeros": bytes(4096)}[kind]


DAMAGE = ["empty", "half", "head", "text", "pickle", "zeros"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_is_one_clear_error(tmp_path, kind):
    path = tmp_path / "model.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(_damaged(kind, path.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "dvc repro train" in msg and "\n" not in msg


def test_empty_checkpoint_says_it_is_empty(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model.pt is empty \(0 bytes.*dvc repro train"):
        load_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize("kind", DAMAGE)
def test_evaluate_and_predict_reader_refuses_a_damaged_checkpoint(tmp_path, kind):
    """What `fovseg evaluate/predict --checkpoint` and the attention stage read through."""
    from pipeline.build.classifier import read_checkpoint

    path = tmp_path / "model.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(_damaged(kind, path.read_bytes()))
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


def test_a_folder_given_as_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a folder"):
        load_checkpoint(tmp_path)


def test_checkpoint_whose_model_is_not_weights_is_refused(tmp_path):
    from pipeline.build.classifier import read_checkpoint

    save_checkpoint({"model": "weights?"}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt.*'model'"):
        read_checkpoint(tmp_path / "model.pt")


def test_resume_from_an_empty_checkpoint_starts_over(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    assert load_or_set_aside(tmp_path / "last.pt") is None
    assert not (tmp_path / "last.pt").exists()


# ----------------------------------------------------------------------------- failed writes
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_failed_write_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code):
    path = tmp_path / "model.pt"
    save_checkpoint(_state(1.0), path)

    def fail(*_a, **_k):
        raise OSError(code, errno.errorcode[code])
    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(_state(2.0), path)
    msg = str(err.value)
    assert str(path) in msg and "previous" in msg and "\n" not in msg
    if code == errno.ENOSPC:
        assert "disk full" in msg
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((64,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    import tempfile

    def denied(*_a, dir=None, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(CheckpointError, match=r"permission denied: .*check the permissions"):
        save_checkpoint(_state(), tmp_path / "ckpt" / "model.pt")


def test_torch_writer_failure_is_a_clear_error(tmp_path, monkeypatch):
    def fail(*_a, **_k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 512 vs 448")
    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*model.pt"):
        save_checkpoint(_state(), tmp_path / "model.pt")


def test_weights_files_are_written_atomically_with_a_clear_error(tmp_path, monkeypatch):
    """The toy CLIP (`clip.pt`, loaded by open_clip: a plain state dict, no digest) goes through the same writer."""
    from pipeline.checkpoints import save_weights

    path = tmp_path / "clip.pt"
    save_weights({"w": torch.ones(3)}, path)
    assert set(torch.load(path, weights_only=True)) == {"w"}

    def fail(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(CheckpointError, match=r"clip.pt.*disk full"):
        save_weights({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


@pytest.mark.parametrize("kind", ["empty", "half", "text"])
def test_damaged_toy_clip_is_one_clear_error(tmp_path, kind):
    from pipeline.build.classifier import load_clip
    from pipeline.config import ClipParams

    path = tmp_path / "clip.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1000)}, buf)
    path.write_bytes(_damaged(kind, buf.getvalue()))
    with pytest.raises(CheckpointError, match=rf"{path}.*dvc repro backbones"):
        load_clip(ClipParams(), tmp_path)


# ----------------------------------------------------------------------------- permissions
def _deny_open(monkeypatch, path):
    real = builtins.open

    def fake(file, *a, **k):
        if str(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *a, **k)
    monkeypatch.setattr(builtins, "open", fake)
    monkeypatch.setattr(io, "open", fake)


def test_unreadable_checkpoint_says_permission_denied_not_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(_state(), path)
    _deny_open(monkeypatch, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"permission denied: {path}" in msg and "corrupt" not in msg and "delete" not in msg


def test_unreadable_resume_checkpoint_is_not_set_aside(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    _deny_open(monkeypatch, path)
    with pytest.raises(CheckpointError, match="permission denied"):
        load_or_set_aside(path)
    assert path.is_file() and not checkpoints.set_aside_folder(path).exists()


def test_checkpoint_in_a_folder_that_cannot_be_entered_says_permission_denied(tmp_path, monkeypatch):
    import os

    from pipeline.build.classifier import read_checkpoint

    path = tmp_path / "locked" / "model.pt"
    real_stat = os.stat

    def stat(p, *a, **k):
        if str(p).startswith(str(tmp_path / "locked") + "/"):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_stat(p, *a, **k)
    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(CheckpointError, match=r"permission denied: .*model.pt") as err:
        read_checkpoint(path)
    assert "not found" not in str(err.value)


# ----------------------------------------------------------------------------- the `fovseg predict --checkpoint` CLI
@pytest.mark.parametrize("kind", ["empty", "half"])
def test_predict_with_a_damaged_checkpoint_prints_one_line(tiny_backbones, toy_root, tmp_path, monkeypatch, capsys,
                                                           kind):
    from pathlib import Path

    from pipeline.cli import main

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(_state(), ckpt)
    ckpt.write_bytes(_damaged(kind, ckpt.read_bytes()))
    image = next((toy_root / "toy/images/open").glob("*.png"))
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--classes", "a, b", "--params", str(repo / "params.yaml"), "--backbones",
              str(tiny_backbones), "--checkpoint", str(ckpt), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(ckpt) in err and "dvc repro train" in err
    assert ("empty" if kind == "empty" else "truncated or corrupt") in err
