"""Item 8 (Table IV(b)): the generator trains online with Mask2Former's losses only when asked."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.generators import Mask2FormerGenerator, build_mask2former
from models.mask_encoder import TevaConfig
from models.trainable import select_trainable
from pipeline.checkpoints import load_checkpoint
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import get_benchmark
from pipeline.train.data import TrainSet, collate
from pipeline.train.generator_tuning import TUNER_NAME, GeneratorTuner
from tests.conftest import run_recipe


@pytest.fixture(scope="module")
def parts(toy_root):
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "q")
    torch.manual_seed(0)  # the generator's init must not depend on how many draws the classifier took
    m2f = build_mask2former("fovseg-tiny", 64, random_init=True)
    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    text = F.normalize(torch.randn(len(ds.vocab), model.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    return model, m2f, ds, text


def _tuner(m2f, ds, **kw) -> GeneratorTuner:
    return GeneratorTuner(copy.deepcopy(m2f), len(ds.vocab), mask_threshold=0.5, min_area=0, max_proposals=8,
                          max_masks=12, **kw)


def _set(ds, max_masks=12) -> TrainSet:
    """The tuner's training set: ground-truth segments only, the crop at 64 px, the tiny classifier's 32-cell
    mask grid."""
    return TrainSet(ds, None, 64, 0.8, 1.2, "gt", max_masks, image_size=64, grid=32)


def _batch(ds, indices):
    ts = _set(ds)
    rng = np.random.default_rng(0)
    return collate([ts.load(i, rng) for i in indices], ts.grid)


def _train(model, ds, text, out_dir, tuner=None, iterations=3):
    ts = _set(ds)
    return run_recipe(model, ts, lambda: text, out_dir=out_dir, iterations=iterations, batch_size=2, lr=1e-3,
                 weight_decay=0.05, backbone_lr_mult=1.0, warmup_iters=0, schedule="constant", checkpoint_every=10,
                 loss_weights={"ce": 2.0, "fiser": 1.0}, amp=False, seed=0, device=torch.device("cpu"),
                 config={"t": 1}, generator_tuner=tuner)


def test_step_gives_generator_gradients_and_live_proposals(parts):
    model, m2f, ds, text = parts
    tuner = _tuner(m2f, ds, include_gt=False)
    batch = _batch(ds, range(2))
    live, terms = tuner(batch)
    assert set(terms) == {"generator"} and torch.isfinite(terms["generator"])
    # the classifier now sees the generator's thresholded predictions on its mask grid, not the ground truth
    masks = live.proposal_masks()
    assert masks.shape[1] <= 8 and masks.shape[-2:] == (32, 32)
    assert not torch.equal(masks, batch.proposal_masks()[:, : masks.shape[1]])
    assert live.class_sets == batch.class_sets and torch.equal(live.gt_labels, batch.gt_labels)
    terms["generator"].backward()
    got = {n: p.numel() for n, p in tuner.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    total = sum(p.numel() for p in tuner.model.parameters())
    assert sum(got.values()) > 0.99 * total  # all but Swin's unused final norm
    for part in ("pixel_level_module.encoder", "pixel_level_module.decoder", "transformer_module", "class_predictor"):
        assert any(part in n for n in got), part
    with_gt, _ = _tuner(m2f, ds, include_gt=True)(batch)
    assert (with_gt.valid.sum(1) >= batch.gt_valid.sum(1)).all()  # the ground-truth masks appended


def test_tuned_training_trains_generator_and_classifier(parts, tmp_path):
    model, m2f, ds, text = parts
    model = copy.deepcopy(model)
    tuner = _tuner(m2f, ds, include_gt=True)
    keys = set(model.state_dict())
    g0 = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    c0 = {k: v.clone() for k, v in model.state_dict().items()}
    out = _train(model, ds, text, tmp_path / "on", tuner)
    rows = out["history"]
    assert len(rows) == 3 and all(np.isfinite(r["loss_generator"]) and r["loss_generator"] > 0 for r in rows)
    assert any(not torch.equal(g0[k], v) for k, v in tuner.model.state_dict().items()), "generator did not train"
    assert any(not torch.equal(c0[k], v) for k, v in model.state_dict().items()), "classifier did not train"
    assert set(model.state_dict()) == keys and not hasattr(model, TUNER_NAME)  # classifier saved alone
    ckpt = torch.load(tmp_path / "on" / "last.pt", weights_only=True)
    assert any(k.startswith(TUNER_NAME + ".") for k in ckpt["model"])  # resume restores the generator too
    again = _train(copy.deepcopy(model), ds, text, tmp_path / "on", _tuner(m2f, ds, include_gt=True), iterations=4)
    assert again["resumed_from"] == 3 and len(again["history"]) == 4
    tuner.save(tmp_path / "m2f")  # the proposals stage's --generator loads it
    gen = Mask2FormerGenerator(build_mask2former(str(tmp_path / "m2f")), 64, max_proposals=4)
    assert gen([np.zeros((40, 70, 3), np.uint8)])[0].masks.shape[1:] == (40, 70)


def test_off_by_default_nothing_but_the_classifier_trains(parts, tmp_path):
    """Without a tuner the optimiser holds exactly the classifier's trainable parameters (no generator weight
    gets a step), no generator loss is logged and the checkpoint holds the classifier alone."""
    model, m2f, ds, text = parts
    model = copy.deepcopy(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = _train(model, ds, text, tmp_path / "off")
    assert all("loss_generator" not in r for r in out["history"])
    ckpt = load_checkpoint(tmp_path / "off" / "last.pt")
    stepped = sum(s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values())
    assert stepped == trainable
    assert not any(k.startswith(TUNER_NAME) for k in ckpt["model"])
    with_tuner = copy.deepcopy(model)
    _train(with_tuner, ds, text, tmp_path / "on", _tuner(m2f, ds, include_gt=True), iterations=1)
    ckpt = load_checkpoint(tmp_path / "on" / "last.pt")
    assert sum(s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values()) > stepped  # the control


def test_images_without_segments_and_label_modes(parts):
    model, m2f, ds, text = parts
    tuner = _tuner(m2f, ds, include_gt=True)
    assert not tuner.use_train_labels  # the 1-class toy generator: class-agnostic "object" labels
    assert GeneratorTuner(copy.deepcopy(m2f), 1).use_train_labels
    batch = _batch(ds, [0])
    empty = dataclasses.replace(batch, masks=batch.masks[:, :0], valid=batch.valid[:, :0],
                                gt_masks=batch.gt_masks[:, :0], gt_labels=batch.gt_labels[:, :0], class_sets=[[]])
    live, terms = tuner(empty)
    assert torch.isfinite(terms["generator"]) and live.gt_labels.numel() == 0


def _ddp_worker(rank: int, world: int, port: int, toy_root: str, out_dir: str) -> None:
    from pathlib import Path

    import torch.distributed as dist

    from tests.train.ddp import init_rank_with_toy_model

    model, ds = init_rank_with_toy_model(rank, world, port, toy_root)
    tuner = GeneratorTuner(build_mask2former("fovseg-tiny", 64, random_init=True), len(ds.vocab), max_proposals=4,
                           max_masks=8)
    text = F.normalize(torch.randn(len(ds.vocab), model.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    run_recipe(model, _set(ds, 8), lambda: text, out_dir=Path(out_dir), iterations=2,
          batch_size=4, lr=1e-3, weight_decay=0.05, backbone_lr_mult=1.0, warmup_iters=0, schedule="constant",
          checkpoint_every=2, loss_weights={"ce": 2.0, "fiser": 1.0}, amp=False, seed=0, device=torch.device("cpu"),
          config={}, generator_tuner=tuner)
    w = tuner.model.class_predictor.weight.detach().clone()
    gathered = [torch.zeros_like(w) for _ in range(world)]
    dist.all_gather(gathered, w)
    assert torch.equal(gathered[0], gathered[1]), "generator replicas diverged: gradients were not all-reduced"
    dist.destroy_process_group()


@pytest.mark.slow  # ~80 s on a loaded CPU
def test_two_process_ddp_keeps_generator_replicas_in_sync(toy_root, tmp_path):
    import torch.multiprocessing as mp

    from tests.train.ddp import free_port

    mp.spawn(_ddp_worker, args=(2, free_port(), str(toy_root), str(tmp_path)), nprocs=2, join=True)
    assert any(k.startswith(TUNER_NAME) for k in torch.load(tmp_path / "last.pt", weights_only=True)["model"])


@pytest.mark.slow  # ~30 s: two stage mains on a loaded CPU
def test_train_stage_with_tune_generator_then_proposals_from_the_tuned_generator(toy_root, tmp_path, monkeypatch):
    import json
    from pathlib import Path

    import yaml

    import stages.proposals as proposals_stage
    import stages.train as train_stage
    from stages.common import run

    repo = Path(__file__).resolve().parents[2]
    bb = tmp_path / "backbones"
    bb.mkdir()
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    torch.save(clip.state_dict(), bb / "clip.pt")
    build_mask2former("fovseg-tiny", 64, random_init=True).save_pretrained(bb / "mask2former")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["root"] = str(toy_root)
    params["model"]["tune_generator"] = True
    params["train"].update(iterations=2, warmup_iters=0, batch_size=2, crop_size=64, checkpoint_every=2,
                           mask_source="proposals", eval_every=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # unreachable: tracking off, fast
    # no proposal store exists: the tuned run classifies the generator's live proposals instead
    metrics = run(train_stage.main, train_stage.build_parser(),
                  ["--backbones", str(bb), "--proposals", "outputs/proposals/none", "--checkpoints",
                   "outputs/checkpoints", "--out", "outputs/train", "--metrics", "metrics/train.json",
                   "--curve", "metrics/train_curve.csv", "--eval-proposals", "outputs/proposals/none",
                   "--eval-curve", "metrics/train_eval.csv", "--timings", "metrics/timings/train.json"])
    assert metrics["loss_generator"] > 0
    saved = torch.load(tmp_path / "outputs/train/last.pt", weights_only=True)["model"]
    assert not any(k.startswith(TUNER_NAME) for k in saved)
    tuned = tmp_path / "outputs/train/mask2former"
    assert (tuned / "config.json").is_file()
    stats = run(proposals_stage.main, proposals_stage.build_parser(),
                ["--benchmark", "toy_val", "--backbones", str(bb), "--generator", str(tuned), "--out", "props",
                 "--metrics", "props.json", "--timings", "props_timings.json"])
    assert stats["images"] == 6
    assert json.loads((tmp_path / "props/meta.json").read_text())["generator"] == str(tuned)
