"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998), modern variant.

Layer structure follows the paper (C1 -> S2 -> C3 -> S4 -> C5 -> F6 -> output) on a 1x32x32
input. Modern, deploy-friendly changes: ReLU instead of scaled tanh, max pooling instead of the
trainable subsampling layers, full C3 connectivity (no connection table), a plain linear output
instead of the RBF layer, and BatchNorm2d after C1 and C3 (so the conv before each BN has no bias).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import init_cnn_weights

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """LeNet-5 for fixed 32x32 inputs; returns logits (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, bias=False),  # C1: 32 -> 28
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5, bias=False),  # C3: 14 -> 10
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),  # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: 5 -> 1 (a conv covering the whole map)
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Linear(120, 84),  # F6
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),  # output
        )
        init_cnn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    """Build LeNet-5 (modern variant with BN after C1/C3); kwargs: ``in_channels``."""
    return LeNet5(num_classes=num_classes, **kwargs)
