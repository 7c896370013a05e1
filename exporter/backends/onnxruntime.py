"""ONNX Runtime runner: the CPU provider, or onnxruntime-gpu's CUDA / TensorRT execution providers.

``provider`` is what ONNX Runtime actually put first (``session.get_providers()[0]``), never what
was requested. ONNX Runtime silently falls back to the next provider when one cannot be registered;
an explicitly requested provider (``provider="cuda"|"tensorrt"``) that did not load is therefore an
error (:class:`ProviderFallbackError`) unless ``allow_fallback`` is set, and then a note says what
ran instead. ``device="cuda"`` alone (parity's ``--device auto``) prefers the CUDA provider and
notes a fall-back to CPU. Intra-op threads are fixed (default: ``torch.get_num_threads()``, so eager
and ORT run with the same count) and reported.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

from ..onnx_graph import WEIGHT_BIAS_QUANTIZATION  # noqa: F401 - re-exported for callers

# --ort-provider value -> ONNX Runtime execution provider
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
GPU_INSTALL_HINT = ("pip install 'zoo-exporter[gpu]' (onnxruntime-gpu in place of onnxruntime) on a "
                    "machine with an NVIDIA GPU; the tensorrt provider also needs "
                    "'zoo-exporter[tensorrt]'")


class ProviderFallbackError(BackendUnavailableError):
    """An explicitly requested ONNX Runtime execution provider is not what runs the session."""

_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(double)": np.float64}


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailableError("onnxruntime is not installed",
                                      fix="pip install onnxruntime (or onnxruntime-gpu)") from err
    return ort


def default_threads() -> int:
    """The thread count eager PyTorch uses in this process; ORT is pinned to the same."""
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:  # pragma: no cover
        import os

        return os.cpu_count() or 1


def is_fp16_mixed_qdq(path: str | Path) -> bool:
    """True for a Q/DQ graph whose non-quantized parts are fp16 (ORT must skip WeightBiasQuantization)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    if not has_qdq:
        return False
    fp16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == fp16 for init in graph.initializer):
        return True
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return True
    values = list(graph.value_info) + list(graph.input) + list(graph.output)
    return any(v.type.tensor_type.elem_type == fp16 for v in values)


FP16_ON_X86_CPU_NOTE = ("ONNX Runtime's CPU provider has no fp16 Conv kernel on x86: it runs the "
                        "fp16 convs in fp32 and drops their Cast pairs, so this row measures fp16 "
                        "weights, not fp16 arithmetic, and cannot show an fp16 overflow "
                        "(benchmarks/FP16_CPU_FIDELITY.md)")


def _x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cuda_provider_available() -> bool:
    return "CUDAExecutionProvider" in _ort().get_available_providers()


def _device_index(device: str) -> int:
    """CUDA device index for ONNX Runtime's GPU providers (0 for 'cuda' and for 'cpu': where the
    provider would run when an explicitly requested GPU provider is tried from a CPU run)."""
    if device in ("cuda", "gpu", "cpu"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailableError(f"unknown device '{device}' for ONNX Runtime",
                                  fix="pass --device cpu, cuda or cuda:N")


def default_trt_cache_dir(device: str = "cuda") -> Path:
    """Per-user engine/timing cache of ONNX Runtime's TensorRT provider, one per onnxruntime
    version and GPU model: the provider keys engines by model and shapes, not by the versions or
    the GPU that built them, and a stale cache crashes after an upgrade."""
    import re

    from ..artifacts import user_cache_dir

    gpu = "gpu"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(_device_index(device))
    except (ImportError, RuntimeError):
        pass
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"ort-{_ort().__version__}-{gpu}").strip("-")
    return user_cache_dir("ort-tensorrt", tag)


