"""The params schema: frozen pydantic models, one per params.yaml section, with every default value and bound.

Every default value is written here, once: ``params.yaml`` is this schema rendered for the toy preset
(:func:`pipeline.presets.render_params`; a test keeps them equal) and the presets (``pipeline/presets/<name>.yaml``)
override only the keys they change. Reading and validating a params file: :mod:`pipeline.params_file`.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

MAX_SEED = 2**63 - 1  # torch.manual_seed's range
Precision = Literal["fp32", "bf16", "auto"]


def _as_tuple(value: Any) -> Any:
    """YAML lists become tuples (frozen params); anything else is left for the type check to refuse."""
    return tuple(value) if isinstance(value, list) else value


def Seq(item: Any) -> Any:  # noqa: N802 - a type alias factory
    """A YAML list of ``item`` (kept as a tuple)."""
    return Annotated[tuple[item, ...], BeforeValidator(_as_tuple)]


class Section(BaseModel):
    """A params section: frozen, unknown keys refused, no type coercion (``"1"`` is not a number, ``1`` not a
    boolean)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


def _check_template(template: str, key: str) -> None:
    """A prompt template holds exactly one ``{}`` (filled with the class name) and no other field."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{key}: {template!r} is not a valid template ({exc}); write the class name "
                         "placeholder as {} and double other braces ({{ }})") from None
    _check(fields == [""], key, f"{template!r} must contain exactly one '{{}}' placeholder (the class name) "
                                "and no other {...} field")


# ----------------------------------------------------------------------------- sections
class RuntimeParams(Section):
    threads: int = Field(0, ge=0, le=1024, description="CPU threads per stage process; 0 = torch's default")


class ToyWorldParams(Section):
    """Sizes of the generated shapes world (see pipeline.data.toy)."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    image_size: int = Field(96, ge=32, le=1024)
    n_train: int = Field(480, ge=1, le=1_000_000)
    n_val: int = Field(256, ge=1, le=1_000_000, description="256 evaluation images: a PQ resampling error well "
                                                             "under the ablation gaps")
    n_open: int = Field(256, ge=1, le=1_000_000)
    n_captions: int = Field(12000, ge=1, le=10_000_000)
    max_things: int = Field(3, ge=1, le=12)


class DataParams(Section):
    root: str = Field("", description='"" = $DETECTRON2_DATASETS, else datasets/')
    train_benchmark: str = "toy_train"
    eval_benchmarks: Seq(str) = ("toy_val", "toy_open", "toy_open_large")
    download: Seq(str) = Field(("toy",), description="datasets the download stage fetches or verifies")
    toy: ToyWorldParams = Field(default_factory=ToyWorldParams)

    @model_validator(mode="after")
    def _known_names(self) -> DataParams:
        from pipeline.data.registry import BENCHMARKS, DOWNLOADABLE

        _check(self.train_benchmark in BENCHMARKS, "train_benchmark",
               f"unknown benchmark {self.train_benchmark!r}; valid: {sorted(BENCHMARKS)}")
        _check(len(self.eval_benchmarks) >= 1, "eval_benchmarks", "needs at least one benchmark")
        for name in self.eval_benchmarks:
            _check(name in BENCHMARKS, "eval_benchmarks", f"unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)}")
        _check(len(set(self.eval_benchmarks)) == len(self.eval_benchmarks), "eval_benchmarks", "lists a benchmark "
               "twice")
        for name in self.download:
            _check(name in DOWNLOADABLE, "download", f"unknown dataset {name!r}; valid: {sorted(DOWNLOADABLE)}")
        return self


class PretrainParams(Section):
    """Toy-preset pre-training of a backbone (ignored when weights are fetched)."""

    steps: int = Field(ge=1, le=10_000_000)
    batch_size: int = Field(ge=1, le=65536)
    lr: float = Field(gt=0, lt=1)
    weight_decay: float = Field(ge=0, lt=1)


class ClipPretrainParams(PretrainParams):
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(0.002, gt=0, lt=1)
    weight_decay: float = Field(0.1, ge=0, lt=1)
    precision: Precision = Field("fp32", description="bf16/auto: faster where bf16 is native, another CLIP "
                                                     "(docs/choices.md)")


class GeneratorPretrainParams(PretrainParams):
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=65536)
    lr: float = Field(0.0003, gt=0, lt=1)
    weight_decay: float = Field(0.05, ge=0, lt=1)


