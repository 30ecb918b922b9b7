"""The image backbone: a torchvision-style ResNet v1.5 truncated after its third stage.

512x512 pixels -> (B, 1024, 32, 32) features (stride 16). Module and parameter names match OFA's
`encoder.embed_images.*` checkpoint keys, so weights load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RESNET_LAYERS
from .hardware import NO_CPU_BF16_ENV, cpu_bf16_supported, onednn_bf16_supported, onednn_post_ops

# NO_CPU_BF16_ENV and cpu_bf16_supported: aliases of hardware.py's, kept importable from here
# (scripts/train_demo.sh imports backbone.cpu_bf16_supported).
__all__ = ["NO_CPU_BF16_ENV", "ResNet", "cpu_bf16_supported", "drop_path", "linear_rates"]


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


def _conv_relu(conv: nn.Conv2d, x: torch.Tensor, add: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """relu(conv(x) [+ add]) as one oneDNN call: the sum and ReLU run on the convolution's output while it
    is in cache, instead of as two more passes over memory. In float32 the result is bitwise the eager
    one (tested); in bfloat16 it is closer to float32, as they run before the rounding to bfloat16."""
    args = (conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if add is not None:
        return torch.ops.mkldnn._convolution_pointwise.binary(x, add, *args, "add", 1.0, "relu", [], "")
    return torch.ops.mkldnn._convolution_pointwise(x, *args, "relu" if relu else "none", [], "")


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
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = drop_path(self.bn3(self.conv3(y)), self.drop_path_rate, self.training)
        identity = x if self.downsample is None else self.downsample(x)
        # In place when nothing differentiates through it: one full-resolution tensor less at the peak.
        return self.relu(identity + y if y.requires_grad or identity.requires_grad else y.add_(identity))

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference after `ResNet.fuse_for_inference_` on CPU: each convolution with its ReLU (and the
        residual sum) in one oneDNN call."""
        y = _conv_relu(self.conv2, _conv_relu(self.conv1, x))
        identity = x if self.downsample is None else _conv_relu(self.downsample[0], x, relu=False)
        return _conv_relu(self.conv3, y, add=identity)


class ResNet(nn.Module):
    """Stem + layer1..layer3 of ResNet-50/101/152: 16 x `width` output channels (1024 for OFA) at stride 16.

    `width` (64 in every OFA model) scales all widths; smaller values make our own small demo models.
    """

    def __init__(self, resnet_type: str = "resnet50", drop_path_rate: float = 0.0, width: int = 64) -> None:
        super().__init__()
        blocks = RESNET_LAYERS[resnet_type]
        rates = linear_rates(drop_path_rate, sum(blocks))
        self.out_channels = 16 * width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch, start = width, 0
        for i, (stage_width, stride, n) in enumerate(zip((width, 2 * width, 4 * width), (1, 2, 2), blocks)):
            layer = []
            for j in range(n):
                layer.append(Bottleneck(in_ch, stage_width, stride if j == 0 else 1, rates[start + j]))
                in_ch = stage_width * Bottleneck.expansion
            start += n
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    fused = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.fused:
            images = images.contiguous(memory_format=torch.channels_last)
            if images.device.type == "cpu" and onednn_post_ops() and not images.requires_grad and \
                    (images.dtype != torch.bfloat16 or onednn_bf16_supported()):
                x = self.maxpool(_conv_relu(self.conv1, images))
                for block in (*self.layer1, *self.layer2, *self.layer3):
                    x = block.forward_fused(x)
                return x
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (B, 64, H/4, W/4)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)

    @torch.no_grad()
    def fuse_for_inference_(self) -> ResNet:
        """Fold every BatchNorm into the convolution before it and switch to channels_last, in place.

        About 30 % faster on CPU (more with oneDNN's fused ReLU and residual sum, see `forward_fused`); the
        output moves by ~1e-6 relative (the reference's own kernels differ
        from machine to machine by as much). The module is then for inference only: it has no BatchNorm
        parameters left and cannot be trained or saved as an OFA checkpoint.
        """
        if self.fused:
            return self
        pairs = [(self, "conv1", "bn1")]
        for block in (*self.layer1, *self.layer2, *self.layer3):
            pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2"), (block, "conv3", "bn3")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
            setattr(parent, bn_name, nn.Identity())
        self.to(memory_format=torch.channels_last)
        self.fused = True
        return self.eval().requires_grad_(False)