def check_provider(provider: str, allow_fallback: bool = False) -> str:
    """The execution provider name for ``provider`` (cpu | cuda | tensorrt), refusing one this
    onnxruntime build does not offer unless ``allow_fallback`` (then ONNX Runtime falls back)."""
    if provider not in PROVIDERS:
        raise BackendUnavailableError(f"unknown ONNX Runtime provider '{provider}'",
                                      fix=f"use one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    ort = _ort()
    available = ort.get_available_providers()
    if name not in available and not allow_fallback:
        raise ProviderFallbackError(
            f"onnxruntime {ort.__version__} offers no {name} (available: {', '.join(available)})",
            fix=f"{GPU_INSTALL_HINT}; or --allow-provider-fallback to run on what is there")
    return name


def provider_chain(provider: str, device: str, precision: str,
                   trt_cache_dir: str | Path | None = None) -> list[Any]:
    """ONNX Runtime's ``providers`` list for ``provider``: the requested one first, then the ones
    ONNX Runtime falls back to (TensorRT -> CUDA -> CPU)."""
    name = PROVIDERS[provider]
    if name == "CPUExecutionProvider":
        return ["CPUExecutionProvider"]
    index = _device_index(device)
    cuda_opts = {"device_id": str(index)}
    if precision == "fp32":
        cuda_opts["use_tf32"] = "0"  # fp32 means fp32: no TF32 convs/matmuls
    chain: list[Any] = []
    if name == "TensorrtExecutionProvider":
        trt_opts: dict[str, Any] = {"device_id": str(index)}
        if trt_cache_dir is not None:
            Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
            trt_opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(trt_cache_dir),
                            trt_timing_cache_enable="True", trt_timing_cache_path=str(trt_cache_dir))
        chain.append(("TensorrtExecutionProvider", trt_opts))
    return chain + [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]


def _with_outputs(path: Path, names: list[str], types: dict[str, int] | None) -> bytes:
    """The model at ``path`` with ``names`` (intermediate tensors) added as graph outputs."""
    import onnx

    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, (types or {}).get(name, onnx.TensorProto.FLOAT), None))
    return model.SerializeToString()