class ClipParams(Section):
    model: str = Field("fovseg-tiny", description="an open_clip model name or one of models/configs")
    pretrained: str = Field("", description='open_clip tag or local file; "" = pre-trained on the toy captions '
                                            "by the backbones stage")
    image_size: int = Field(64, ge=16, le=2048, description="classifier input R (R x R); position embeddings "
                                                            "interpolated")
    pretrain: ClipPretrainParams = Field(default_factory=ClipPretrainParams)

    @model_validator(mode="after")
    def _known_model(self) -> ClipParams:
        import models  # the package only: models/configs holds the local CLIP configs

        local = sorted(p.stem for p in (Path(models.__file__).parent / "configs").glob("*.json"))
        if self.model not in local:
            import open_clip  # ~1 s: only for names that are not ours

            _check(self.model in open_clip.list_models(), "model",
                   f"unknown CLIP model {self.model!r}; local configs: {local}; list the open_clip names with "
                   "`python -c \"import open_clip; print(open_clip.list_models())\"`")
        return self


class GeneratorParams(Section):
    source: Literal["pretrain", "hub"] = Field("pretrain", description="pretrain: the toy Mask2Former of the "
                                                                        "backbones stage; hub: pretrained weights")
    name: str = Field("fovseg-tiny", description="hub id / local folder (source: hub) or a models/configs name")
    image_size: int = Field(96, ge=32, le=2048)
    pretrain: GeneratorPretrainParams = Field(default_factory=GeneratorPretrainParams)


class BackbonesParams(Section):
    clip: ClipParams = Field(default_factory=ClipParams)
    generator: GeneratorParams = Field(default_factory=GeneratorParams)


class ProposalsParams(Section):
    max_proposals: int = Field(16, ge=1, le=1000)
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="sigmoid threshold of the generator's masks")
    min_area: int = Field(16, ge=0, le=10_000_000, description="proposals smaller than this (pixels) are dropped")
    batch_size: int = Field(16, ge=1, le=1024)
    short_side: int = Field(96, ge=32, le=4096, description="generator input: aspect-preserving resize "
                                                            "(paper: 800 / 1333)")
    max_side: int = Field(160, ge=32, le=4096)
    train_downsample: int = Field(1, ge=1, le=16, description="the training split's masks at 1/N resolution "
                                                              "(max-pooled; what the mask grid needs)")

    @model_validator(mode="after")
    def _sides(self) -> ProposalsParams:
        _check(self.short_side <= self.max_side, "short_side", f"{self.short_side} must be <= max_side "
               f"({self.max_side})")
        return self


class TevaParams(Section):
    target_attention: bool = Field(True, description="TeVA: mask tokens x target-class text embeddings (g_q, g_k, "
                                                     "g_v; eqs. 9-10) before the image step")
    form: Literal["replace", "residual"] = Field("residual", description="replace: [MASK^] is f_q's input (eqs. "
                                                 "7-10, random g; paper); residual: [MASK] + TeVA, starts as MaskCLIP")
    train_targets: Literal["image", "vocabulary"] = Field("image", description="[TGT] in training: each image's "
                                                                              "classes | the vocabulary")
    width: int = Field(0, ge=0, le=65536, description="g_q/g_k/g_v width; 0 = CLIP's width, else a bottleneck")
    shared: bool = Field(False, description="one set of g projections shared by all blocks")


class FiserParams(Section):
    enabled: bool = True
    variant: Literal["text_encoder", "embedding"] = Field("text_encoder", description="eq. 2 through CLIP's "
                                                                                     "text encoder | ablation")
    candidates: Literal["image", "vocabulary"] = Field("image", description="eq. 6's softmax: the image's K "
                                                                            "classes | every class")
    layers: int = Field(2, ge=1, le=12, description="Predictor depth")
    heads: int = Field(4, ge=1, le=64)


class ModelParams(Section):
    teva: TevaParams = Field(default_factory=TevaParams)
    adapter_layers: int = Field(2, ge=0, le=3, description="Distribution Adapter convs (Table IV(f)): TeVA's "
                                                           "mask reweighting; 0 = MaskCLIP's binary mask")
    adapter_channels: int = Field(16, ge=1, le=4096)
    fiser: FiserParams = Field(default_factory=FiserParams)
    trainable: str = Field("q", description="CLIP weights that train: q, k, v, q+k, q+v, q+k+v, mlp, all, "
                                            "lora:<rank>")
    tune_text: bool = Field(False, description="Table IV(b): train the text tower too")
    tune_generator: bool = Field(False, description="Table IV(b): train the mask generator online")
    templates: Seq(str) = Field(("a photo of a {}.", "a {} on the ground.", "there is a {} in the scene."),
                                description="prompt templates, averaged ({} = the class name)")
    synonyms: bool = Field(True, description="every synonym of a class (averaged) | only its name")

    @model_validator(mode="after")
    def _selection_and_templates(self) -> ModelParams:
        from models.trainable import SELECTIONS, parse_selection

        try:
            parse_selection(self.trainable)
        except ValueError as exc:
            raise ValueError(f"trainable: {exc}; valid: {SELECTIONS} or lora:<rank>") from None
        _check(len(self.templates) >= 1, "templates", "needs at least one template with a '{}' placeholder")
        for i, template in enumerate(self.templates):
            _check_template(template, f"templates[{i}]")
        return self


