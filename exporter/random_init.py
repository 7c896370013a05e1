"""Seeded random init that does not hide bugs: BatchNorm statistics that make folding a real
change, and no all-zero layer (a zero-initialized classifier makes every logit 0)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def randomize_zero_weights(model: nn.Module, seed: int = 0) -> list[str]:
    """Seeded N(0, 0.02) weights for the Linear/Conv layers a random init leaves all zero (a
    zero-initialized classifier head: every logit 0, every comparison with it meaningless).
    Returns their names."""
    gen = torch.Generator().manual_seed(seed + 1)
    changed = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and weight is not None and not weight.any():
            weight.copy_((torch.randn(weight.shape, generator=gen) * 0.02).to(weight))
            changed.append(name)
    return changed


@torch.no_grad()
def randomize_bn_stats(model: nn.Module, seed: int = 0) -> int:
    """Give every BN non-trivial stats so folding is not a no-op; deterministic by ``seed``.

    running_mean ~ N(0, 0.1), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1).
    Returns the number of BN modules changed.
    """
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for module in model.modules():
        if not isinstance(module, _BatchNorm):
            continue
        n = module.num_features
        values = {
            "running_mean": torch.randn(n, generator=gen) * 0.1,
            "running_var": torch.rand(n, generator=gen) * 1.5 + 0.5,
            "weight": torch.rand(n, generator=gen) + 0.5,
            "bias": torch.randn(n, generator=gen) * 0.1,
        }
        for attr, value in values.items():
            tensor = getattr(module, attr)
            if tensor is not None:
                tensor.copy_(value.to(tensor))
        count += 1
    return count
