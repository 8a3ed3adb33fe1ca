"""Fig. 6: text-to-image attention of the original CLIP and of the trained FOV-Seg classifier, side by side.

Definition (the paper shows maps without a formula; this is our choice): for every image patch, the
classifier's projected patch embedding (the last CLIP layer's patch token after ``ln_post`` and the joint-space
projection, MaskCLIP-style dense features) is compared with each class text embedding by cosine similarity,
and the similarities are turned into a distribution over the given classes,
``p(c | patch) = softmax_c(logit_scale * cos(patch, text_c))``. A map per class is that probability per
patch, upsampled to the image (fixed 0-1 colour scale, so the two models are comparable). "Original CLIP" is
the same classifier before training (TeVA and the adapter are identities at initialisation); "trained" loads
the checkpoint, whose tuned ``f_q`` changes the patch tokens.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@torch.inference_mode()
def patch_class_maps(model, text: torch.Tensor, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, gh, gw) class probabilities per patch (see the module doc) for an (H, W, 3) uint8 image."""
    device = text.device
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    full = torch.ones(1, 1, *image.shape[:2], device=device)
    out = model.eval()(x, full, text, size=size)
    patches = F.normalize(out["patch_embeds"][0].float(), dim=-1)  # (N, E)
    logits = model.logit_scale.float() * patches @ text.float().t()
    gh, gw = size[0] // model.visual.patch_size, size[1] // model.visual.patch_size
    return logits.softmax(-1).t().reshape(-1, gh, gw).cpu().numpy()


def render(image: np.ndarray, maps: dict[str, np.ndarray], names: list[str], title: str = "") -> plt.Figure:
    """Rows: one per model (``maps``: model name -> (C, gh, gw)); columns: the image, then one map per class."""
    h, w = image.shape[:2]
    fig, axes = plt.subplots(len(maps), len(names) + 1, figsize=(1.9 * (len(names) + 1), 2.0 * len(maps)),
                             squeeze=False)
    for r, (model_name, m) in enumerate(maps.items()):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(model_name, fontsize=8)
        for c, name in enumerate(names):
            up = F.interpolate(torch.from_numpy(m[c])[None, None], size=(h, w), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
            ax = axes[r, c + 1]
            ax.imshow(image)
            ax.imshow(up, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            if r == 0:
                ax.set_title(name, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def load_models(params, backbones: str, checkpoint: str, vocab, device: torch.device) -> dict:
    """{"original CLIP": (model, text), "trained": (model, text)} for ``vocab``."""
    from pipeline.build.classifier import build_classifier, read_checkpoint

    read_checkpoint(checkpoint)  # a missing or damaged checkpoint stops before the original model is built
    models = {}
    for name, ckpt in (("original CLIP", None), ("trained", checkpoint)):
        ready = build_classifier(params.backbones.clip, params.model, backbones, device, checkpoint=ckpt)
        models[name] = (ready.model, ready.text_embeddings(vocab))
    return models


def attention_figure(models: dict, image: np.ndarray, names: list[str], params, title: str = "") -> plt.Figure:
    from pipeline.build.classifier import classifier_input_size

    any_model = next(iter(models.values()))[0]
    size = classifier_input_size(*image.shape[:2], params.evaluate, any_model.image_size,
                                 any_model.visual.patch_size)
    maps = {k: patch_class_maps(m, t, image, size) for k, (m, t) in models.items()}
    return render(image, maps, names, title)


def run_attention(args) -> list[Path]:
    """``fovseg attention IMAGE... --classes "a, b" --out DIR``: one PNG per image."""
    from pipeline.data.formats import read_image
    from pipeline.device import pick_device
    from pipeline.eval.predict import PredictError, expand_inputs, resolve_vocabulary
    from pipeline.outputs import model_paths
    from pipeline.params_file import load_params

    images = expand_inputs(args.inputs)
    vocab = resolve_vocabulary(args.classes, None, args.vocab)
    if len(vocab) > 12:
        raise PredictError(f"{len(vocab)} classes: give at most 12 (one map each), e.g. --classes \"sky, grass\"")
    out = Path(args.out)
    params = load_params(args.params)
    model_paths(args)
    models = load_models(params, args.backbones, args.checkpoint, vocab, pick_device(args.device or params.device))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        fig = attention_figure(models, read_image(path), vocab.names, params, title=path.name)
        target = out / f"{path.stem}_attention.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    print(f"{len(written)} attention map(s) -> {out}/")
    return written


