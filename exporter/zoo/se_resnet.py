"""SE-ResNet-18: ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)
with squeeze-and-excitation (Hu, Shen & Sun, "Squeeze-and-Excitation Networks", CVPR 2018).

Basic blocks [2, 2, 2, 2] as in torchvision's ResNet-18 (conv without bias + BN everywhere,
projection shortcut = 1x1 conv + BN); module names match torchvision's, so a torchvision
ResNet-18 state dict loads with ``strict=False`` (only the ``se`` weights are missing). Each block
recalibrates its residual branch with an SE module (reduction 16) before the identity addition
(paper Fig. 3).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import init_cnn_weights

__all__ = ["SqueezeExcitation", "SEBasicBlock", "SEResNet", "se_resnet18"]


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W2 relu(W1 avgpool(x))); W1, W2 are 1x1 convs with bias (C -> C/r -> C)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sigmoid(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * scale


class SEBasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with SE on the residual branch before the addition."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcitation(planes, reduction)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class SEResNet(nn.Module):
    """ResNet with SE basic blocks; any input size >= 32 -> logits (N, num_classes)."""

    def __init__(self, layers: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = 1000,
                 in_channels: int = 3, reduction: int = 16, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, reduction)
        self.layer2 = self._make_layer(128, layers[1], 2, reduction)
        self.layer3 = self._make_layer(256, layers[2], 2, reduction)
        self.layer4 = self._make_layer(512, layers[3], 2, reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        init_cnn_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, SEBasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, reduction: int) -> nn.Sequential:
        layers = [SEBasicBlock(self.inplanes, planes, stride, reduction)]
        self.inplanes = planes
        layers += [SEBasicBlock(planes, planes, 1, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def se_resnet18(num_classes: int = 1000, **kwargs) -> SEResNet:
    """Build SE-ResNet-18; kwargs: ``in_channels``, ``reduction`` (16), ``zero_init_residual``."""
    return SEResNet((2, 2, 2, 2), num_classes=num_classes, **kwargs)
