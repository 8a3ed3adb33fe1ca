import copy
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.trainable import select_trainable
from pipeline.checkpoints import set_aside_folder
from pipeline.config import LossWeights, TrainParams
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark
from pipeline.errors import CheckpointError, FovsegError, TrainingDiverged, TrainingInterrupted
from pipeline.train.data import TrainSet
from pipeline.train.recipe import TrainingRecipe
from tests.conftest import no_object_embedding

CFG = TrainParams(iterations=6, batch_size=2, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1, warmup_iters=2,
                  schedule="poly", crop_size=64, checkpoint_every=2, amp=True,
                  loss_weights=LossWeights(fiser=1.0, ce=2.0),
                  mask_source="gt", max_masks=12, num_workers=0, log_every=1)



@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "q")
    return model


def _run(model, toy_root, out_dir, text=None, on_step=None, **changes):
    cfg = CFG.model_copy(update=changes)
    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    ts = TrainSet(ds, None, cfg.crop_size, cfg.lsj_min_scale, cfg.lsj_max_scale, cfg.mask_source,
                  cfg.max_masks, image_size=64, grid=32)
    emb = text if text is not None else F.normalize(torch.randn(len(ds.vocab), model.embed_dim,
                                                                generator=torch.Generator().manual_seed(1)), dim=-1)
    recipe = TrainingRecipe(model, ts, lambda: emb, cfg, seed=0, device=torch.device("cpu"), checkpoint_dir=out_dir,
                            identity={"test": 1}, no_object_source=lambda: no_object_embedding(model.embed_dim))
    recipe.setup()
    return recipe.train(on_step=on_step)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


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
    assert _same_weights(a, c), "resumed weights differ from the uninterrupted run"
    assert [r["loss"] for r in rc["history"]] == [r["loss"] for r in ra["history"]]


def test_data_loader_workers_do_not_change_the_weights(base_model, toy_root, tmp_path):
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    ra = _run(a, toy_root, tmp_path / "w0", iterations=3, num_workers=0)
    rb = _run(b, toy_root, tmp_path / "w2", iterations=3, num_workers=2)
    assert [r["loss"] for r in ra["history"]] == [r["loss"] for r in rb["history"]]
    assert _same_weights(a, b), "2 loader workers gave other weights than loading in the main process"


def test_resume_ignores_result_neutral_keys(base_model, toy_root, tmp_path):
    _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4)
    before = torch.load(tmp_path / "last.pt", weights_only=True)
    r = _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4, log_every=3, checkpoint_every=1,
             num_workers=1)
    assert r["resumed_from"] == 4 and len(r["history"]) == 4
    assert r["train_seconds"] == pytest.approx(before["train_seconds"])
    assert r["it_per_s"] == pytest.approx(4 / before["train_seconds"]) and r["it_per_s"] > 0


def test_extending_iterations_continues_with_the_new_schedule(base_model, toy_root, tmp_path):
    _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4)
    first = torch.load(tmp_path / "last.pt", weights_only=True)
    r = _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=6)
    assert r["resumed_from"] == 4 and r["schedule_changed_at"] == 4 and len(r["history"]) == 6
    assert [h["loss"] for h in r["history"][:4]] == [h["loss"] for h in first["history"]]
    total = torch.load(tmp_path / "last.pt", weights_only=True)["train_seconds"]
    assert total > first["train_seconds"] and r["it_per_s"] == pytest.approx(6 / total)
    # steps 5-6 follow the poly decay of the 6-iteration schedule: factor (1 - (s - warmup) / (6 - warmup)) ** 0.9
    # relative to the peak after warmup (row 1); the 4-iteration schedule would have reached 0 at step 4
    assert r["history"][4]["lr"] / r["history"][1]["lr"] == pytest.approx((1 - 3 / 4) ** 0.9)


def test_a_result_changing_key_refuses_to_resume_an_unfinished_run_and_keeps_it(base_model, toy_root, tmp_path):
    def kill(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4, on_step=kill)
    ckpt = tmp_path / "last.pt"
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=r"train\.lr: 0\.001 -> 0\.002.*kept as is") as exc:
        _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4, lr=2e-3)
    assert isinstance(exc.value, FovsegError)
    with pytest.raises(CheckpointError, match="past train.iterations"):
        _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=1)
    assert ckpt.read_bytes() == before


