"""Typed errors. Every error says what went wrong, the values involved, and the fix."""
from __future__ import annotations


class ExporterError(Exception):
    """Base class: a user-facing failure with an optional fix hint.

    The CLI prints ``str(err)`` (one line, then ``fix: ...``) and exits non-zero.
    """

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  fix: {fix}")


class UnknownModelError(ExporterError):
    """The model name is neither a recipe, ``torchvision:<name>`` nor ``file.py:factory``."""


class RecipeError(ExporterError):
    """A recipe file is malformed or inconsistent."""


class WeightsError(ExporterError):
    """Weights could not be loaded (unknown name, no internet, mismatching checkpoint)."""


class InputSpecError(ExporterError):
    """The requested input size / batch does not fit the architecture."""


class UsageError(ExporterError):
    """An option or combination of options is invalid."""


class ExportError(ExporterError):
    """ONNX or TorchScript export failed."""


class SimplifyError(ExporterError):
    """The ONNX simplifier failed or changed the graph's numerics."""


class DeployCheckError(ExporterError):
    """The exported graph is not in deploy form (BN left, several outputs, checker fails)."""


class ParityError(ExporterError):
    """An artifact's outputs breach the recipe's tolerance versus eager PyTorch."""

    exit_code = 3


class CalibrationError(ExporterError):
    """Calibration data is missing, empty or unusable."""


class PrecisionError(ExporterError):
    """The requested precision cannot be produced or met (e.g. INT8 accuracy budget)."""


class BackendUnavailableError(ExporterError):
    """An optional backend (TensorRT, CUDA, onnxruntime-gpu) is not installed or has no device."""
