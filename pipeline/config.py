"""Typed, validated parameters: params.yaml -> frozen dataclasses.

Every section is a dataclass; :func:`load_params` refuses unknown keys, wrong types and
out-of-range values with an error that names the full key path (``train.lr``) and the file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A params file has an unknown key, a wrong type or an out-of-range value."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"{key}: {msg}")


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ToyWorldParams:
    """Sizes of the generated shapes world (see pipeline.data.toy)."""

    seed: int = 0
    image_size: int = 96
    n_train: int = 480
    n_val: int = 64
    n_open: int = 64
    n_captions: int = 12000
    max_things: int = 3

    def validate(self, key: str) -> None:
        _check(32 <= self.image_size <= 1024, f"{key}.image_size", "must be in [32, 1024]")
        for name in ("n_train", "n_val", "n_open", "n_captions"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(1 <= self.max_things <= 12, f"{key}.max_things", "must be in [1, 12]")


@dataclass(frozen=True)
class DataParams:
    root: str = "datasets"  # $DETECTRON2_DATASETS overrides it when set
    train_benchmark: str = "toy_train"
    eval_benchmarks: tuple[str, ...] = ("toy_val", "toy_open", "toy_open_large")
    download: tuple[str, ...] = ("toy",)
    toy: ToyWorldParams = field(default_factory=ToyWorldParams)

    def validate(self, key: str) -> None:
        from pipeline.data.registry import BENCHMARKS, DOWNLOADABLE

        _check(self.train_benchmark in BENCHMARKS, f"{key}.train_benchmark",
               f"unknown benchmark {self.train_benchmark!r}; valid: {sorted(BENCHMARKS)}")
        for name in self.eval_benchmarks:
            _check(name in BENCHMARKS, f"{key}.eval_benchmarks",
                   f"unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)}")
        for name in self.download:
            _check(name in DOWNLOADABLE, f"{key}.download", f"unknown dataset {name!r}; valid: {sorted(DOWNLOADABLE)}")
        self.toy.validate(f"{key}.toy")


@dataclass(frozen=True)
class PretrainParams:
    """Toy-preset pre-training of a backbone (ignored when weights are fetched)."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1

    def validate(self, key: str) -> None:
        _check(self.steps >= 1, f"{key}.steps", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(0 < self.lr < 1, f"{key}.lr", "must be in (0, 1)")
        _check(0 <= self.weight_decay < 1, f"{key}.weight_decay", "must be in [0, 1)")


@dataclass(frozen=True)
class ClipParams:
    model: str = "fovseg-tiny"  # an open_clip model name or one of models/configs
    pretrained: str = ""  # open_clip tag, local checkpoint path, or "" (toy: pre-trained by the pipeline)
    image_size: int = 64  # classifier input size; position embeddings are interpolated
    pretrain: PretrainParams = field(default_factory=PretrainParams)

    def validate(self, key: str) -> None:
        _check(16 <= self.image_size <= 2048, f"{key}.image_size", "must be in [16, 2048]")
        self.pretrain.validate(f"{key}.pretrain")


@dataclass(frozen=True)
class GeneratorParams:
    source: Literal["pretrain", "hub"] = "pretrain"
    name: str = "fovseg-tiny"  # hub id / local dir (source=hub) or a models/configs name (pretrain)
    image_size: int = 96
    pretrain: PretrainParams = field(default_factory=lambda: PretrainParams(steps=400, batch_size=8, lr=3e-4,
                                                                             weight_decay=0.05))

    def validate(self, key: str) -> None:
        _check(self.source in ("pretrain", "hub"), f"{key}.source", "must be 'pretrain' or 'hub'")
        _check(32 <= self.image_size <= 2048, f"{key}.image_size", "must be in [32, 2048]")
        self.pretrain.validate(f"{key}.pretrain")


@dataclass(frozen=True)
class BackbonesParams:
    clip: ClipParams = field(default_factory=ClipParams)
    generator: GeneratorParams = field(default_factory=GeneratorParams)

    def validate(self, key: str) -> None:
        self.clip.validate(f"{key}.clip")
        self.generator.validate(f"{key}.generator")


@dataclass(frozen=True)
class ProposalsParams:
    max_proposals: int = 16
    mask_threshold: float = 0.5
    min_area: int = 16
    batch_size: int = 16

    def validate(self, key: str) -> None:
        _check(1 <= self.max_proposals <= 1000, f"{key}.max_proposals", "must be in [1, 1000]")
        _check(0 < self.mask_threshold < 1, f"{key}.mask_threshold", "must be in (0, 1)")
        _check(self.min_area >= 0, f"{key}.min_area", "must be >= 0")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class TevaParams:
    target_attention: bool = True  # step 1: mask tokens x class text embeddings (g_q, g_k, g_v)
    image_attention: bool = True  # step 2 chained on step 1: masked attention to image tokens (f_q, f_k, f_v)


@dataclass(frozen=True)
class FiserParams:
    enabled: bool = True
    layers: int = 2
    heads: int = 4

    def validate(self, key: str) -> None:
        _check(1 <= self.layers <= 12, f"{key}.layers", "must be in [1, 12]")
        _check(self.heads >= 1, f"{key}.heads", "must be >= 1")


@dataclass(frozen=True)
class ModelParams:
    teva: TevaParams = field(default_factory=TevaParams)
    adapter_layers: int = 2
    adapter_channels: int = 16
    fiser: FiserParams = field(default_factory=FiserParams)
    trainable: str = "q"  # q, k, v, q+k, q+v, q+k+v, mlp, all, lora:<rank>
    tune_text: bool = False
    templates: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "there is a {} in the scene.")

    def validate(self, key: str) -> None:
        from models.trainable import SELECTIONS, parse_selection

        _check(0 <= self.adapter_layers <= 3, f"{key}.adapter_layers", "must be in [0, 3]")
        _check(self.adapter_channels >= 1, f"{key}.adapter_channels", "must be >= 1")
        try:
            parse_selection(self.trainable)
        except ValueError as exc:
            raise ParamsError(f"{key}.trainable: {exc}; valid: {SELECTIONS} or lora:<rank>") from None
        _check(len(self.templates) >= 1 and all("{}" in t for t in self.templates), f"{key}.templates",
               "needs at least one template, each with a '{}' placeholder")
        self.fiser.validate(f"{key}.fiser")


