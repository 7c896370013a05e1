"""ONNX Runtime runner: CPU, or the CUDA execution provider where it is installed and asked for.

``provider`` is what ONNX Runtime actually put first (``session.get_providers()[0]``), never what
was requested: asking for CUDA on a CPU-only onnxruntime build gives ``CPUExecutionProvider`` and a
note saying so. Intra-op threads are fixed (default: ``torch.get_num_threads()``, so eager and ORT
run with the same count) and reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

# onnxruntime 1.32's CPU pass that quantizes float weights/biases feeding Q/DQ pairs; it wrecks
# Q/DQ graphs whose non-quantized parts are fp16 (measured: top-1 agreement 0.04 instead of ~0.7).
WEIGHT_BIAS_QUANTIZATION = "WeightBiasQuantization"

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


def cuda_provider_available() -> bool:
    return "CUDAExecutionProvider" in _ort().get_available_providers()


class OnnxRuntimeRunner:
    """One ``InferenceSession`` on NCHW float32 numpy batches, returning float32 logits."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None, name: str | None = None,
                 disabled_optimizers: list[str] | None = None, output_name: str | None = None,
                 extra_outputs: bool = False):
        ort = _ort()
        self.path = Path(path)
        self.file = self.path.name
        self.precision = precision
        self.name = name or f"onnx {precision}"
        self.threads = int(threads or default_threads())
        self.notes: list[str] = []
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        disabled = list(disabled_optimizers or [])
        if WEIGHT_BIAS_QUANTIZATION not in disabled and is_fp16_mixed_qdq(self.path):
            disabled.append(WEIGHT_BIAS_QUANTIZATION)
            self.notes.append(f"fp16-mixed Q/DQ graph: ORT optimizer {WEIGHT_BIAS_QUANTIZATION} disabled")
        self.disabled_optimizers = disabled
        providers: list[Any] = ["CPUExecutionProvider"]
        self.device = "cpu"
        if device.startswith("cuda"):
            if cuda_provider_available():
                index = int(device.split(":")[1]) if ":" in device else 0
                cuda_opts = {"device_id": str(index)}
                if precision == "fp32":
                    cuda_opts["use_tf32"] = "0"  # fp32 means fp32: no TF32 convs/matmuls
                providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
                self.device = f"cuda:{index}"
            else:
                self.notes.append("CUDA asked for but this onnxruntime has no CUDAExecutionProvider "
                                  "(pip install onnxruntime-gpu): ran on CPU")
        kwargs = {"disabled_optimizers": disabled} if disabled else {}
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=providers, **kwargs)
        except Exception as err:
            if providers[0] != "CPUExecutionProvider" and "use_tf32" in str(err):
                providers = [("CUDAExecutionProvider", {"device_id": providers[0][1]["device_id"]}),
                             "CPUExecutionProvider"]
                self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                    providers=providers, **kwargs)
            else:
                raise
        self.provider = self.session.get_providers()[0]
        if self.device.startswith("cuda") and self.provider != "CUDAExecutionProvider":
            self.notes.append(f"CUDA provider did not load; ORT runs on {self.provider}")
            self.device = "cpu"
        self.runtime = f"onnxruntime {ort.__version__}"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _ORT_TO_NUMPY.get(inp.type, np.float32)
        outs = self.session.get_outputs()
        self.output_name = output_name or outs[0].name
        self.input_shape = list(inp.shape)

    @property
    def fixed_batch(self) -> int | None:
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)

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
                threads: int | None = None) -> OnnxRuntimeRunner:
    """Runner for one manifest entry of format ``onnx``."""
    details = artifact.get("details") or {}
    return OnnxRuntimeRunner(Path(directory) / artifact["file"], precision=artifact.get("precision", "fp32"),
                             device=device, threads=threads,
                             disabled_optimizers=details.get("ort_disabled_optimizers"),
                             name=f"onnx {artifact.get('precision', 'fp32')}")
