"""Distribution Adapter: turns raw proposal masks into soft weights; the encoder uses them only to
reweight the patches a mask touches (eq. 11's -inf outside the mask is never softened)."""
from __future__ import annotations

import torch
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
        # channels_last: faster convs on GPUs (the 16-channel hidden map); same values
        delta = self.net(p.contiguous(memory_format=torch.channels_last)).contiguous()
        return torch.sigmoid(logit + delta).reshape(b, q, h, w)