class LossWeights(Section):
    fiser: float = Field(1.0, ge=0, le=1000, description="lambda_FiSeR (eq. 12)")
    ce: float = Field(2.0, ge=0, le=1000, description="lambda_CE (eq. 12)")
    generator: float = Field(1.0, ge=0, le=1000, description="Mask2Former's own loss (model.tune_generator)")


class MatchWeights(Section):
    """Mask2Former's HungarianMatcher costs (MaskCLIP's COCO config)."""

    class_weight: float = Field(2.0, ge=0, le=1000)
    mask_weight: float = Field(5.0, ge=0, le=1000, description="sigmoid BCE on sampled points")
    dice_weight: float = Field(5.0, ge=0, le=1000, description="dice on sampled points")
    points: int = Field(12544, ge=1, le=10_000_000, description="points sampled per image (112 x 112)")


class TrainParams(Section):
    iterations: int = Field(1000, ge=1, le=100_000_000)
    batch_size: int = Field(8, ge=1, le=65536, description="the global batch (split over train.gpus)")
    lr: float = Field(0.001, gt=0, lt=1)
    weight_decay: float = Field(0.05, ge=0, lt=1)
    backbone_lr_mult: float = Field(1.0, ge=0, le=10, description="lr factor of CLIP's own weights (paper 0.1; "
                                                                  "the toy's 1k iterations are short)")
    warmup_iters: int = Field(20, ge=0, le=100_000_000)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    clip_grad_norm: float = Field(0.0, ge=0, le=1e6, description="> 0: clip the L2 norm of all gradients "
                                                                  "(MaskCLIP: 0.01); 0 = off")
    lsj_min_scale: float = Field(0.5, gt=0, le=10)
    lsj_max_scale: float = Field(1.5, gt=0, le=10)
    crop_size: int = Field(96, ge=16, le=8192)
    checkpoint_every: int = Field(100, ge=1, le=100_000_000)
    eval_every: int = Field(250, ge=0, le=100_000_000, description="evaluate on eval_benchmark every N iterations "
                                                                   "(best.pt, a curve); 0 = never")
    eval_benchmark: str = Field("toy_open", description="one of data.eval_benchmarks")
    eval_images: int = Field(64, ge=0, le=1_000_000, description="its first N images; 0 = all")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 where native)")
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    assignment: Literal["hungarian", "iou"] = Field("iou", description="proposal targets: bipartite matching "
                                                    "(MaskCLIP; paper presets) | IoU >= assign_iou (several per "
                                                    "segment)")
    match: MatchWeights = Field(default_factory=lambda: MatchWeights())
    no_object_weight: float = Field(0.0, ge=0, le=1, description="CE weight of unmatched proposals' no-object "
                                                                 "target (MaskCLIP's COCO config: 0.0)")
    no_object_text: str = Field("other", min_length=1, description="the no-object class appended to the training "
                                                                   "vocabulary (MaskCLIP: 'other')")
    assign_iou: float = Field(0.5, gt=0, le=1, description="assignment: iou: the IoU a proposal needs to learn a "
                                                           "segment's class")
    decay_exempt: Literal["norm+embed", "1d"] = Field("norm+embed", description="no weight decay for: norms and "
                                                      "embeddings (MaskCLIP) | every 1-D parameter")
    mask_source: Literal["proposals", "gt", "both"] = "both"
    max_masks: int = Field(24, ge=1, le=10000)
    num_workers: int = Field(0, ge=0, le=256)
    log_every: int = Field(10, ge=1, le=100_000_000)
    gpus: int = Field(1, ge=1, le=64, description="> 1: torchrun through `dvc repro`")
    data_fraction: float = Field(1.0, gt=0, le=1, description="a fixed subset of the training images (Fig. 9)")

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        _check(self.warmup_iters <= self.iterations, "warmup_iters",
               f"{self.warmup_iters} must be <= iterations ({self.iterations}): a warmup longer than training "
               "never reaches the lr")
        _check(self.lsj_min_scale <= self.lsj_max_scale, "lsj_min_scale",
               f"{self.lsj_min_scale} must be <= lsj_max_scale ({self.lsj_max_scale})")
        _check(self.batch_size % self.gpus == 0, "batch_size",
               f"{self.batch_size} (the global batch) must divide by gpus ({self.gpus}): each GPU takes "
               "batch_size / gpus images")
        return self


