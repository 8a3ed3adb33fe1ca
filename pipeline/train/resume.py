"""What a training checkpoint must match to be resumed: its identity (params, weights and data ids) less the
result-neutral ``train`` keys, older checkpoints' identities completed with today's defaults, and the keys that
differ, for the error message (the policy itself is :meth:`pipeline.train.recipe.TrainingRecipe._resume`)."""
from __future__ import annotations

from pipeline.config import ClipParams, ModelParams, TrainParams, to_dict

# train keys that do not change the trained weights: a checkpoint resumes across changes to them
RESUME_NEUTRAL_KEYS = ("iterations", "checkpoint_every", "log_every", "num_workers")


def resume_identity(identity: dict) -> dict:
    """What a checkpoint must match to be resumed: everything but the result-neutral train keys."""
    out = dict(identity)
    out["train"] = {k: v for k, v in identity.get("train", {}).items() if k not in RESUME_NEUTRAL_KEYS}
    return out


def with_defaults(identity: dict) -> dict:
    """A checkpoint's identity with the params keys it predates filled in at their defaults: a key added to
    the code later (at a default that keeps the old behaviour) does not block resuming."""
    def merge(base: dict, over: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in over.items()}}

    out = dict(identity)
    for key, cls in (("model", ModelParams), ("clip", ClipParams), ("train", TrainParams)):
        if isinstance(out.get(key), dict):
            out[key] = merge(to_dict(cls()), out[key])
    return out


def identity_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every (nested) key whose value differs between ``a`` and ``b``."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += identity_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return keys
