"""GPU paths (opt in with `pytest -m gpu` on a CUDA machine): AMP training steps and CUDA memory figures."""
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import no_object_embedding

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker was selected but no CUDA device is visible")
    return torch.device("cuda")


def test_amp_training_steps_on_cuda(cuda, toy_root, tmp_path):
    from models.classifier import FOVSeg
    from models.clip_backbone import build_clip
    from models.mask_encoder import TevaConfig
    from models.trainable import select_trainable
    from pipeline.config import TrainParams
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.registry import get_benchmark
    from pipeline.train.data import TrainSet
    from pipeline.train.recipe import TrainingRecipe

    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1)
    select_trainable(model, "q")
    ds = BenchmarkDataset(get_benchmark("toy_train"), toy_root)
    emb = F.normalize(torch.randn(len(ds.vocab), model.embed_dim), dim=-1).to(cuda)
    cfg = TrainParams(iterations=4, batch_size=4, warmup_iters=0, checkpoint_every=2, crop_size=64, mask_source="gt",
                      max_masks=8, amp=True)
    recipe = TrainingRecipe(model, TrainSet(ds, None, 64, 0.5, 1.5, "gt", 8, image_size=64, grid=32), lambda: emb, cfg,
                            seed=0,
                            device=cuda, checkpoint_dir=tmp_path,
                            no_object_source=lambda: no_object_embedding(model.embed_dim))
    recipe.setup()
    result = recipe.train()
    assert len(result["history"]) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result["history"])


def test_cuda_peak_memory_is_measured(cuda):
    from pipeline.eval.efficiency import peak_memory

    with peak_memory(cuda) as mem:
        x = torch.empty(64, 2**20, device=cuda)  # 256 MiB
        del x
    assert mem["peak_mb"] >= 256


def test_merging_on_cuda_equals_the_cpu(cuda):
    """Evaluation and predict merge proposals on the classifier's device: same maps and segments as the CPU."""
    from models.inference import merge_proposals

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 150, generator=g).softmax(-1)
    masks, obj = torch.rand(40, 96, 128, generator=g) > 0.7, torch.rand(40, generator=g) + 0.5
    is_thing = torch.arange(150) % 3 != 0
    on_cpu = merge_proposals(probs, masks, obj, is_thing, 0.0, 0.5, void_label=255)
    on_gpu = merge_proposals(probs, masks, obj, is_thing, 0.0, 0.5, void_label=255, device=cuda)
    assert on_gpu[0].device.type == "cpu" and (on_cpu[0] == on_gpu[0]).float().mean() > 0.999
    assert torch.equal(on_cpu[1], on_gpu[1]) and on_cpu[2] == on_gpu[2]


def test_evaluation_on_cuda_matches_the_cpu(cuda, toy_root, tmp_path):
    """The evaluation loop with the classifier (and so the merging) on CUDA predicts what the CPU run does."""
    import copy

    import numpy as np

    from models.classifier import FOVSeg
    from models.clip_backbone import build_clip
    from models.mask_encoder import TevaConfig
    from pipeline.build.classifier import ReadyClassifier
    from pipeline.config import EvaluateParams
    from pipeline.data.loaders import BenchmarkDataset
    from pipeline.data.registry import get_benchmark
    from pipeline.eval.loop import DatasetEvaluator, GroundTruthProposals, ModelClassifier, inference_on_dataset

    class Keep(DatasetEvaluator):
        def __init__(self):
            self.maps = []

        def process(self, sample, prediction):
            self.maps.append((prediction.semantic, prediction.id_map, len(prediction.segments)))

    torch.manual_seed(0)
    clip, tokenizer = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(clip, TevaConfig(True), adapter_layers=2, fiser_layers=1).eval()
    ds = BenchmarkDataset(get_benchmark("toy_val"), toy_root)
    kept = {}
    for device in (torch.device("cpu"), cuda):
        ready = ReadyClassifier(copy.deepcopy(model).to(device), tokenizer, "random", "fovseg-tiny",
                                ("a photo of a {}.",), device, cache_dir=tmp_path / device.type)
        kept[device.type] = Keep()
        classifier = ModelClassifier(ready, ds.vocab, EvaluateParams(test_short_side=64, test_max_side=64))
        inference_on_dataset(ds, GroundTruthProposals(), classifier, [kept[device.type]],
                             object_threshold=0.0, overlap_threshold=0.5)
    cpu, gpu = kept["cpu"].maps, kept["cuda"].maps
    assert len(cpu) == len(gpu) == len(ds)
    agree = np.mean([(a[0] == b[0]).mean() for a, b in zip(cpu, gpu)])
    same_segments = np.mean([a[2] == b[2] and (a[1] == b[1]).mean() > 0.99 for a, b in zip(cpu, gpu)])
    assert agree > 0.99 and same_segments >= 0.8, (agree, same_segments)
