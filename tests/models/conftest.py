import copy

import pytest
import torch

from models.classifier import FOVSeg
from models.clip_backbone import build_clip
from models.mask_encoder import TevaConfig


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model, tokenizer = build_clip("fovseg-tiny", allow_random=True)
    return model.eval(), tokenizer


PLAIN = TevaConfig(False)


def make_fovseg(clip, teva=PLAIN, adapter_layers=0, fiser_layers=0, **kwargs) -> FOVSeg:
    return FOVSeg(copy.deepcopy(clip), teva=teva, adapter_layers=adapter_layers, fiser_layers=fiser_layers,
                  **kwargs).eval()
