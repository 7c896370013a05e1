"""OpenVINO IR: ``<stem>[.<precision>].openvino.xml`` + ``.bin``, converted from the export's
verified FP32 ONNX; run by ``openvino.Core().compile_model`` on the CPU.

* fp32: f32 weights; fp16: weights compressed to f16 (``save_model(compress_to_fp16=True)``);
* int8: our own Q/DQ ONNX (``quantize_stage(..., target="cpu")``, the request's calibration and
  budget) read by OpenVINO, so the accuracy is ours and the kernels are OpenVINO's.

The runner sets ``INFERENCE_PRECISION_HINT`` explicitly (OpenVINO defaults to bf16 on CPUs with
AMX/AVX-512 BF16; an fp32 row must run f32) and ``INFERENCE_NUM_THREADS``, reads both back from
the compiled model and reports them (``provider`` "CPU f32", ``threads``); a compiled model that
does not run what was asked is an error, never a relabelled row.
"""
from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ExportError, UsageError
from . import registry
from ..scratch import scratch_dir

# artifact precision -> the compute precision its row runs with (f16 only where the CPU has it)
COMPUTE = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


def _ov():
    # OpenVINO's converter sends usage telemetry from child processes when openvino_telemetry
    # imports (they tried the network offline and printed tracebacks on Ctrl-C); without it the
    # converter uses its own stub. This process only: nothing is written to the user's consent file.
    sys.modules.setdefault("openvino_telemetry", None)
    return registry.require_module(registry.get("openvino"), "openvino")


def version() -> str:
    """The installed openvino distribution's version ('2026.4.1'; ``__version__`` has a build tag)."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return _ov().__version__.split("-")[0]


def _suffix(precision: str) -> str:
    return "" if precision == "fp32" else f".{precision}"


def _save(ov, model, xml: Path, precision: str, compress: bool, **details: Any) -> dict[str, Any]:
    from ..artifacts import artifact_entry

    ov.save_model(model, str(xml), compress_to_fp16=compress)
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    return artifact_entry(xml, "openvino", precision, companions=(xml.with_suffix(".bin"),),
                          openvino=version(),
                          weights={"fp32": "f32", "fp16": "f16 (compressed)",
                                   "int8": "int8 per-channel (Q/DQ)"}[precision],
                          ops=sum(ops.values()), op_types=dict(ops.most_common()), **details)


def _convert(ov, onnx_path: Path):
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as err:  # noqa: BLE001 - the converter raises many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"OpenVINO could not convert {onnx_path.name}: {first}",
                          fix="export --format onnx and run that with ONNX Runtime") from err


def export(ctx) -> list[dict[str, Any]]:
    """The FP32 IR, plus the FP16 or INT8 IR when ``--precision`` asks for it."""
    ov = _ov()
    if ctx.onnx_path is None:  # pragma: no cover - the pipeline passes it for from_onnx backends
        raise ExportError("the OpenVINO backend needs the export's FP32 ONNX")
    start = time.perf_counter()
    model = _convert(ov, ctx.onnx_path)
    source = f"{ctx.onnx_path.name} (the export's verified FP32 ONNX)"
    entries = [_save(ov, model, ctx.stage / f"{ctx.stem}.openvino.xml", "fp32", False,
                     source=source, seconds=round(time.perf_counter() - start, 3))]
    if ctx.precision == "fp16":
        entries.append(_save(ov, model, ctx.stage / f"{ctx.stem}.fp16.openvino.xml", "fp16", True,
                             source=source))
    elif ctx.precision == "int8":
        entries.append(_int8(ctx, ov))
    return entries


def check_request(request) -> None:
    """INT8 IR is the cpu Q/DQ placement: another --target is refused before any export work."""
    target = (request.quant or {}).get("target") or "cpu"
    if request.precision == "int8" and target != "cpu":
        raise UsageError(f"--format openvino --precision int8 uses the cpu Q/DQ placement; "
                         f"--target {target} was asked",
                         fix="drop --target (or pass --target cpu) for OpenVINO; export the "
                             f"{target} placement with a separate `--format onnx --target {target}`")


def _int8(ctx, ov) -> dict[str, Any]:
    """Our Q/DQ ONNX (cpu placement, same calibration options and budget as the ONNX path) -> IR."""
    from ..pipeline import quant_options_record
    from ..quantize import quantize_stage

    quant = dict(ctx.request.quant)
    quant.pop("target", None)  # only "cpu" gets here: check_request refused any other up front
    cache = f"{ctx.stem}.int8.calib.json"
    with scratch_dir("openvino") as scratch:
        scratch = Path(scratch)
        if (ctx.stage / cache).is_file():  # the ONNX path's (or an earlier export's) ranges
            shutil.copy2(ctx.stage / cache, scratch / cache)
        qdq = quantize_stage(ctx.onnx_path, scratch, ctx.recipe, ctx.spec, "int8", target="cpu",
                             speed_guard=False, log=ctx.log, **quant)  # OpenVINO, not ORT, runs it
        model = _convert(ov, scratch / qdq["file"])
        entry = _save(ov, model, ctx.stage / f"{ctx.stem}.int8.openvino.xml", "int8", False,
                      source=f"{qdq['file']} (our Q/DQ ONNX, sha256 {qdq['sha256'][:12]}, read by "
                             "OpenVINO)",
                      quantize=qdq.get("details", {}), options=quant_options_record(ctx.request.quant))
        if (scratch / cache).is_file():
            shutil.copy2(scratch / cache, ctx.stage / cache)
    return entry


def cpu_has(ov, capability: str) -> bool:
    return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _type_name(value: Any) -> str:
    """'f32' for OpenVINO's ``Type: 'float32'`` (``get_type_name``), else ``str(value)``."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