@dataclass(frozen=True)
class LossWeights:
    fiser: float = 1.0
    ce: float = 2.0

    def validate(self, key: str) -> None:
        _check(self.fiser >= 0 and self.ce >= 0, key, "loss weights must be >= 0")


@dataclass(frozen=True)
class TrainParams:
    iterations: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    warmup_iters: int = 20
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    lsj_min_scale: float = 0.5
    lsj_max_scale: float = 1.5
    crop_size: int = 96
    checkpoint_every: int = 100
    amp: bool = True  # used only on CUDA
    loss_weights: LossWeights = field(default_factory=LossWeights)
    assign_iou: float = 0.5  # a proposal learns the class of the gt segment it overlaps by IoU >= this
    mask_source: Literal["proposals", "gt", "both"] = "both"
    max_masks: int = 24
    num_workers: int = 0
    log_every: int = 10

    def validate(self, key: str) -> None:
        _check(self.iterations >= 1, f"{key}.iterations", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(0 < self.lr < 1, f"{key}.lr", "must be in (0, 1)")
        _check(0 <= self.weight_decay < 1, f"{key}.weight_decay", "must be in [0, 1)")
        _check(0 <= self.backbone_lr_mult <= 10, f"{key}.backbone_lr_mult", "must be in [0, 10]")
        _check(self.warmup_iters >= 0, f"{key}.warmup_iters", "must be >= 0")
        _check(self.schedule in ("poly", "cosine", "constant"), f"{key}.schedule", "must be poly, cosine or constant")
        _check(0 < self.lsj_min_scale <= self.lsj_max_scale <= 10, f"{key}.lsj_min_scale",
               "need 0 < lsj_min_scale <= lsj_max_scale <= 10")
        _check(self.crop_size >= 16, f"{key}.crop_size", "must be >= 16")
        _check(self.checkpoint_every >= 1, f"{key}.checkpoint_every", "must be >= 1")
        _check(0 < self.assign_iou <= 1, f"{key}.assign_iou", "must be in (0, 1]")
        _check(self.mask_source in ("proposals", "gt", "both"), f"{key}.mask_source", "must be proposals, gt or both")
        _check(self.max_masks >= 1, f"{key}.max_masks", "must be >= 1")
        _check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")
        _check(self.log_every >= 1, f"{key}.log_every", "must be >= 1")
        self.loss_weights.validate(f"{key}.loss_weights")


@dataclass(frozen=True)
class EvaluateParams:
    test_short_side: int = 96  # paper: 800
    test_max_side: int = 160  # paper: 1333
    object_threshold: float = 0.3  # Mask2Former-style merging thresholds
    overlap_threshold: float = 0.6
    max_images: int = 0  # 0 = all

    def validate(self, key: str) -> None:
        _check(16 <= self.test_short_side <= self.test_max_side, f"{key}.test_short_side",
               "need 16 <= test_short_side <= test_max_side")
        _check(0 <= self.object_threshold < 1, f"{key}.object_threshold", "must be in [0, 1)")
        _check(0 < self.overlap_threshold <= 1, f"{key}.overlap_threshold", "must be in (0, 1]")
        _check(self.max_images >= 0, f"{key}.max_images", "must be >= 0")


@dataclass(frozen=True)
class BenchmarkParams:
    n_images: int = 8
    n_proposals: int = 100
    small_vocab: str = "toy_open"
    large_vocab: str = "toy_open_large"

    def validate(self, key: str) -> None:
        _check(self.n_images >= 1, f"{key}.n_images", "must be >= 1")
        _check(self.n_proposals >= 1, f"{key}.n_proposals", "must be >= 1")


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "fovseg-toy"


@dataclass(frozen=True)
class Params:
    preset: Literal["toy", "paper"] = "toy"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    data: DataParams = field(default_factory=DataParams)
    backbones: BackbonesParams = field(default_factory=BackbonesParams)
    proposals: ProposalsParams = field(default_factory=ProposalsParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    benchmark: BenchmarkParams = field(default_factory=BenchmarkParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)

    def validate(self, key: str = "") -> None:
        _check(self.preset in ("toy", "paper"), "preset", "must be 'toy' or 'paper'")
        _check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        for key in ("small_vocab", "large_vocab"):
            _check(getattr(self.benchmark, key) in self.data.eval_benchmarks, f"benchmark.{key}",
                   f"must be one of data.eval_benchmarks {list(self.data.eval_benchmarks)} (its proposals are "
                   "computed there)")


# ----------------------------------------------------------------------------- loading
def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        _check(value in typing.get_args(tp), key, f"must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, f"expected a list, got {type(value).__name__}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        return _coerce(next(a for a in typing.get_args(tp) if a is not type(None)), value, key)
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp} at {key}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        full = f"{prefix}.{k}" if prefix else str(k)
        _check(k in names, full, f"unknown key; valid keys here: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def params_from_dict(data: dict, source: str = "<dict>") -> Params:
    """Build and validate :class:`Params`; errors are prefixed with ``source``."""
    try:
        params = _build(Params, data or {}, "")
        params.validate()
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (the toy preset when it is the repo's params.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found; run from the repository root or pass --params")
    with path.open() as fh:
        data = yaml.safe_load(fh)
    return params_from_dict(data or {}, str(path))


def to_dict(obj: Any) -> Any:
    """Plain-python view of a params object (tuples become lists) for json/yaml/mlflow."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
