import copy
import os
import signal

import pytest
import torch
import torch.nn.functional as F

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.trainable import select_trainable
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark
from pipeline.training import TrainingDiverged, TrainingInterrupted, TrainSet, train


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True, True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "q")
    return model


def _run(model, toy_root, out_dir, text=None, on_step=None, iterations=6):
    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    ts = TrainSet(ds, None, 64, 0.5, 1.5, "gt", 0.5, 12)
    emb = text if text is not None else F.normalize(torch.randn(len(ds.vocab), model.embed_dim,
                                                                generator=torch.Generator().manual_seed(1)), dim=-1)
    return train(model, ts, lambda: emb, out_dir=out_dir, iterations=iterations, batch_size=2, lr=1e-3,
                 weight_decay=0.05, backbone_lr_mult=0.1, warmup_iters=2, schedule="poly", checkpoint_every=2,
                 loss_weights={"ce": 2.0, "fiser": 1.0}, amp=True, seed=0, device=torch.device("cpu"),
                 config={"test": 1}, on_step=on_step)


def test_killed_and_resumed_run_matches_uninterrupted(base_model, toy_root, tmp_path):
    a = copy.deepcopy(base_model)
    ra = _run(a, toy_root, tmp_path / "a")
    assert len(ra["history"]) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in ra["history"])

    b = copy.deepcopy(base_model)

    def kill(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="after iteration 3"):
        _run(b, toy_root, tmp_path / "b", on_step=kill)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 3
    c = copy.deepcopy(base_model)  # a fresh process would rebuild the model from the backbones
    rc = _run(c, toy_root, tmp_path / "b")
    assert rc["resumed_from"] == 3
    sa, sc = a.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa), "resumed weights differ from the uninterrupted run"
    assert [r["loss"] for r in rc["history"]] == [r["loss"] for r in ra["history"]]


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(base_model, toy_root, tmp_path):
    m = copy.deepcopy(base_model)
    _run(m, toy_root, tmp_path, iterations=2)
    good = torch.load(tmp_path / "last.pt", weights_only=True)
    bad = torch.full((42, m.embed_dim), float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at iteration 2.*last good checkpoint"):
        _run(copy.deepcopy(base_model), toy_root, tmp_path, text=bad, iterations=4)
    kept = torch.load(tmp_path / "last.pt", weights_only=True)
    assert kept["step"] == good["step"] == 2
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])
