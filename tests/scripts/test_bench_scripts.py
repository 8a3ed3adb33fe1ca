"""Benchmark scripts run at a tiny size (figures come from the scripts, not from these tests)."""
import pytest
import torch

from pipeline.scripts import bench_classifier, bench_gpu


def test_bench_classifier_runs_at_a_non_native_size_and_interleaves():
    """The plain-CLIP baseline used to crash off its native grid (--size 448 with ViT-B-16)."""
    r = bench_classifier.run("fovseg-tiny", size=96, proposals=4, repeats=2)  # native grid is 64 px
    assert set(r) == {"clip", "fovseg_150", "fovseg_847"} and all(len(v) == 2 and min(v) > 0 for v in r.values())


def test_plain_clip_at_size_matches_the_interpolated_tower():
    from models.classifier import FOVSeg
    from models.clip_backbone import build_clip
    from models.mask_encoder import TevaConfig

    torch.manual_seed(0)
    clip, _ = build_clip("fovseg-tiny", allow_random=True)
    model = FOVSeg(bench_classifier.copy.deepcopy(clip), TevaConfig(False), adapter_layers=0).eval()
    plain = bench_classifier.clip_at_size(clip, model, 96).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ours = model.visual(x, torch.zeros(1, 0, 48, 48))["image_embeds"]
        assert torch.allclose(plain.encode_image(x), ours, atol=1e-4)


def test_bench_gpu_tiny_on_cpu(tmp_path):
    out = bench_gpu.main(["--tiny", "--device", "cpu", "--repeats", "1", "--train-steps", "1",
                          "--json", str(tmp_path / "g.json")])
    assert [r["classes"] for r in out["inference"]] == list(bench_gpu.TINY.classes)
    assert all(r["fps"] > 0 and r["peak_memory_gb"] is None for r in out["inference"])
    assert out["training"]["iterations_per_s"] > 0 and out["training"]["batch"] == bench_gpu.TINY.train_batch
    assert (tmp_path / "g.json").is_file() and out["merge_device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_gpu_tiny_on_cuda_bf16():
    out = bench_gpu.main(["--tiny", "--device", "cuda", "--precision", "bf16", "--repeats", "2", "--train-steps", "2"])
    assert all(r["peak_memory_gb"] > 0 for r in out["inference"]) and out["training"]["peak_memory_gb"] > 0
    on_cpu = bench_gpu.main(["--tiny", "--device", "cuda", "--merge-device", "cpu", "--repeats", "2",
                             "--skip-training"])
    assert on_cpu["merge_device"] == "cpu" and all(r["merging_s"] > 0 for r in on_cpu["inference"])