class OpenVINORunner:
    """One compiled model on the CPU, f32 in and out, with the compute precision it really uses."""

    def __init__(self, xml: str | Path, *, precision: str = "fp32", threads: int | None = None,
                 inference_precision: str | None = None, device: str = "cpu"):
        from .onnxruntime import default_threads

        ov = _ov()
        self.path = Path(xml)
        self.file = self.path.name
        self.precision = precision
        self.notes: list[str] = []
        hint = inference_precision or COMPUTE[precision]
        if hint == "f16" and not cpu_has(ov, "FP16"):
            hint = "f32"
            self.notes.append("this CPU has no FP16 compute in OpenVINO: f16 weights, f32 compute")
        config = {"INFERENCE_PRECISION_HINT": hint,
                  "INFERENCE_NUM_THREADS": int(threads or default_threads()),
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        self.inference_precision = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        if self.inference_precision != hint:
            raise BackendUnavailableError(
                f"{self.file}: asked OpenVINO for {hint} compute, the compiled model runs "
                f"{self.inference_precision}", fix="report this OpenVINO version; use the ONNX artifact")
        if not device.startswith("cpu"):
            self.notes.append(f"OpenVINO runs on the CPU here (its GPU plugin is for Intel GPUs), not {device}")
        self.kernels = self._kernel_precisions()
        self.notes.append(f"INFERENCE_PRECISION_HINT={self.inference_precision}, INFERENCE_NUM_THREADS="
                          f"{self.threads} (read back); convolutions ran in "
                          + ", ".join(f"{self._kernel_label(k)} x{v}"
                                      for k, v in sorted(self.kernels.items())))
        self.name = f"openvino {precision} ({self.inference_precision} compute)"
        self.runtime = f"openvino {version()}"
        int8 = "int8 kernels + " if {"u8", "i8"} & set(self.kernels) else ""
        self.provider = f"CPU {int8}{self.inference_precision}"
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None

    def _kernel_label(self, precision: str) -> str:
        """A convolution's runtime precision as it computes: OpenVINO reports 'f16' for f16
        weights that an f32-compute model decompresses and runs in f32."""
        if precision == "f16" and self.inference_precision == "f32":
            return "f32 (f16 weights)"
        return precision

    def _kernel_precisions(self) -> dict[str, int]:
        """Runtime precision of each convolution in the compiled graph ('f32', 'u8', 'i8', ...)."""
        counts: Counter = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "Convolution" in str(info["layerType"].astype(str) if "layerType" in info else ""):
                counts[info["runtimePrecision"].astype(str)] += 1
        return dict(counts)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)

    def timed_call(self, batch: np.ndarray):
        """(fn, clock): one inference on an input tensor already set on the request."""
        ov = _ov()
        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(batch, dtype=np.float32)))
        return self.request.infer, "perf_counter"


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None, inference_precision: str | None = None) -> OpenVINORunner:
    """Runner for one manifest entry of format ``openvino`` (``inference_precision``: f32 | bf16 |
    f16 overrides the artifact's default compute, and the row names it)."""
    return OpenVINORunner(Path(directory) / artifact["file"], precision=artifact.get("precision", "fp32"),
                          threads=threads, inference_precision=inference_precision, device=device)
