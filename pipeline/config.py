"""Typed, validated parameters: params.yaml -> frozen dataclasses.

The dataclass defaults are the toy preset, equal to the repository's params.yaml (a test checks it), so
there is one set of defaults; the paper preset (pipeline/presets/paper.yaml) overrides them.

Every section is a dataclass; :func:`load_params` refuses unknown keys, wrong types and
out-of-range values with an error that names the full key path (``train.lr``) and the file.
"""
from __future__ import annotations

import dataclasses
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import ParamsError  # noqa: F401  (re-exported)

MAX_SEED = 2**63 - 1  # torch.manual_seed's range
MAX_ITERATIONS = 100_000_000


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"{key}: {msg}")


def _check_template(template: str, key: str) -> None:
    """A prompt template holds exactly one ``{}`` (filled with the class name) and no other field."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ParamsError(f"{key}: {template!r} is not a valid template ({exc}); write the class name "
                          "placeholder as {} and double other braces ({{ }})") from None
    _check(fields == [""], key, f"{template!r} must contain exactly one '{{}}' placeholder (the class name) "
                                "and no other {...} field")


def _check_clip_model(name: str, key: str) -> None:
    """The CLIP name must be an open_clip model or one of models/configs (checked before any stage runs)."""
    from models.clip_backbone import CONFIG_DIR

    local = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if name in local:
        return
    import open_clip  # ~1 s: only for names that are not ours

    _check(name in open_clip.list_models(), key,
           f"unknown CLIP model {name!r}; local configs: {local}; list the open_clip names with "
           "`python -c \"import open_clip; print(open_clip.list_models())\"`")


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class ToyWorldParams:
    """Sizes of the generated shapes world (see pipeline.data.toy)."""

    seed: int = 0
    image_size: int = 96
    n_train: int = 480
    n_val: int = 256
    n_open: int = 256
    n_captions: int = 12000
    max_things: int = 3

    def validate(self, key: str) -> None:
        _check(0 <= self.seed <= MAX_SEED, f"{key}.seed", f"must be in [0, {MAX_SEED}]")
        _check(32 <= self.image_size <= 1024, f"{key}.image_size", "must be in [32, 1024]")
        for name in ("n_train", "n_val", "n_open", "n_captions"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(1 <= self.max_things <= 12, f"{key}.max_things", "must be in [1, 12]")


@dataclass(frozen=True)
class DataParams:
    root: str = ""  # "" = $DETECTRON2_DATASETS, else datasets/
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

    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1

    def validate(self, key: str) -> None:
        _check(self.steps >= 1, f"{key}.steps", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(0 < self.lr < 1, f"{key}.lr", "must be in (0, 1)")
        _check(0 <= self.weight_decay < 1, f"{key}.weight_decay", "must be in [0, 1)")


Precision = Literal["fp32", "bf16", "auto"]


@dataclass(frozen=True)
class ClipPretrainParams(PretrainParams):
    """The toy CLIP's pre-training; ``precision``: the forward pass in ``fp32``, ``bf16`` (autocast; 1.4x faster
    on a CPU with native bf16, another CLIP) or ``auto`` (bf16 where the device computes it natively: AVX512-BF16
    or AMX CPUs, Ampere+ GPUs; else fp32)."""

    precision: Precision = "fp32"


@dataclass(frozen=True)
class ClipParams:
    model: str = "fovseg-tiny"  # an open_clip model name or one of models/configs
    pretrained: str = ""  # open_clip tag, local checkpoint path, or "" (toy: pre-trained by the pipeline)
    image_size: int = 64  # classifier input size; position embeddings are interpolated
    pretrain: ClipPretrainParams = field(default_factory=ClipPretrainParams)

    def validate(self, key: str) -> None:
        _check_clip_model(self.model, f"{key}.model")
        _check(16 <= self.image_size <= 2048, f"{key}.image_size", "must be in [16, 2048]")
        self.pretrain.validate(f"{key}.pretrain")


@dataclass(frozen=True)
class GeneratorParams:
    source: Literal["pretrain", "hub"] = "pretrain"
    name: str = "fovseg-tiny"  # hub id / local dir (source=hub) or a models/configs name (pretrain)
    image_size: int = 96
    pretrain: PretrainParams = field(default_factory=lambda: PretrainParams(steps=1000, batch_size=8, lr=3e-4,
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
    short_side: int = 96  # generator input: aspect-preserving resize (paper: Mask2Former's test 800 / 1333)
    max_side: int = 160

    def validate(self, key: str) -> None:
        _check(32 <= self.short_side <= self.max_side <= 4096, f"{key}.short_side",
               "need 32 <= short_side <= max_side <= 4096")
        _check(1 <= self.max_proposals <= 1000, f"{key}.max_proposals", "must be in [1, 1000]")
        _check(0 < self.mask_threshold < 1, f"{key}.mask_threshold", "must be in (0, 1)")
        _check(self.min_area >= 0, f"{key}.min_area", "must be >= 0")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


@dataclass(frozen=True)
class TevaParams:
    target_attention: bool = True  # Mask-Target x-att: mask tokens x target-class text embeddings (g_q, g_k, g_v)
    image_attention: bool = True  # Mask-Image x-att (eq. 7); false = MaskCLIP's mask attention (+ self key)
    train_targets: Literal["image", "vocabulary"] = "image"  # [TGT] in training: gt classes per image | vocab
    width: int = 0  # g_q/g_k/g_v width; 0 = CLIP's width, else a bottleneck ("lightweight" TeVA)
    shared: bool = False  # one set of g projections shared by all blocks

    def validate(self, key: str) -> None:
        _check(self.width >= 0, f"{key}.width", "must be >= 0 (0 = CLIP's width)")


@dataclass(frozen=True)
class FiserParams:
    enabled: bool = True
    variant: Literal["text_encoder", "embedding"] = "text_encoder"  # eq. 2 through CLIP's text encoder | ablation
    candidates: Literal["image", "vocabulary"] = "image"  # eq. 6's softmax: the image's K classes | all classes
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
    tune_generator: bool = False  # Table IV(b): train the mask generator online (pipeline/generator_training.py)
    templates: tuple[str, ...] = ("a photo of a {}.", "a {} on the ground.", "there is a {} in the scene.")
    synonyms: bool = True  # every synonym of a class (averaged) | only its name (the paper: "category names")

    def validate(self, key: str) -> None:
        from models.trainable import SELECTIONS, parse_selection

        _check(0 <= self.adapter_layers <= 3, f"{key}.adapter_layers", "must be in [0, 3]")
        _check(self.adapter_channels >= 1, f"{key}.adapter_channels", "must be >= 1")
        try:
            parse_selection(self.trainable)
        except ValueError as exc:
            raise ParamsError(f"{key}.trainable: {exc}; valid: {SELECTIONS} or lora:<rank>") from None
        _check(len(self.templates) >= 1, f"{key}.templates", "needs at least one template with a '{}' placeholder")
        for i, template in enumerate(self.templates):
            _check_template(template, f"{key}.templates[{i}]")
        self.fiser.validate(f"{key}.fiser")
        self.teva.validate(f"{key}.teva")


@dataclass(frozen=True)
class LossWeights:
    fiser: float = 1.0
    ce: float = 2.0
    generator: float = 1.0  # Mask2Former's own loss sum, with model.tune_generator only

    def validate(self, key: str) -> None:
        _check(self.fiser >= 0 and self.ce >= 0 and self.generator >= 0, key, "loss weights must be >= 0")


@dataclass(frozen=True)
class TrainParams:
    iterations: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    backbone_lr_mult: float = 1.0
    warmup_iters: int = 20
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    clip_grad_norm: float = 0.0  # > 0: clip the L2 norm of all gradients together (MaskCLIP: 0.01); 0 = off
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
    gpus: int = 1  # > 1: the train stage relaunches itself under torchrun; batch_size stays global
    data_fraction: float = 1.0  # train on a fixed deterministic subset of the training images (Fig. 9)

    def validate(self, key: str) -> None:
        _check(0 < self.data_fraction <= 1, f"{key}.data_fraction", "must be in (0, 1]")
        _check(1 <= self.iterations <= MAX_ITERATIONS, f"{key}.iterations", f"must be in [1, {MAX_ITERATIONS}]")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(0 < self.lr < 1, f"{key}.lr", "must be in (0, 1)")
        _check(0 <= self.weight_decay < 1, f"{key}.weight_decay", "must be in [0, 1)")
        _check(0 <= self.backbone_lr_mult <= 10, f"{key}.backbone_lr_mult", "must be in [0, 10]")
        _check(self.clip_grad_norm >= 0, f"{key}.clip_grad_norm", "must be >= 0 (0 = no clipping)")
        _check(0 <= self.warmup_iters <= self.iterations, f"{key}.warmup_iters",
               f"must be in [0, iterations ({self.iterations})]: a warmup longer than training never reaches the lr")
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
        _check(1 <= self.gpus <= 64, f"{key}.gpus", "must be in [1, 64]")
        self.loss_weights.validate(f"{key}.loss_weights")


@dataclass(frozen=True)
class EvaluateParams:
    test_short_side: int = 64  # paper: 800
    test_max_side: int = 107  # paper: 1333
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
class SweepParams:
    """Ablation sweeps on Ray Tune (pipeline.sweep); grids are pipeline/sweeps/<name>.yaml."""

    grids: tuple[str, ...] = ("modules",)  # what the DVC `sweep` stage runs
    seeds: tuple[int, ...] = (0, 1)
    cpus_per_trial: float = 1.0  # fractional allowed
    gpus_per_trial: float = 0.0  # fractional allowed
    num_cpus: int = 0  # CPUs of a local Ray instance; 0 = all this process may use (ignored on a cluster)
    max_concurrent: int = 0  # 0 = as many as the resources allow
    max_failures: int = 1  # retries of a trial that raised

    def validate(self, key: str) -> None:
        _check(len(self.grids) >= 1, f"{key}.grids", "needs at least one grid name")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"{key}.seeds",
               "needs at least one seed, without repeats")
        _check(self.cpus_per_trial > 0, f"{key}.cpus_per_trial", "must be > 0")
        _check(self.gpus_per_trial >= 0, f"{key}.gpus_per_trial", "must be >= 0")
        _check(self.num_cpus >= 0, f"{key}.num_cpus", "must be >= 0")
        _check(self.max_concurrent >= 0, f"{key}.max_concurrent", "must be >= 0")
        _check(self.max_failures >= 0, f"{key}.max_failures", "must be >= 0")


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
    sweep: SweepParams = field(default_factory=SweepParams)

    def validate(self, key: str = "") -> None:
        _check(self.preset in ("toy", "paper"), "preset", "must be 'toy' or 'paper'")
        _check(0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]")
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


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e-3`` as a float (YAML 1.2 / what researchers write;
    YAML 1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"duplicate key {key!r} (line {seen[key] + 1} and line "
                                  f"{key_node.start_mark.line + 1}); keep one of them")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""")
# resolvers are per class: copy the inherited table before adding to it
_ParamsLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))


def read_params_yaml(path: str | Path) -> Any:
    """Parse a params YAML file: duplicate keys refused, ``1e-3`` read as a number."""
    path = Path(path)
    try:
        with path.open() as fh:
            return yaml.load(fh, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader subclass)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (the toy preset when it is the repo's params.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found (looked in {Path.cwd()}): run from the repository "
                                "root, or pass --params PATH to an existing params file")
    data = read_params_yaml(path)
    if data is None:
        raise ParamsError(f"{path} is empty; restore the toy preset with `git checkout {path.name}` or "
                          "`fovseg preset toy` (built-in defaults are never used silently)")
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return params_from_dict(data, str(path))


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
