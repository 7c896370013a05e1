"""What the TensorRT backend needs from the machine: the ``tensorrt`` package (>= 10), a CUDA build
of torch and a CUDA GPU; plus the logger and network flags every build and run shares.

``tensorrt`` and ``torch.cuda`` are touched only inside functions.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from ...errors import BackendUnavailableError, ExportError

INSTALL_HINT = "pip install 'zoo-exporter[tensorrt]' on a machine with an NVIDIA GPU and driver"
MIN_MAJOR = 10


class EngineBuildError(ExportError):
    """TensorRT could not parse the ONNX or build an engine from it."""


class EngineMismatchError(BackendUnavailableError):
    """A serialized engine was built by another TensorRT version or for another GPU."""


def require_tensorrt(device: str = "cuda"):
    """Return the ``tensorrt`` module, or raise one :class:`BackendUnavailableError` line naming
    everything that is missing (the package, a CUDA build of torch, a CUDA GPU)."""
    missing, trt = [], None
    try:
        import tensorrt as trt  # noqa: F811 - lazy optional import
    except ModuleNotFoundError as err:
        missing.append("the 'tensorrt' Python package" if err.name in (None, "tensorrt")
                       else f"a dependency of tensorrt ({err.name})")
    except (ImportError, OSError) as err:  # wheel present but its CUDA/TensorRT libraries are not
        missing.append(f"working TensorRT libraries ({str(err).splitlines()[0]})")
    import torch

    if torch.version.cuda is None:
        missing.append(f"a CUDA build of torch (torch {torch.__version__} is CPU-only)")
    elif not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if trt is not None and trt_major(trt) < MIN_MAJOR:
        missing.append(f"TensorRT >= {MIN_MAJOR} (found {trt.__version__})")
    if missing:
        raise BackendUnavailableError(f"TensorRT backend unavailable on device '{device}': missing "
                                      + "; ".join(missing), fix=INSTALL_HINT)
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def device_index(device: str) -> int:
    import torch

    if device in ("gpu", "cuda", "tensorrt"):
        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailableError(f"TensorRT runs on CUDA devices only, got device '{device}'",
                                  fix="pass --device cuda (or cuda:N)")


def gpu_info(index: int) -> dict[str, Any]:
    """Name and compute capability of CUDA device ``index``."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"index": index, "name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.total_memory)}


_LOGGERS: dict[int, Any] = {}  # id(tensorrt module) -> its one logger


def make_logger(trt):
    """The process's one TensorRT logger, keeping warnings and errors for error messages.

    TensorRT treats the logger as process-global: every Builder and Runtime gets the same one, and
    it must outlive them all, so it is made once and kept. ``mark()`` / ``since(mark)`` give the
    lines one operation logged.
    """
    if id(trt) in _LOGGERS:
        return _LOGGERS[id(trt)]

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.seen = 0
            self.recent: deque[str] = deque(maxlen=1000)

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.seen += 1
                self.recent.append(f"[{getattr(severity, 'name', severity)}] {msg}")

        def mark(self) -> int:
            return self.seen

        def since(self, mark: int) -> list[str]:
            count = min(self.seen - mark, len(self.recent))
            return list(self.recent)[-count:] if count > 0 else []

    _LOGGERS[id(trt)] = CapturingLogger()
    return _LOGGERS[id(trt)]


def network_flags(trt) -> int:
    if trt_major(trt) >= 11:
        return 0  # 11.x: every network is strongly typed; the creation flag is ignored
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} cannot build strongly typed "
                                      "networks", fix="install TensorRT >= 10.0")
    return 1 << int(flag)
