"""Our own definitions of the zoo architectures torchvision lacks.

``ZOO_BUILDERS[name](num_classes=..., **kwargs) -> nn.Module``; every model maps a single NCHW
tensor to logits (N, num_classes), is torch.fx traceable and exports to ONNX.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .lenet import LeNet5, lenet5
from .mobilenet_v1 import MobileNetV1, mobilenet_v1
from .nin import NiN, nin
from .se_resnet import SEResNet, se_resnet18
from .shufflenet_v1 import ShuffleNetV1, channel_shuffle, shufflenet_v1

ZOO_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "nin": nin,
    "mobilenet_v1": mobilenet_v1,
    "se_resnet18": se_resnet18,
    "shufflenet_v1": shufflenet_v1,
}

__all__ = ["ZOO_BUILDERS", "LeNet5", "NiN", "MobileNetV1", "SEResNet", "ShuffleNetV1",
           "channel_shuffle", "lenet5", "nin", "mobilenet_v1", "se_resnet18", "shufflenet_v1"]
