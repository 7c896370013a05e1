"""Typed errors. Every error says what went wrong, the values involved, and the fix.

Exit codes (documented in the README; one per class of failure, so scripts can branch on them):

====  ======================================================================================
0     success
1     internal error: a bug (the traceback is printed only with ``--debug``)
2     usage: an option or a combination of options is invalid (argparse uses 2 as well)
3     parity breach: an artifact's outputs breach its tolerance versus eager PyTorch
4     bad input: model spec, checkpoint, recipe, images, calibration data, ONNX file, manifest
5     environment: an optional runtime, TensorRT, a GPU or a provider is not available here
6     could not produce: export/conversion failed, or the precision/accuracy budget is not met
130   interrupted (SIGINT); 143: terminated (SIGTERM); any partial output is removed first
====  ======================================================================================
"""
from __future__ import annotations

import re

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PARITY = 0, 1, 2, 3
EXIT_INPUT, EXIT_ENVIRONMENT, EXIT_PRODUCE = 4, 5, 6
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
# the exit codes every command may end with, named in each command's --help
EXIT_CODES_ALWAYS = "1 internal error (a bug); 130/143 interrupted (SIGINT/SIGTERM)"


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ExporterError(Exception):
    """Base class: a user-facing failure with an optional fix hint.

    The CLI prints ``str(err)`` (one line, then ``fix: ...``) and exits non-zero.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, fix: str | None = None):
        # a converter's coloured text quoted in a message: its escape codes are not for logs/JSON
        message = _ANSI_ESCAPE.sub("", message)
        fix = _ANSI_ESCAPE.sub("", fix) if fix else fix
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  fix: {fix}")


class UnknownModelError(ExporterError):
    """The model name is neither a recipe, ``torchvision:<name>`` nor ``file.py:factory``."""

    exit_code = EXIT_INPUT


class RecipeError(ExporterError):
    """A recipe file is malformed or inconsistent."""

    exit_code = EXIT_INPUT


class WeightsError(ExporterError):
    """Weights could not be loaded (unknown name, no internet, mismatching checkpoint)."""

    exit_code = EXIT_INPUT


class InputSpecError(ExporterError):
    """The requested input size / batch does not fit the architecture."""

    exit_code = EXIT_INPUT


class PlanError(ExporterError):
    """A matrix plan file is malformed or names an unknown model, format or precision."""

    exit_code = EXIT_INPUT


class UsageError(ExporterError):
    """An option or combination of options is invalid."""


class ExportError(ExporterError):
    """ONNX or TorchScript export failed."""

    exit_code = EXIT_PRODUCE


class UnsupportedModelError(ExportError):
    """A runtime cannot convert the model (an operator it lacks): names the op and the runtime."""

    def __init__(self, runtime: str, fmt: str, op: str, detail: str):
        self.runtime, self.format, self.op = runtime, fmt, op
        super().__init__(f"{runtime} cannot convert this model: operator {op} ({detail})",
                         fix=f"export it without --format {fmt} (the other formats are unaffected)")


class SimplifyError(ExporterError):
    """The ONNX simplifier failed or changed the graph's numerics."""

    exit_code = EXIT_PRODUCE


class DeployCheckError(ExporterError):
    """The exported graph is not in deploy form (BN left, several outputs, checker fails)."""

    exit_code = EXIT_PRODUCE


class ParityError(ExporterError):
    """An artifact's outputs breach the recipe's tolerance versus eager PyTorch."""

    exit_code = EXIT_PARITY


class CalibrationError(ExporterError):
    """Calibration data is missing, empty or unusable."""

    exit_code = EXIT_INPUT


class PrecisionError(ExporterError):
    """The requested precision cannot be produced or met (e.g. INT8 accuracy budget)."""

    exit_code = EXIT_PRODUCE


class BackendUnavailableError(ExporterError):
    """An optional backend (TensorRT, CUDA, onnxruntime-gpu) is not installed or has no device."""

    exit_code = EXIT_ENVIRONMENT


class InputError(ExporterError):
    """A file the user gave is not what it must be (checkpoint, ONNX, manifest, image)."""

    exit_code = EXIT_INPUT


class ArtifactError(InputError):
    """An artifact directory or its manifest is invalid, modified, or not the exporter's."""


class ModelOutputError(InputError):
    """The model returns several outputs and the request does not say which one is the logits."""


class TrustError(ExporterError):
    """A manifest asks to run code (``file.py:factory``) the user has not vouched for."""

    exit_code = EXIT_USAGE


class OutputLocationError(ExporterError):
    """``--output`` cannot be written here (read-only, not writable, disk full)."""

    exit_code = EXIT_ENVIRONMENT


class OutputPathError(UsageError):
    """``--output`` is not a directory path (an existing file, or a path under one)."""


class Interrupted(BaseException):
    """Raised by the SIGTERM/SIGINT handler so ``finally`` blocks clean up before exit."""

    def __init__(self, signum: int, exit_code: int):
        super().__init__(signum)
        self.signum, self.exit_code = signum, exit_code
