"""Markers: `slow` runs only with --runslow; `gpu`/`tensorrt`/`macos` skip with a reason where absent."""
from __future__ import annotations

import importlib.util
import platform

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (native input sizes, whole-zoo benchmarks)")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    cuda = _cuda_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    skip_slow = pytest.mark.skip(reason="slow: native input sizes, whole-zoo runtime runs or subprocess corpora; run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    skip_trt = pytest.mark.skip(
        reason="needs TensorRT and a CUDA GPU: pip install 'zoo-exporter[tensorrt]' on an NVIDIA machine"
               f" (tensorrt importable: {has_trt}, CUDA: {cuda})")
    skip_macos = pytest.mark.skip(reason="Core ML predicts only on macOS (this is "
                                         f"{platform.system()}); the conversion tests run here")
    for item in items:
        if item.get_closest_marker("macos") and platform.system() != "Darwin":
            item.add_marker(skip_macos)
        if item.get_closest_marker("slow") and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu") and not cuda:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("tensorrt") and not (cuda and has_trt):
            item.add_marker(skip_trt)
