"""ShuffleNetV1 (Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", arXiv:1707.01083, CVPR 2018).

Table 1 of the paper at 1.0x: 3x3 stride-2 conv (24 ch), 3x3 stride-2 max pool, three stages of
ShuffleNet units repeated [4, 8, 4], global average pooling and a fully connected layer. Output
channels per stage depend on the number of groups g. Units (paper Fig. 2): 1x1 group conv + BN +
ReLU, channel shuffle, 3x3 depthwise conv + BN, 1x1 group conv + BN; the bottleneck width is a
quarter of the unit's output channels. Stride-1 units add the identity, stride-2 units concatenate
a 3x3 stride-2 average-pooled shortcut; ReLU follows. The first 1x1 conv of stage 2 is not grouped
(its input has only 24 channels); the shuffle is still applied there, as in the authors' reference code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .common import init_cnn_weights

__all__ = ["STAGE_CHANNELS", "channel_shuffle", "ChannelShuffle", "shuffles_as_reshape", "ShuffleUnit", "ShuffleNetV1",
           "shufflenet_v1"]

# Output channels of stages 2, 3, 4 for each group count g at 1.0x (paper Table 1).
STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*k, H, W) -> (N, k*g, H, W): reshape channels to (g, k), transpose, flatten back."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    """Channel shuffle as one fixed permutation (``index_select``) computed by :func:`channel_shuffle`.

    Same result as the reshape-transpose-reshape form, but it exports to a single ONNX ``Gather``
    with constant indices instead of a chain of Shape/Reshape ops under a dynamic batch axis.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.groups = groups
        perm = channel_shuffle(torch.arange(channels).view(1, channels, 1, 1), groups).flatten()
        self.register_buffer("perm", perm, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.perm)

    def extra_repr(self) -> str:
        return f"channels={self.perm.numel()}, groups={self.groups}"


@contextmanager
def shuffles_as_reshape(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, every :class:`ChannelShuffle` in ``model`` runs the reshape-transpose form
    (same result): converters that map that pattern (pnnx -> ncnn) but not ``index_select`` can
    trace it. Yields the swapped modules' names."""
    swapped = [(name, m) for name, m in model.named_modules() if isinstance(m, ChannelShuffle)]
    for _, m in swapped:
        m.forward = lambda x, groups=m.groups: channel_shuffle(x, groups)
    try:
        yield [name for name, _ in swapped]
    finally:
        for _, m in swapped:
            del m.forward


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit (paper Fig. 2b for stride 1, Fig. 2c for stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, stride: int, group_first: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_ch != out_ch:
            raise ValueError("a stride-1 unit needs in_ch == out_ch")
        self.stride = stride
        mid = out_ch // 4
        branch_out = out_ch - in_ch if stride == 2 else out_ch  # stride 2 concatenates the shortcut
        first_groups = groups if group_first else 1
        self.branch = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, groups=first_groups, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            ChannelShuffle(mid, groups) if groups > 1 else nn.Identity(),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False),
            nn.BatchNorm2d(branch_out),
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            out = torch.cat([self.shortcut(x), self.branch(x)], dim=1)
        else:
            out = self.branch(x) + x
        return self.relu(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 1.0x; any input size >= 32 -> logits (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, groups: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        if groups not in STAGE_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(STAGE_CHANNELS)}, got {groups}")
        self.groups = groups
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 24, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 24
        stages = []
        for index, (out_ch, repeats) in enumerate(zip(STAGE_CHANNELS[groups], STAGE_REPEATS)):
            units = [ShuffleUnit(channels, out_ch, groups, stride=2, group_first=index > 0)]
            units += [ShuffleUnit(out_ch, out_ch, groups, stride=1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            channels = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_cnn_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def shufflenet_v1(num_classes: int = 1000, **kwargs) -> ShuffleNetV1:
    """Build ShuffleNetV1 1.0x; kwargs: ``groups`` in (1, 2, 3, 4, 8) (default 3), ``in_channels``."""
    return ShuffleNetV1(num_classes=num_classes, **kwargs)
