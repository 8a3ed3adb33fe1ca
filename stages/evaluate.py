"""Stage `evaluate`: PQ/SQ/RQ and mIoU/fwIoU/mACC/pACC on one benchmark, for the trained model and for the
untrained baseline (the same classifier before training = CLIP zero-shot mask classification)."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.data.loaders import BenchmarkDataset
from pipeline.data.proposal_store import ProposalStore
from pipeline.data.registry import benchmark_vocabulary, dataset_root, get_benchmark
from pipeline.evaluation import evaluate, seen_unseen_groups
from pipeline.modeling import (
    TEXT_CACHE_DIR,
    load_checkpoint_weights,
    prepare_classifier,
    trained_weights_id,
    vocabulary_embeddings,
)
from pipeline.runtime import init_seed_and_device, write_metrics
from stages.common import parser, run, tracker

HEADLINE = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen",
            "fwIoU", "mACC", "pACC")


def load_classifier(params: Params, backbones: str, checkpoint: str | None, vocab, device):
    """The classifier (trained if ``checkpoint``, else as initialised) and its text embeddings of ``vocab``."""
    init_seed_and_device(params.seed, params.device)
    model, tokenizer, weights_id = prepare_classifier(params.backbones.clip, params.model, backbones, device)
    if checkpoint:
        load_checkpoint_weights(model, checkpoint)
        weights_id = trained_weights_id(weights_id, checkpoint, params.model)
    text = vocabulary_embeddings(model, tokenizer, vocab, params.model.templates, TEXT_CACHE_DIR,
                                 params.backbones.clip.model, weights_id, device)
    return model, text


def groups_of(params: Params, benchmark: str) -> dict[str, list[int]]:
    vocab = benchmark_vocabulary(get_benchmark(benchmark))
    return seen_unseen_groups(vocab.names, benchmark_vocabulary(get_benchmark(params.data.train_benchmark)).names)


def main(args, params: Params) -> dict:
    device = init_seed_and_device(params.seed, params.device)
    ev = params.evaluate
    ds = BenchmarkDataset(get_benchmark(args.benchmark), dataset_root(params.data.root or None))
    groups = groups_of(params, args.benchmark)
    store = ProposalStore(args.proposals)

    def score(model, text, proposals, pred_dir=None, oracle_classifier=False) -> dict:
        """``proposals=None``: ground-truth masks (oracle generator); ``oracle_classifier``: gt labels (Fig. 2)."""
        return evaluate(model, ds, text, proposals=proposals, oracle_classifier=oracle_classifier,
                        short_side=ev.test_short_side, max_side=ev.test_max_side,
                        object_threshold=ev.object_threshold, overlap_threshold=ev.overlap_threshold,
                        device=device, groups=groups, pred_dir=pred_dir, max_images=ev.max_images)

    model, text = load_classifier(params, args.backbones, args.checkpoint, ds.vocab, device)
    trained = score(model, text, store, Path(args.predictions))
    oracle_gen = score(model, text, None)
    oracle_cls = score(None, None, store, oracle_classifier=True)
    baseline = score(*load_classifier(params, args.backbones, None, ds.vocab, device), store)
    metrics = {k: trained[k] for k in HEADLINE if k in trained}
    metrics.update({"benchmark": args.benchmark, "images": trained["images"],
                    "skipped_images": trained["skipped_images"], "seconds_per_image": trained["seconds_per_image"],
                    "baseline": {k: baseline[k] for k in HEADLINE if k in baseline},
                    "oracle_classifier": {k: oracle_cls[k] for k in HEADLINE if k in oracle_cls},
                    "oracle_generator": {k: oracle_gen[k] for k in HEADLINE if k in oracle_gen},
                    "per_class": {"class": trained["classes"], "IoU": trained["IoU_per_class"],
                                  "unseen": [i in set(groups["unseen"]) for i in range(len(trained["classes"]))],
                                  "IoU_baseline": baseline["IoU_per_class"],
                                  **({"PQ": trained["PQ_per_class"]} if "PQ_per_class" in trained else {})}})
    write_metrics(args.metrics, metrics)
    with tracker(params, "evaluate", run_name=f"evaluate@{args.benchmark}") as t:
        t.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for model, vals in (("trained", trained), ("baseline", baseline), ("oracle_classifier", oracle_cls),
                            ("oracle_generator", oracle_gen)):  # own runs, identical metric names
            t.log_model_run(model, {k: vals[k] for k in HEADLINE if k in vals}, {"benchmark": args.benchmark})
        t.log_table(metrics["per_class"], f"per_class_{args.benchmark}.json")
    return metrics


def build_parser():
    ap = parser(__doc__)
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--backbones", default="outputs/backbones")
    ap.add_argument("--checkpoint", default="outputs/train/model.pt")
    ap.add_argument("--proposals", required=True)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--metrics", required=True)
    return ap


if __name__ == "__main__":
    run(main, build_parser())
