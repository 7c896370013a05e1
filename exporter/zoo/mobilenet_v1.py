"""MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", arXiv:1704.04861, 2017).

Table 1 of the paper: a 3x3 stride-2 conv with 32 channels, then 13 depthwise-separable blocks
(3x3 depthwise conv + BN + ReLU, 1x1 pointwise conv + BN + ReLU), global average pooling and a
fully connected classifier. ``width_mult`` is the paper's width multiplier alpha; channel counts
are rounded to multiples of 8 (exact for alpha = 1.0, 0.75, 0.5, 0.25). Dropout before the
classifier defaults to 0.001, the rate of the authors' TF-slim reference (keep_prob 0.999).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import init_cnn_weights

__all__ = ["MobileNetV1", "mobilenet_v1"]

# (output channels, stride) of the 13 depthwise-separable blocks, from Table 1.
_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)


def _scaled(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width_mult``, rounded to the nearest multiple of ``divisor`` (>= divisor)."""
    scaled = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    if scaled < 0.9 * channels * width_mult:  # never round down by more than 10%
        scaled += divisor
    return scaled


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 conv (+BN+ReLU) followed by pointwise 1x1 conv (+BN+ReLU) (paper Fig. 3)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(in_ch, in_ch, 3, stride=stride, groups=in_ch)
        self.pointwise = ConvBNReLU(in_ch, out_ch, 1)


class MobileNetV1(nn.Module):
    """MobileNetV1; any input size >= 32 -> logits (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 dropout: float = 0.001) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        channels = _scaled(32, width_mult)
        layers: list[nn.Module] = [ConvBNReLU(in_channels, channels, 3, stride=2)]
        for out, stride in _BLOCKS:
            out = _scaled(out, width_mult)
            layers.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(channels, num_classes))
        init_cnn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v1(num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """Build MobileNetV1; kwargs: ``width_mult`` (alpha, default 1.0), ``in_channels``, ``dropout``."""
    return MobileNetV1(num_classes=num_classes, **kwargs)
