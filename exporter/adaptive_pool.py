"""Adaptive average pools the TorchScript ONNX exporter cannot write, written as two MatMuls.

The TorchScript exporter writes ``AdaptiveAvgPool2d`` only when each output size divides the
input size (or is 1). VGG (7x7) and AlexNet (6x6) below their native 224 fail there. At a fixed
input size the pool is linear in each spatial axis: ``out = A_h @ x @ A_w^T``, where row ``i`` of
``A`` averages input positions ``[floor(i*n/m), ceil((i+1)*n/m))``, exactly PyTorch's bins. The
swap lives only for the export call; the eager model and every other format are untouched.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn


def bin_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) averaging matrix of adaptive average pooling along one axis."""
    matrix = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MatMulAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` for one fixed input height/width, as ``A_h @ x @ A_w^T``."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.register_buffer("rows", bin_matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols_t", bin_matrix(in_hw[1], out_hw[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


def _out_hw(pool: nn.AdaptiveAvgPool2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    size = pool.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return tuple(in_hw[k] if size[k] is None else size[k] for k in range(2))


def _unwritable(model: nn.Module, example: torch.Tensor) -> dict[str, tuple]:
    """``{module name: (in_hw, out_hw)}`` of each adaptive pool whose sizes do not divide."""
    seen: dict[str, tuple] = {}
    hooks = []
    for name, module in model.named_modules():
        if type(module) is nn.AdaptiveAvgPool2d:
            def record(mod, args, _out, name=name):
                in_hw = tuple(args[0].shape[-2:])
                out_hw = _out_hw(mod, in_hw)
                if any(o != 1 and i % o for i, o in zip(in_hw, out_hw)):
                    seen[name] = (in_hw, out_hw)
            hooks.append(module.register_forward_hook(record))
    if not hooks:
        return {}
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@contextlib.contextmanager
def matmul_pools(model: nn.Module, example: torch.Tensor) -> Iterator[list[str]]:
    """Swap each non-divisible ``AdaptiveAvgPool2d`` of ``model`` for its MatMul form while the
    block runs (yields the swapped module names); the originals come back afterwards."""
    swaps = _unwritable(model, example)
    originals = []
    try:
        for name, (in_hw, out_hw) in swaps.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            originals.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, MatMulAdaptiveAvgPool2d(in_hw, out_hw))
        yield sorted(swaps)
    finally:
        for parent, attr, module in originals:
            setattr(parent, attr, module)
