"""ncnn: ``<stem>[.fp16].ncnn.param`` + ``.ncnn.bin`` converted by pnnx from the traced model
(TorchScript, the path ncnn recommends), run through the ``ncnn`` Python bindings on the CPU.

* fp32: f32 weights (pnnx ``fp16=0``); the runner turns fp16 storage, packing and arithmetic off
  (ncnn turns them on by default), so the row is the FP32 parity row;
* fp16: f16 weights; the runner turns fp16 storage, packing and arithmetic on and checks on one
  input whether the arithmetic switch changes anything on this CPU: where it does not (x86 has
  fp16 storage but no fp16 arithmetic in ncnn), the row says "fp16 storage, fp32 arithmetic";
* int8: not available here (registry line: ncnn's quantization tools are not in the wheels).

ncnn has no batch axis: pnnx traces batch 1 and the runner runs a batch sample by sample.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ExportError, PrecisionError
from . import registry
from ..scratch import scratch_dir

PNNX_TIMEOUT_S = 900


def _backend():
    return registry.get("ncnn")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


def param_summary(param: Path) -> dict[str, Any]:
    """Layer count, layer types, and the input/output blob names of an ncnn ``.param`` file."""
    lines = Path(param).read_text().split("\n")
    layers = [line.split() for line in lines[2:] if line.strip()]
    types = Counter(fields[0] for fields in layers)
    inputs = [fields[1] for fields in layers if fields[0] == "Input"]
    produced = {b for f in layers for b in f[4 + int(f[2]):4 + int(f[2]) + int(f[3])]}
    consumed = {b for f in layers for b in f[4:4 + int(f[2])]}
    return {"layers": len(layers), "layer_types": dict(types.most_common()), "inputs": inputs,
            "outputs": sorted(produced - consumed)}


def _pnnx(ts_path: Path, shape: list[int], fp16: bool, param: Path, scratch: Path) -> None:
    """Run the pnnx converter on ``ts_path``; every side file lands in ``scratch``."""
    pnnx = registry.require_module(_backend(), "pnnx")
    stem = scratch / "model"
    command = [pnnx.EXEC_PATH, str(ts_path), f"inputshape={shape}".replace(" ", ""), "device=cpu",
               f"fp16={int(fp16)}", f"ncnnparam={param}", f"ncnnbin={param.with_suffix('.bin')}",
               f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin", f"pnnxpy={stem}_pnnx.py",
               f"pnnxonnx={stem}.pnnx.onnx", f"ncnnpy={stem}_ncnn.py"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=scratch,
                              timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise ExportError(f"pnnx did not finish in {PNNX_TIMEOUT_S} s",
                          fix="export --format onnx instead") from err
    if done.returncode != 0 or not param.is_file() or not param.with_suffix(".bin").is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ExportError(f"pnnx could not convert the traced model to ncnn (exit {done.returncode}): "
                          f"{tail}", fix="export --format onnx (or openvino) instead")
    check_converted(param)


def check_converted(param: Path) -> None:
    """Refuse a ``.param`` holding ops pnnx could not map: it keeps them under their torch/pnnx
    names (``torch.index_select``), which ncnn cannot load."""
    unconverted = sorted({t for t in param_summary(param)["layer_types"] if "." in t})
    if unconverted:
        raise ExportError(f"ncnn has no layer for {', '.join(unconverted)} (pnnx left it unconverted)",
                          fix="export --format onnx (or openvino) instead, or write that op with "
                              "ops ncnn has")


def export(ctx) -> list[dict[str, Any]]:
    """The FP32 ncnn model, plus the FP16-weight one for ``--precision fp16``."""
    from ..artifacts import artifact_entry
    from ..export import export_torchscript
    from ..zoo.shufflenet_v1 import shuffles_as_reshape

    if ctx.precision in _backend().unavailable:  # the pipeline refuses it first; kept for direct calls
        raise PrecisionError(f"--format ncnn --precision {ctx.precision}: "
                             f"{_backend().unavailable[ctx.precision]}")
    registry.require_module(_backend(), "ncnn")  # the runtime that will run it, checked up front
    shape = [1, ctx.spec.channels, *ctx.spec.size]
    entries = []
    with scratch_dir("ncnn") as scratch:
        scratch = Path(scratch)
        ts_path = scratch / f"{ctx.stem}.ts.pt"
        with shuffles_as_reshape(ctx.deploy) as reshaped:  # pnnx maps reshape-transpose, not index_select
            export_torchscript(ctx.deploy, ctx.spec, ts_path)
        for precision in ("fp32",) + ((ctx.precision,) if ctx.precision != "fp32" else ()):
            start = time.perf_counter()
            suffix = "" if precision == "fp32" else f".{precision}"
            param = scratch / f"{ctx.stem}{suffix}.ncnn.param"
            _pnnx(ts_path, shape, precision == "fp16", param, scratch)
            for path in (param, param.with_suffix(".bin")):
                shutil.move(str(path), ctx.stage / path.name)
            staged = ctx.stage / param.name
            entries.append(artifact_entry(
                staged, "ncnn", precision, companions=(staged.with_suffix(".bin"),),
                pnnx=_version("pnnx"), ncnn=_version("ncnn"), source="traced model (TorchScript) -> pnnx",
                traced_input_shape=shape, weights="f32" if precision == "fp32" else "f16",
                channel_shuffles_as_reshape=reshaped,
                seconds=round(time.perf_counter() - start, 3), **param_summary(staged)))
    return entries


def _options(net, fp16: bool, threads: int) -> None:
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.num_threads = threads
    opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = fp16
    opt.use_bf16_storage = False


class NcnnRunner:
    """One ``ncnn.Net`` on the CPU; a batch is run sample by sample (ncnn has no batch axis)."""

    def __init__(self, param: str | Path, sample_shape: tuple[int, ...], *, precision: str = "fp32",
                 threads: int | None = None, device: str = "cpu"):
        """``sample_shape``: (C, H, W) of one input (the traced shape without its batch axis)."""
        from .onnxruntime import default_threads

        self.ncnn = registry.require_module(_backend(), "ncnn")
        self.path = Path(param)
        self.sample_shape = tuple(int(v) for v in sample_shape)
        self.file = self.path.name
        self.precision = precision
        self.threads = int(threads or default_threads())
        self.notes: list[str] = []
        self.fp16 = precision == "fp16"
        self.net = self._load(self.fp16)
        self.input_name, self.output_name = self.net.input_names()[0], self.net.output_names()[0]
        self.arithmetic = "fp16" if self.fp16 else "fp32"
        if self.fp16 and not self._fp16_arithmetic_changes_results():
            self.arithmetic = "fp32"
            self.notes.append("fp16 arithmetic asked for; on this CPU ncnn gives bit-identical results "
                              "with it off, so it ran fp16 storage with fp32 arithmetic")
        storage = "fp16 storage, " if self.fp16 else ""
        self.name = f"ncnn {precision} ({storage}{self.arithmetic} arithmetic)"
        self.provider = f"CPU {storage}{self.arithmetic} arithmetic"
        self.runtime = f"ncnn {_version('ncnn')}"
        self.notes.append(f"ncnn options: fp16 storage/packed/arithmetic {'on' if self.fp16 else 'off'}, "
                          f"bf16 off, vulkan off, {self.threads} threads; batch run sample by sample")
        if not device.startswith("cpu"):
            self.notes.append(f"ncnn runs on the CPU here (Vulkan off), not {device}")

    def _load(self, fp16: bool, arithmetic: bool | None = None):
        net = self.ncnn.Net()
        _options(net, fp16, self.threads)
        if arithmetic is not None:
            net.opt.use_fp16_arithmetic = arithmetic
        bin_path = self.path.with_suffix(".bin")
        if net.load_param(str(self.path)) != 0 or net.load_model(str(bin_path)) != 0:
            raise BackendUnavailableError(f"ncnn could not load {self.file} / {bin_path.name}",
                                          fix="re-export with `exporter export MODEL --format ncnn`")
        return net

    def _fp16_arithmetic_changes_results(self) -> bool:
        probe = np.random.default_rng(0).standard_normal(self.sample_shape).astype(np.float32)
        storage_only = self._load(True, arithmetic=False)
        return not np.array_equal(self._one(self.net, probe), self._one(storage_only, probe))

    def _one(self, net, sample: np.ndarray) -> np.ndarray:
        extractor = net.create_extractor()
        extractor.input(self.input_name, self.ncnn.Mat(sample))
        code, out = extractor.extract(self.output_name)
        if code != 0:
            raise RuntimeError(f"ncnn extract('{self.output_name}') returned {code}")
        return np.array(out, dtype=np.float32).reshape(-1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.stack([self._one(self.net, sample) for sample in batch])


def make_runner(artifact: dict[str, Any], directory: Path, device: str = "cpu",
                threads: int | None = None) -> NcnnRunner:
    """Runner for one manifest entry of format ``ncnn``."""
    shape = (artifact.get("details") or {}).get("traced_input_shape")
    if not shape:
        raise BackendUnavailableError(f"{artifact['file']}: the manifest entry has no traced_input_shape",
                                      fix="re-export with `exporter export MODEL --format ncnn`")
    return NcnnRunner(Path(directory) / artifact["file"], tuple(shape[1:]),
                      precision=artifact.get("precision", "fp32"), threads=threads, device=device)
