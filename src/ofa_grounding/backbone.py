"""The image backbone: a torchvision-style ResNet v1.5 truncated after its third stage.

512x512 pixels -> (B, 1024, 32, 32) features (stride 16). Module and parameter names match OFA's
`encoder.embed_images.*` checkpoint keys, so weights load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RESNET_LAYERS

__all__ = ["ResNet", "drop_path", "linear_rates"]


def linear_rates(rate: float, n: int) -> list[float]:
    """Drop-path rates rising linearly from 0 to `rate` over n blocks (plain floats: works on meta device)."""
    return [rate * i / max(n - 1, 1) for i in range(n)]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole residual branches per sample during training; identity otherwise."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(identity + drop_path(y, self.drop_path_rate, self.training))


class ResNet(nn.Module):
    """Stem + layer1..layer3 of ResNet-50/101/152; output channels 1024 at stride 16."""

    out_channels = 1024

    def __init__(self, resnet_type: str = "resnet50", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        blocks = RESNET_LAYERS[resnet_type]
        rates = linear_rates(drop_path_rate, sum(blocks))
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch, start = 64, 0
        for i, (width, stride, n) in enumerate(zip((64, 128, 256), (1, 2, 2), blocks)):
            layer = []
            for j in range(n):
                layer.append(Bottleneck(in_ch, width, stride if j == 0 else 1, rates[start + j]))
                in_ch = width * Bottleneck.expansion
            start += n
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (B, 64, H/4, W/4)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)
