"""Network in Network (Lin, Chen & Yan, "Network In Network", arXiv:1312.4400, 2013), ImageNet variant.

Four mlpconv blocks (a k x k conv followed by two 1x1 convs, each with ReLU), max pooling between
blocks, dropout before the last block, and a final mlpconv whose last 1x1 conv emits one map per
class, reduced by global average pooling (no fully connected layers). Channel/kernel layout follows
the authors' released ImageNet model (96/256/384/1024 channels, 11x11 s4 stem, 3x3 s2 ceil-mode pools).

Modern variant: BatchNorm after every conv except the final class-map conv, which keeps its bias
and has no BN/ReLU so the pooled logits can be negative. Accepts inputs of size >= 63.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import init_cnn_weights

__all__ = ["NiN", "nin"]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def _mlpconv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """One mlpconv block: k x k conv then two 1x1 convs (a per-pixel two-layer MLP)."""
    return nn.Sequential(
        *_conv_bn_relu(in_ch, out_ch, kernel_size, stride, padding),
        *_conv_bn_relu(out_ch, out_ch, 1),
        *_conv_bn_relu(out_ch, out_ch, 1),
    )


class NiN(nn.Module):
    """NIN (ImageNet layout) with BN; input (N, C, H, W) with H, W >= 63 -> logits (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _mlpconv(in_channels, 96, 11, stride=4),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            _mlpconv(96, 256, 5, padding=2),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            _mlpconv(256, 384, 3, padding=1),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Dropout(p=dropout),
        )
        self.classifier = nn.Sequential(
            *_conv_bn_relu(384, 1024, 3, padding=1),
            *_conv_bn_relu(1024, 1024, 1),
            nn.Conv2d(1024, num_classes, kernel_size=1),  # one confidence map per class
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        init_cnn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def nin(num_classes: int = 1000, **kwargs) -> NiN:
    """Build Network in Network (ImageNet variant, BN); kwargs: ``in_channels``, ``dropout``."""
    return NiN(num_classes=num_classes, **kwargs)
