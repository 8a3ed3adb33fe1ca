"""Distribution Adapter: turns raw proposal masks into soft weights; the encoder uses them only to
reweight the patches a mask touches (eq. 11's -inf outside the mask is never softened)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistributionAdapter(nn.Module):
    """``layers`` 3x3 convs (stride 1, GELU between, one output channel) added to the mask's logit.

    The last conv is zero-initialised, so an untrained adapter returns its input (clamped to
    [eps, 1 - eps]); 0 layers is expressed by not building an adapter at all.
    """

    def __init__(self, layers: int = 2, channels: int = 16, eps: float = 1e-4):
        super().__init__()
        if not 1 <= layers <= 3:
            raise ValueError(f"adapter layers must be in [1, 3] (0 = no adapter), got {layers}")
        widths = [1] + [channels] * (layers - 1) + [1]
        convs: list[nn.Module] = []
        for i in range(layers):
            convs.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=1, padding=1))
            if i < layers - 1:
                convs.append(nn.GELU())
        self.net = nn.Sequential(*convs)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.eps = eps

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, Q, H, W) in [0, 1] -> (B, Q, H, W) in (0, 1)."""
        b, q, h, w = masks.shape
        p = masks.reshape(b * q, 1, h, w).clamp(self.eps, 1 - self.eps)
        logit = torch.log(p) - torch.log1p(-p)
        x = p
        for layer in self.net:
            x = conv_one_channel_side(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
        return torch.sigmoid(logit + x.contiguous()).reshape(b, q, h, w)


def conv_one_channel_side(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for the adapter's 3x3 convs, with a single-channel side written as a depthwise conv.

    1 -> C is C depthwise filters over C copies of the input; C -> 1 is C depthwise filters whose outputs are
    summed. Same arithmetic as the dense conv up to float rounding, and 1.6x faster forward and backward on
    CPUs, where oneDNN handles a one-channel side poorly (130 toy masks of 32x32, 1 thread: 22 against 36 ms).
    The C-channel maps are channels_last (faster on GPUs too)."""
    c_in, c_out = conv.in_channels, conv.out_channels
    if c_in == 1 and c_out > 1:
        x = x.expand(-1, c_out, -1, -1).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=c_out)
    if c_out == 1 and c_in > 1:
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), conv.weight.transpose(0, 1), None,
                     conv.stride, conv.padding, groups=c_in)
        y = y.sum(1, keepdim=True)
        return y if conv.bias is None else y + conv.bias.view(1, 1, 1, 1)
    return conv(x.contiguous(memory_format=torch.channels_last))