class OnnxRuntimeRunner:
    """One ``InferenceSession`` on NCHW float32 numpy batches, returning float32 logits."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None, name: str | None = None,
                 disabled_optimizers: list[str] | None = None, output_name: str | None = None,
                 provider: str | None = None, allow_fallback: bool = False,
                 trt_cache_dir: str | Path | None = None, extra_outputs: list[str] | None = None,
                 extra_output_types: dict[str, int] | None = None):
        """``extra_outputs``: intermediate tensors to expose (``named_outputs``), e.g. for
        ``--locate``; ``extra_output_types`` gives their ONNX element types (default float)."""
        ort = _ort()
        self.path = Path(path)
        self.file = self.path.name
        self.precision = precision
        self.threads = int(threads or default_threads())
        self.notes: list[str] = []
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        disabled = list(disabled_optimizers or [])
        fp16_mixed = is_fp16_mixed_qdq(self.path)
        if WEIGHT_BIAS_QUANTIZATION not in disabled and fp16_mixed:
            disabled.append(WEIGHT_BIAS_QUANTIZATION)
            self.notes.append(f"fp16-mixed Q/DQ graph: ORT optimizer {WEIGHT_BIAS_QUANTIZATION} disabled")
        self.disabled_optimizers = disabled
        explicit = provider is not None
        if provider is None:  # device decides: CUDA when asked for and offered, else CPU
            provider = "cuda" if device.startswith("cuda") and cuda_provider_available() else "cpu"
            if device.startswith("cuda") and provider == "cpu":
                self.notes.append("CUDA asked for but this onnxruntime has no CUDAExecutionProvider "
                                  f"({GPU_INSTALL_HINT}): ran on CPU")
        self.requested = check_provider(provider, allow_fallback) if explicit else PROVIDERS[provider]
        providers = provider_chain(provider, device, precision, trt_cache_dir)
        kwargs = {"disabled_optimizers": disabled} if disabled else {}
        with warnings.catch_warnings():  # ORT warns about unavailable providers; we report them
            warnings.simplefilter("ignore", UserWarning)
            source = (_with_outputs(self.path, extra_outputs, extra_output_types) if extra_outputs
                      else str(self.path))
            self.session = ort.InferenceSession(source, sess_options=opts, providers=providers,
                                                **kwargs)
        self.provider = self.session.get_providers()[0]  # what runs, never what was asked for
        if self.provider != self.requested:
            message = (f"asked ONNX Runtime for {self.requested}, it runs on "
                       f"{self.provider} (the requested provider did not load)")
            if explicit and not allow_fallback:
                raise ProviderFallbackError(
                    f"{self.file}: {message}",
                    fix=f"{GPU_INSTALL_HINT}; check ONNX Runtime's log for the provider's load "
                        "error; or --allow-provider-fallback")
            self.notes.append(message)
        self.device = self._check_gpu_options(device, precision)
        if self.provider == "CPUExecutionProvider" and (precision == "fp16" or fp16_mixed) and _x86():
            self.notes.append(FP16_ON_X86_CPU_NOTE)
        short = {"CPUExecutionProvider": "", "CUDAExecutionProvider": " (ort-cuda)",
                 "TensorrtExecutionProvider": " (ort-tensorrt)"}.get(self.provider, f" ({self.provider})")
        self.name = name or f"onnx {precision}{short}"
        self.runtime = f"onnxruntime {ort.__version__}"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _ORT_TO_NUMPY.get(inp.type, np.float32)
        outs = self.session.get_outputs()
        self.output_name = output_name or outs[0].name
        self.input_shape = list(inp.shape)

    def _check_gpu_options(self, device: str, precision: str) -> str:
        """The device the session really runs on. ONNX Runtime's own fall-back (TensorRT -> CUDA)
        retries with default options, so the options in effect are read back, not assumed."""
        if self.provider not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            return "cpu"
        effective = self.session.get_provider_options().get(self.provider, {})
        index = int(effective.get("device_id", 0))
        if index != _device_index(device):
            self.notes.append(f"{self.provider} runs on cuda:{index}, not {device} as asked")
        if precision == "fp32":
            if self.provider == "TensorrtExecutionProvider":
                self.notes.append("fp32 on ONNX Runtime's TensorRT provider may use TF32 (TensorRT's "
                                  "default; the provider has no option to turn it off): compare "
                                  "with --ort-provider cuda for strict fp32")
            elif str(effective.get("use_tf32", "1")).lower() not in ("0", "false"):
                self.notes.append("the CUDA provider runs with TF32 allowed (use_tf32 was not "
                                  "applied): fp32 errors may be TF32-sized")
        return f"cuda:{index}"

    @property
    def fixed_batch(self) -> int | None:
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)

    def named_outputs(self, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """The tensors ``names`` (graph outputs or ``extra_outputs``) for ``batch``."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        return dict(zip(names, self.session.run(list(names), feed)))

    def timed_call(self, batch: np.ndarray):
        """(fn, clock): one inference on an input already staged for the session.

        On CUDA the input and output are bound on the device (I/O binding), so host<->device copies
        are outside the timed region, as for eager on the GPU; ``run_with_iobinding`` returns after
        the device finished, so a wall clock measures the whole run.
        """
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.device.startswith("cuda"):
            ort = _ort()
            index = int(self.device.split(":")[1])
            binding = self.session.io_binding()
            value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", index)
            binding.bind_ortvalue_input(self.input_name, value)
            binding.bind_output(self.output_name, "cuda", index)

            def run_bound() -> None:
                self.session.run_with_iobinding(binding)

            return run_bound, "perf_counter"
        feed = {self.input_name: x}
        names = [self.output_name]

        def run() -> None:
            self.session.run(names, feed)

        return run, "perf_counter"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "precision": self.precision,
                "runtime": self.runtime, "provider": self.provider, "threads": self.threads,
                "disabled_optimizers": self.disabled_optimizers, "notes": list(self.notes)}


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None, provider: str | None = None,
                allow_fallback: bool = False, trt_cache_dir: str | Path | None = None
                ) -> OnnxRuntimeRunner:
    """Runner for one manifest entry of format ``onnx`` (``provider``: cpu | cuda | tensorrt;
    default: CUDA when ``device`` is a CUDA device and onnxruntime-gpu is installed, else CPU)."""
    details = artifact.get("details") or {}
    return OnnxRuntimeRunner(Path(directory) / artifact["file"], precision=artifact.get("precision", "fp32"),
                             device=device, threads=threads,
                             disabled_optimizers=details.get("ort_disabled_optimizers"),
                             provider=provider, allow_fallback=allow_fallback,
                             trt_cache_dir=trt_cache_dir)
