"""One sweep trial: the pipeline's own functions (compute_proposals, run_training, evaluate_benchmark) for one
grid row and seed, in the trial's own folder, reading the shared backbones and proposals."""
from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config import Params, to_dict
from pipeline.data.formats import write_metrics
from pipeline.sweep.grids import trial_params

# what a trial reports per benchmark (the evaluate stage's headline names) and from training
EVAL_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ_seen", "PQ_unseen", "mIoU", "mIoU_seen", "mIoU_unseen")
# (classifier, masks) of a grid row's evaluation -> the evaluate stage's variant name
VARIANT = {("trained", "proposals"): "trained", ("trained", "oracle"): "oracle_generator",
           ("untrained", "proposals"): "baseline", ("untrained", "oracle"): "baseline_oracle_generator"}


@dataclass(frozen=True)
class SharedInputs:
    """Read-only inputs every trial shares (paths on the trial's node), plus the shared proposal cache for other
    generators. The driver sends them relative to the shared root (pipeline.sweep.ray_cluster.portable)."""

    PATHS: ClassVar[tuple[str, ...]] = ("backbones", "proposals_root", "proposal_cache")
    backbones: str
    proposals_root: str  # <bench>/ subfolders computed with the base generator
    proposal_cache: str  # <generator key>/<bench>/ for rows that change the generator
    base_generator_key: str = ""


def generator_key(params: Params) -> str:
    blob = json.dumps({"generator": to_dict(params.backbones.generator), "proposals": to_dict(params.proposals)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def proposals_for(params: Params, bench: str, shared: SharedInputs) -> Path:
    """The benchmark's proposal store for this trial's generator: the shared one, or computed once into the
    shared cache (a file lock keeps concurrent trials of the same generator from computing it twice)."""
    key = generator_key(params)
    if key == shared.base_generator_key:
        return Path(shared.proposals_root) / bench
    out = Path(shared.proposal_cache) / key / bench
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{bench}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "meta.json").is_file():
            _compute_proposals(params, bench, shared.backbones, out)
    return out


def _compute_proposals(params: Params, bench: str, backbones: str, out: Path, generator_dir: str = "") -> None:
    from pipeline.build.proposals import compute_proposals
    from pipeline.device import pick_device

    downsample = params.proposals.train_downsample if bench == params.data.train_benchmark else 1
    stats = compute_proposals(bench, data_root=params.data.root, generator=params.backbones.generator,
                              proposals=params.proposals, backbones_dir=backbones, out_dir=out,
                              device=pick_device(params.device), generator_dir=generator_dir, downsample=downsample)
    write_metrics(out.parent / f"{bench}.proposals.json", stats)


def _tuned_generator_proposals(params: Params, bench: str, shared: SharedInputs, trial_dir: Path) -> Path:
    """Proposals of the generator this trial trained (``model.tune_generator``, Table IV(b)), in the trial."""
    out = trial_dir / "proposals" / bench
    if not (out / "meta.json").is_file():
        _compute_proposals(params, bench, shared.backbones, out, generator_dir=str(trial_dir / "mask2former"))
    return out


def _train(params: Params, shared: SharedInputs, trial_dir: Path, train_proposals: Path | None) -> tuple[dict, Path]:
    """The train stage's function, resuming from ``trial_dir/checkpoints``; returns (numeric train metrics,
    model checkpoint path)."""
    from pipeline.device import init_seed_and_device
    from pipeline.train.run import run_training

    device = init_seed_and_device(params.seed, params.device)
    metrics = run_training(data=params.data, clip=params.backbones.clip, model=params.model, train=params.train,
                           generator=params.backbones.generator, proposals=params.proposals,
                           evaluate=params.evaluate, seed=params.seed,
                           device=device, backbones_dir=shared.backbones,
                           proposals_dir=train_proposals, checkpoints_dir=trial_dir / "checkpoints",
                           out_dir=trial_dir, curve_path=trial_dir / "train_curve.csv")
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return numeric, trial_dir / "last.pt"


def _evaluate(params: Params, bench: str, backbones: str, checkpoint: Path | None, proposals: Path | None,
              pred_dir: Path, variant: str) -> dict:
    """The evaluate stage's function for the one ``variant`` a row asks for."""
    from pipeline.device import pick_device
    from pipeline.eval.loop import evaluate_benchmark

    return evaluate_benchmark(bench, data=params.data, clip=params.backbones.clip, model=params.model,
                              evaluate=params.evaluate, seed=params.seed, device=pick_device(params.device),
                              backbones_dir=backbones, checkpoint=checkpoint, proposals_dir=proposals,
                              predictions_dir=pred_dir, variants=(variant,))


def run_trial(params: Params, overrides: dict[str, Any], trial_dir: Path, shared: SharedInputs, *,
              benchmarks: list[str] | tuple[str, ...], evaluation: dict[str, str] | None = None) -> dict:
    """One trial, end to end: ``params`` with ``overrides`` (dotted keys, seed included); train (unless the
    row evaluates the untrained classifier), then evaluate on ``benchmarks``. Returns
    ``{"<bench>/<metric>": value, "train/<loss>": value, ...}``; writes only in ``trial_dir`` (and, for a
    generator other than the base one, its proposals into the shared cache)."""
    params = trial_params(params, overrides, f"trial {trial_dir.name}")
    evaluation = evaluation or {}
    trial_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    checkpoint = None
    if evaluation.get("classifier", "trained") == "trained":
        train_props = proposals_for(params, params.data.train_benchmark, shared) \
            if params.train.mask_source != "gt" else None
        train_metrics, checkpoint = _train(params, shared, trial_dir, train_props)
        metrics.update({f"train/{k}": float(v) for k, v in train_metrics.items()})
    variant = VARIANT[(evaluation.get("classifier", "trained"), evaluation.get("masks", "proposals"))]
    for bench in benchmarks:
        props = proposals_for(params, bench, shared) if evaluation.get("masks", "proposals") == "proposals" else None
        if props is not None and checkpoint is not None and params.model.tune_generator:
            props = _tuned_generator_proposals(params, bench, shared, trial_dir)
        result = _evaluate(params, bench, shared.backbones, checkpoint, props, trial_dir / "predictions" / bench,
                           variant)
        write_metrics(trial_dir / "metrics" / f"{bench}.json", {k: result[k] for k in EVAL_METRICS if k in result})
        metrics.update({f"{bench}/{k}": float(result[k]) for k in EVAL_METRICS if k in result})
    write_metrics(trial_dir / "metrics.json", metrics)
    return metrics