def test_a_finished_run_with_other_settings_is_set_aside_and_training_starts_over(base_model, toy_root, tmp_path,
                                                                                   caplog):
    """After a finished training, changing a param and re-running (`dvc repro`, the checkpoint folder persists)
    trains anew; the old checkpoint is kept beside it, never resumed."""
    _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=2)
    before = (tmp_path / "last.pt").read_bytes()
    fresh = _run(copy.deepcopy(base_model), toy_root, tmp_path / "fresh", iterations=2, lr=2e-3)
    with caplog.at_level("WARNING"):
        r = _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=2, lr=2e-3)
    assert r["resumed_from"] == 0 and [h["loss"] for h in r["history"]] == [h["loss"] for h in fresh["history"]]
    aside = list(set_aside_folder(tmp_path / "last.pt").glob("last.pt.finished-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert "train.lr: 0.001 -> 0.002" in caplog.text and "training starts over" in caplog.text
    assert not list(tmp_path.glob("last.pt.*"))  # the checkpoint folder (a DVC output) holds no old run


def test_a_finished_run_from_other_code_is_set_aside_and_trained_again(base_model, toy_root, tmp_path, caplog,
                                                                         monkeypatch):
    """DVC re-runs training when models/ or pipeline/ change; the persisted finished checkpoint must not come back
    as the result (same params, so the identity alone would let it resume at its last step)."""
    from pipeline.train import recipe as training

    first = _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=2)
    assert _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=2)["resumed_from"] == 2  # same code
    before = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(training, "code_digest", lambda: "edited")
    with caplog.at_level("WARNING"):
        r = _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=2)
    assert r["resumed_from"] == 0 and [h["loss"] for h in r["history"]] == [h["loss"] for h in first["history"]]
    aside = list(set_aside_folder(tmp_path / "last.pt").glob("last.pt.finished-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == before and "written by other code" in caplog.text
    assert not list(tmp_path.glob("last.pt.*"))


def test_an_unfinished_run_from_other_code_resumes_with_a_warning(base_model, toy_root, tmp_path, caplog,
                                                                  monkeypatch):
    from pipeline.train import recipe as training

    def kill(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4, on_step=kill)
    monkeypatch.setattr(training, "code_digest", lambda: "edited")
    with caplog.at_level("WARNING"):
        r = _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=4)
    assert r["resumed_from"] > 0 and "resuming it anyway" in caplog.text


def test_params_keys_newer_than_the_checkpoint_resume_at_their_defaults(base_model, toy_root, tmp_path):
    from pipeline.train.resume import resume_identity, with_defaults

    _run(copy.deepcopy(base_model), toy_root, tmp_path, iterations=2)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    old = {**ckpt["identity"], "train": {k: v for k, v in ckpt["identity"]["train"].items() if k != "data_fraction"}}
    assert resume_identity(with_defaults(old)) == resume_identity(ckpt["identity"])
    changed = {**old, "train": {**old["train"], "lr": 0.5}}
    assert resume_identity(with_defaults(changed)) != resume_identity(ckpt["identity"])


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(base_model, toy_root, tmp_path):
    m = copy.deepcopy(base_model)
    _run(m, toy_root, tmp_path, iterations=2)
    good = torch.load(tmp_path / "last.pt", weights_only=True)
    bad = torch.full((42, m.embed_dim), float("nan"))
    with pytest.raises(TrainingDiverged, match="logits became non-finite at iteration 2.*last good checkpoint"):
        _run(copy.deepcopy(base_model), toy_root, tmp_path, text=bad, iterations=4)
    kept = torch.load(tmp_path / "last.pt", weights_only=True)
    assert kept["step"] == good["step"] == 2
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


def test_clip_grad_norm_bounds_the_norm_of_all_gradients_together(base_model, toy_root, tmp_path, monkeypatch):
    """train.clip_grad_norm (MaskCLIP's full-model L2 clipping): every optimiser step sees a total gradient
    norm at most the limit; 0 leaves gradients alone."""
    norms: list[float] = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    _run(copy.deepcopy(base_model), toy_root, tmp_path / "clipped", iterations=3, clip_grad_norm=1e-3)
    clipped, norms[:] = list(norms), []
    _run(copy.deepcopy(base_model), toy_root, tmp_path / "free", iterations=3)
    assert len(clipped) == 3 and max(clipped) <= 1e-3 * (1 + 1e-4)
    assert min(norms) > 1e-2  # unclipped gradients are far larger: the limit did act


def test_gpu_hours_count_the_training_processes_not_the_visible_gpus(monkeypatch):
    """One training process on a machine with 8 visible GPUs used 1 GPU: gpu_hours = hours x processes."""
    from pipeline.train import run as training

    result = {"history": [], "train_seconds": 7200.0, "it_per_s": 1.0, "iterations": 10, "resumed_from": 0}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert training.summary_metrics(result, {}, torch.device("cuda", 0))["gpu_hours"] == pytest.approx(2.0)
    monkeypatch.setattr(training, "world", lambda: (0, 4))
    assert training.summary_metrics(result, {}, torch.device("cuda", 0))["gpu_hours"] == pytest.approx(8.0)
    assert "gpu_hours" not in training.summary_metrics(result, {}, torch.device("cpu"))  # none: absent, not 0.0


def test_sample_cache_gives_the_same_batches_and_keeps_to_its_budget(toy_root, tmp_path):
    """Decoded samples and proposals are kept in memory across epochs: loads equal uncached loads (same
    augmentation seeds), the cached arrays are not modified by augmenting them, the byte budget holds."""
    import numpy as np

    from pipeline.data.proposal_store import ProposalStore, ProposalWriter

    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    with ProposalWriter(tmp_path / "props") as w:  # the ground-truth segments stand in for a generator's masks
        for i in range(len(ds)):
            s = ds[i]
            masks = s.segment_masks()[0]
            w.add(s.image_id, masks, np.ones(len(masks), np.float32))
    store = ProposalStore(tmp_path / "props")

    def loads(ts, rounds=2):
        out = []
        for r in range(rounds):
            for i in range(len(ts)):
                out.append(ts.load(i, np.random.default_rng(100 * r + i)))
        return out

    cached = TrainSet(ds, store, 64, 0.5, 1.5, "both", 12, image_size=64, grid=32)
    uncached = TrainSet(ds, store, 64, 0.5, 1.5, "both", 12, image_size=64, grid=32, cache_bytes=0)
    for a, b in zip(loads(cached), loads(uncached)):
        assert all(torch.equal(a[k], b[k]) for k in ("image", "masks", "gt_masks", "gt_labels"))
        assert a["classes"] == b["classes"]
    assert len(cached._cache) == len(ds) and not uncached._cache
    for i, (s, props) in cached._cache.items():  # untouched by two epochs of augmentation
        fresh = ds[cached.subset[i]]
        assert np.array_equal(s.image, fresh.image) and np.array_equal(s.id_map, fresh.id_map)
        assert np.array_equal(props, store[fresh.image_id][0])
    s0, p0 = cached.decoded(0)
    assert s0.semantic is None  # training reads no semantic map
    one = s0.image.nbytes + s0.id_map.nbytes + p0.nbytes
    small = TrainSet(ds, store, 64, 0.5, 1.5, "both", 12, image_size=64, grid=32, cache_bytes=3 * one)
    loads(small, rounds=1)
    assert 0 < len(small._cache) < len(ds) and small._cached_bytes <= 3 * one


def test_training_step_matches_proposals_and_learns_no_object(base_model, toy_root, tmp_path, monkeypatch):
    """With Hungarian targets the step classifies against the training classes + the no-object text (MaskCLIP's
    "other"); every segment appears twice among the proposals (stored copy + ground truth), exactly one of the
    two learns its class, the other no-object. The IoU rule gives both the class and has no such column."""
    from pipeline.data.proposal_store import ProposalStore, ProposalWriter
    from pipeline.train import recipe

    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    with ProposalWriter(tmp_path / "props") as w:  # the ground-truth segments stand in for a generator's masks
        for i in range(len(ds)):
            masks = ds[i].segment_masks()[0]
            w.add(ds[i].image_id, masks, np.ones(len(masks), np.float32))
    ts = TrainSet(ds, ProposalStore(tmp_path / "props"), 64, 1.0, 1.0, "both", 24, image_size=64, grid=32)
    seen = []
    real = recipe.classification_loss
    monkeypatch.setattr(recipe, "classification_loss", lambda lg, tg, w=None: seen.append((lg.shape[-1], tg, w))
                        or real(lg, tg, w))
    n = len(ds.vocab)
    emb = F.normalize(torch.randn(n, base_model.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    for assignment in ("hungarian", "iou"):
        cfg = CFG.model_copy(update={"iterations": 1, "assignment": assignment, "mask_source": "both"})
        r = TrainingRecipe(copy.deepcopy(base_model), ts, lambda: emb, cfg, seed=0, device=torch.device("cpu"),
                           checkpoint_dir=tmp_path / assignment, identity={},
                           no_object_source=lambda: no_object_embedding(base_model.embed_dim))
        r.setup()
        out = r.train()
        width, targets, weight = seen[-1]
        labelled = targets[(targets >= 0) & (targets < n)].numel()
        if assignment == "hungarian":
            assert width == n + 1 and weight == CFG.no_object_weight
            assert (targets == n).sum() == labelled and out["history"][0]["matched"] == labelled > 0
        else:
            assert width == n and weight is None and not (targets == n).any() and labelled % 2 == 0


def test_periodic_evaluation_keeps_the_best_weights_and_a_curve(base_model, toy_root, tmp_path):
    """train.eval_every: the evaluator runs every N iterations (and at the end); the best score's weights are
    best.pt; the scores survive a resume."""
    scores = iter([1.0, 3.0, 2.0])
    calls = []

    def evaluator(model):
        calls.append(model.training)
        s = next(scores)
        return {"toy_open/PQ": s, "metric": "toy_open/PQ", "score": s}

    cfg = CFG.model_copy(update={"iterations": 6, "eval_every": 2, "checkpoint_every": 2})
    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    ts = TrainSet(ds, None, 64, 0.5, 1.5, "gt", 12, image_size=64, grid=32)
    emb = F.normalize(torch.randn(len(ds.vocab), base_model.embed_dim, generator=torch.Generator().manual_seed(1)),
                      dim=-1)
    recipe = TrainingRecipe(copy.deepcopy(base_model), ts, lambda: emb, cfg, seed=0, device=torch.device("cpu"),
                            checkpoint_dir=tmp_path, identity={}, evaluator=evaluator, best_path=tmp_path / "best.pt",
                            no_object_source=lambda: no_object_embedding(base_model.embed_dim))
    recipe.setup()
    logged = []
    out = recipe.train(on_metrics=lambda row, step: logged.append((step, row)))
    assert [e["step"] for e in out["evals"]] == [2, 4, 6] and [e["score"] for e in out["evals"]] == [1.0, 3.0, 2.0]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["step"] == 4 and best["score"] == 3.0 and not any(k.startswith("fiser.") for k in best["model"])
    assert (4, {"toy_open/PQ": 3.0, "metric": "toy_open/PQ", "score": 3.0}) in logged
    assert recipe.model.training  # back in training mode after each evaluation
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert [e["score"] for e in ckpt["evals"]] == [1.0, 3.0, 2.0]


def test_checkpoints_hold_the_trainable_state_not_the_frozen_backbone(base_model, toy_root, tmp_path):
    model = copy.deepcopy(base_model)
    _run(model, toy_root, tmp_path, iterations=2)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt["model"]) == trainable and len(trainable) < len(model.state_dict()) / 2
    assert any(k.startswith("fiser.") for k in ckpt["model"])  # the resume checkpoint keeps the predictor
