"""Item 9 (Table III): COCO-Stuff preparation from raw stuffthingmaps, loading, semantic-only training."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig
from models.trainable import select_trainable
from pipeline.data.coco_stuff import prepare_coco_stuff, raw_to_train_id_lut
from pipeline.data.formats import DatasetError, read_label_map
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.prepare import DATASETS
from pipeline.data.registry import get_benchmark
from pipeline.data.semantic import with_class_segments
from pipeline.presets import preset_params
from pipeline.train.data import TrainSet
from tests.conftest import run_recipe

REPO = Path(__file__).resolve().parents[2]


def _raw_map(h: int, w: int, shift: int) -> np.ndarray:
    """Raw values (category id - 1): person(0), banner(91), wood(181), unused id 12 (11), unlabeled (255)."""
    raw = np.full((h, w), 255, np.uint8)
    raw[: h // 2, : w // 2] = 0
    raw[: h // 2, w // 2:] = 91
    raw[h // 2:, : w // 2] = 181
    raw[h // 2:, w // 2 + shift:] = 11
    return raw


@pytest.fixture()
def stuff_root(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train2017", "val2017"):
        for k in range(3):
            stem = f"{k + 1:012d}"
            (tmp_path / "coco" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "coco/stuffthingmaps" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
                tmp_path / "coco" / split / f"{stem}.jpg")
            Image.fromarray(_raw_map(40, 56, k)).save(tmp_path / "coco/stuffthingmaps" / split / f"{stem}.png")
    return tmp_path


def test_lut_maps_182_raw_ids_to_171_contiguous_ids():
    lut = raw_to_train_id_lut()
    assert (lut != 255).sum() == 171
    assert sorted(lut[lut != 255].tolist()) == list(range(171))
    assert lut[0] == 0 and lut[91] == 80 and lut[181] == 170  # person, banner (first stuff), wood (last)
    assert lut[11] == 255 and lut[255] == 255  # COCO id 12 is unused; unlabeled stays ignore


def test_prepare_writes_the_detectron2_layout_and_is_idempotent(stuff_root):
    counts = prepare_coco_stuff(stuff_root)
    assert counts == {"coco_stuff_train2017_maps": 3, "coco_stuff_val2017_maps": 3}
    lab = read_label_map(stuff_root / "coco/stuffthingmaps_detectron2/val2017/000000000001.png")
    assert lab[0, 0] == 0 and lab[0, -1] == 80 and lab[-1, 0] == 170 and lab[-1, -1] == 255
    assert set(np.unique(lab).tolist()) == {0, 80, 170, 255}
    assert prepare_coco_stuff(stuff_root) == {"coco_stuff_train2017_maps": 0, "coco_stuff_val2017_maps": 0}
    assert DATASETS["coco_stuff"].prepare is prepare_coco_stuff


def test_missing_or_bad_raw_maps_name_the_file(tmp_path, stuff_root):
    with pytest.raises(DatasetError, match="stuffthingmaps_trainval2017.zip"):
        prepare_coco_stuff(tmp_path / "empty")
    bad = stuff_root / "coco/stuffthingmaps/train2017/000000000009.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bad)
    with pytest.raises(DatasetError, match="000000000009.png"):
        prepare_coco_stuff(stuff_root)


def test_benchmark_loads_semantic_only_and_yields_one_segment_per_class(stuff_root):
    prepare_coco_stuff(stuff_root)
    ds = BenchmarkDataset(get_benchmark("coco_stuff_val"), stuff_root)
    assert len(ds) == 3 and len(ds.vocab) == 171 and ds.bench.task == "semantic"
    s = ds[0]
    assert s.id_map is None and s.semantic.shape == (40, 56)
    seg = with_class_segments(s, ds.vocab)
    masks, labels = seg.segment_masks()
    assert sorted(labels.tolist()) == [0, 80, 170]
    for m, c in zip(masks, labels):
        assert np.array_equal(m, s.semantic == c)
    assert {x.label: x.isthing for x in seg.segments} == {0: True, 80: False, 170: False}
    assert seg.id_map[s.semantic == 255].max() == 0  # ignore -> void
    assert with_class_segments(seg, ds.vocab) is seg  # panoptic samples pass through


def test_training_smoke_on_semantic_only_data(stuff_root, tmp_path):
    prepare_coco_stuff(stuff_root)
    ds = BenchmarkDataset(get_benchmark("coco_stuff_train"), stuff_root)
    ts = TrainSet(ds, None, 32, 0.8, 1.2, "gt", 8, image_size=64, grid=32)
    item = ts.load(0, np.random.default_rng(0))
    assert item["image"].shape[-2:] == (64, 64) and len(item["masks"]) >= 1
    labels, classes = item["gt_labels"].tolist(), item["classes"]
    assert set(labels) <= {0, 80, 170} and set(classes) <= {0, 80, 170} and classes
    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "q")
    text = F.normalize(torch.randn(len(ds.vocab), model.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run_recipe(model, ts, lambda: text, out_dir=tmp_path / "ck", iterations=2, batch_size=2, lr=1e-3,
                weight_decay=0.05, backbone_lr_mult=0.1, warmup_iters=0, schedule="constant", checkpoint_every=2,
                loss_weights={"ce": 2.0, "fiser": 1.0}, amp=False, seed=0, device=torch.device("cpu"),
                config={"t": 1})
    assert len(out["history"]) == 2 and all(np.isfinite(r["loss"]) and r["loss_ce"] > 0 for r in out["history"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_paper_coco_stuff_preset_is_the_paper_preset_trained_on_coco_stuff():
    params = preset_params("paper_coco_stuff")
    assert params.data.train_benchmark == "coco_stuff_train"
    assert set(params.data.eval_benchmarks) == {"ade20k_150", "ade20k_847", "pascal_ctx_59", "pascal_ctx_459"}
    paper = preset_params("paper")
    same = params.model_copy(update={"data": paper.data, "tracking": paper.tracking})
    assert same == paper, "the COCO-Stuff preset drifted from paper.yaml beyond data and tracking"
    raw = yaml.safe_load((REPO / "pipeline/presets/paper_coco_stuff.yaml").read_text())
    assert "coco_stuff" in raw["data"]["download"]


def test_download_spec_fetches_extracts_and_prepares_from_a_loopback_server(tmp_path):
    """The coco_stuff spec as shipped (archive names, extraction targets), URLs pointed at 127.0.0.1."""
    import functools
    import io
    import threading
    import zipfile
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.data.prepare import fetch_dataset

    def png(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    def jpg():
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(buf, format="JPEG")
        return buf.getvalue()

    members = {  # the public archives' top-level layout: {train,val}2017/<stem>.{jpg,png}
        "coco_train2017.zip": {"train2017/000000000001.jpg": jpg()},
        "coco_val2017.zip": {"val2017/000000000002.jpg": jpg()},
        "stuffthingmaps_trainval2017.zip": {"train2017/000000000001.png": png(_raw_map(40, 56, 0)),
                                            "val2017/000000000002.png": png(_raw_map(40, 56, 1))},
    }
    served = tmp_path / "served"
    served.mkdir()
    for name, files in members.items():
        with zipfile.ZipFile(served / name, "w") as zf:
            for k, v in files.items():
                zf.writestr(k, v)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        spec = DATASETS["coco_stuff"]
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        local = dataclasses.replace(spec, sources=tuple(dataclasses.replace(s, url=f"{url}/{s.file}")
                                                        for s in spec.sources))
        root = tmp_path / "root"
        out = fetch_dataset(local, root, {})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert out["coco_stuff_val2017_maps"] == 1 and out["coco_stuff_train2017_maps"] == 1
    s = BenchmarkDataset(get_benchmark("coco_stuff_val"), root)[0]
    assert s.image_id == "000000000002" and set(np.unique(s.semantic).tolist()) == {0, 80, 170, 255}
