"""Stage `attention`: Fig. 6 maps (original CLIP vs trained) for the first ``benchmark.attention_images`` images
of a benchmark, with the classes of each image's ground truth (at most ``--max-classes``, unseen classes first); an
input of the report."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Params
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.registry import benchmark_vocabulary, dataset_root, get_benchmark
from pipeline.data.vocab import Vocabulary
from pipeline.device import init_seed_and_device
from stages.common import parser, run


def image_classes(sample, vocab: Vocabulary, seen: set[str], limit: int) -> list[int]:
    """Labels in the image's ground truth, unseen-in-training classes first."""
    labels = [s.label for s in sample.segments] if sample.segments else \
        [int(v) for v in set(sample.semantic.ravel().tolist()) if v != sample.ignore_label]
    labels = list(dict.fromkeys(labels))
    labels.sort(key=lambda k: vocab.classes[k].name in seen)
    return labels[:limit]


def main(args, params: Params) -> dict:
    import matplotlib.pyplot as plt  # matplotlib: imported for the work, not for --help

    from pipeline.eval.attention import attention_figure, load_models

    device = init_seed_and_device(params.seed, params.device)
    ds = BenchmarkDataset(get_benchmark(args.benchmark), dataset_root(params.data.root or None))
    seen = set(benchmark_vocabulary(get_benchmark(params.data.train_benchmark)).names)
    models = load_models(params, args.backbones, args.checkpoint, ds.vocab, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i in range(min(params.benchmark.attention_images, len(ds))):
        sample = ds[i]
        labels = image_classes(sample, ds.vocab, seen, args.max_classes)
        sub = {k: (m, t[labels]) for k, (m, t) in models.items()}
        names = [ds.vocab.classes[k].name + ("" if ds.vocab.classes[k].name in seen else " *") for k in labels]
        fig = attention_figure(sub, sample.image, names, params, title=f"{args.benchmark} {sample.image_id} "
                                                                       "(* = unseen in training)")
        file = f"{args.benchmark}_{sample.image_id}.png"
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        index.append({"file": file, "image": sample.image_id, "classes": names})
    (out / "index.json").write_text(json.dumps({"benchmark": args.benchmark, "images": index}, indent=2))
    return {"images": len(index)}


def build_parser():
    ap = parser(__doc__, "benchmark", "backbones", "checkpoint", "out")
    ap.add_argument("--max-classes", type=int, default=4)
    return ap


if __name__ == "__main__":
    run(main, build_parser())