class EvaluateParams(Section):
    test_short_side: int = Field(64, ge=16, le=4096, description="paper: 800")
    test_max_side: int = Field(107, ge=16, le=8192, description="paper: 1333")
    object_threshold: float = Field(0.3, ge=0, lt=1, description="panoptic merging: minimum segment score")
    score: Literal["class", "objectness_x_class"] = Field("objectness_x_class", description="segment score: "
                                                          "class prob. (MaskCLIP; paper) | x generator objectness")
    classifier_input: Literal["square", "aspect"] = Field("square", description="classifier sees the image squashed "
                                                          "to R x R (MaskCLIP) | the test resize, aspect kept")
    overlap_threshold: float = Field(0.6, gt=0, le=1, description="panoptic merging: kept fraction of a mask")
    max_images: int = Field(0, ge=0, le=100_000_000, description="0 = all")
    checkpoint: Literal["last", "best"] = Field("last", description="which trained weights the evaluate stage "
                                                                    "scores (paper protocol: last)")

    @model_validator(mode="after")
    def _sides(self) -> EvaluateParams:
        _check(self.test_short_side <= self.test_max_side, "test_short_side",
               f"{self.test_short_side} must be <= test_max_side ({self.test_max_side})")
        return self


class BenchmarkParams(Section):
    n_images: int = Field(8, ge=1, le=100_000)
    n_proposals: int = Field(100, ge=1, le=1000)
    repeats: int = Field(3, ge=1, le=100, description="timing runs per benchmark (alternated)")
    attention_images: int = Field(3, ge=1, le=1000, description="images of small_vocab the attention stage draws")
    small_vocab: str = "toy_open"
    large_vocab: str = "toy_open_large"


class TrackingParams(Section):
    experiment: str = Field("fovseg-toy", min_length=1, max_length=200, description="MLflow experiment name")

    @model_validator(mode="after")
    def _visible_name(self) -> TrackingParams:
        """A name that shows in the MLflow UI as written: not blank, no newline/tab/control character, no
        leading or trailing spaces (they would silently make a second, look-alike experiment)."""
        name = self.experiment
        _check(name.strip() != "", "experiment", f"{name!r} is blank; give a visible MLflow experiment name, "
                                                 "e.g. fovseg-toy")
        bad = next((c for c in name if not c.isprintable()), None)
        _check(bad is None, "experiment", f"{name!r} contains the control character {bad!r} (a newline, tab, ...); "
                                          "write the name on one line")
        _check(name == name.strip(), "experiment", f"{name!r} has leading or trailing spaces; write "
                                                   f"{name.strip()!r}")
        return self


class SweepParams(Section):
    grids: Seq(str) = Field(("modules",), description="grids `dvc repro` runs (stage sweep@<grid>); "
                                                      "pipeline/sweep/grids/")
    seeds: Seq(int) = Field((0, 1), min_length=1)
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0, le=64)
    num_cpus: int = Field(0, ge=0, le=4096, description="CPUs of a local Ray instance; 0 = all")
    max_concurrent: int = Field(0, ge=0, le=100_000, description="0 = as many as the resources allow")
    max_failures: int = Field(1, ge=0, le=100, description="retries of a trial that raised")

    @model_validator(mode="after")
    def _seeds(self) -> SweepParams:
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "lists a seed twice")
        for s in self.seeds:
            _check(0 <= s <= MAX_SEED, "seeds", f"{s} must be in [0, {MAX_SEED}]")
        return self


class Params(Section):
    preset: Literal["toy", "paper"] = Field("toy", description="which grids rows and report tables apply")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)
    data: DataParams = Field(default_factory=DataParams)
    backbones: BackbonesParams = Field(default_factory=BackbonesParams)
    proposals: ProposalsParams = Field(default_factory=ProposalsParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    sweep: SweepParams = Field(default_factory=SweepParams)

    @model_validator(mode="after")
    def _benchmark_vocabularies(self) -> Params:
        _check(self.train.eval_every == 0 or self.train.eval_benchmark in self.data.eval_benchmarks,
               "train.eval_benchmark", f"{self.train.eval_benchmark!r} must be one of data.eval_benchmarks "
               f"{list(self.data.eval_benchmarks)} (its proposals are computed there)")
        _check(self.evaluate.checkpoint == "last" or self.train.eval_every > 0, "evaluate.checkpoint",
               "'best' needs train.eval_every > 0 (the best checkpoint comes from the periodic evaluation)")
        for key in ("small_vocab", "large_vocab"):
            _check(getattr(self.benchmark, key) in self.data.eval_benchmarks, f"benchmark.{key}",
                   f"{getattr(self.benchmark, key)!r} must be one of data.eval_benchmarks "
                   f"{list(self.data.eval_benchmarks)} (its proposals are computed there)")
        return self


def to_dict(obj: Any) -> Any:
    """Plain-python view of a params object (tuples become lists) for json/yaml/mlflow."""
    return obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj


def override(params: Section, dotted: dict[str, Any]) -> Any:
    """A copy of ``params`` with dotted keys set (``{"train.lr": 1e-4}``), validated again."""
    data = to_dict(params)
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return type(params).model_validate(data)
