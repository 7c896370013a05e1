"""TensorRT engines on a real GPU: fp32 / fp16 / int8 builds, parity with eager CUDA, speed-up,
engine cache reuse and the refusal of stale engines. Skipped without TensorRT and a CUDA GPU."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]
trt = pytest.importorskip("tensorrt", reason="needs TensorRT: pip install 'zoo-exporter[tensorrt]' "
                                             "on a machine with an NVIDIA GPU")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)", allow_module_level=True)

from exporter.backends.tensorrt import (EngineMismatchError, build_engine, gpu_latency,  # noqa: E402
                                        make_runner)
from exporter.errors import InputSpecError  # noqa: E402
from exporter.lint import lint_onnx  # noqa: E402
from exporter.metrics import compare_outputs  # noqa: E402
from exporter.recipes import DEFAULT_TOLERANCES, InputSpec  # noqa: E402

SIZE, BATCH = 224, 8
SPEC = InputSpec(size=(SIZE, SIZE))
MODELS = ("resnet18", "mobilenet_v3_small")


@pytest.fixture(scope="module", autouse=True)
def strict_fp32_reference():
    """Eager reference in true fp32 (cuDNN would otherwise use TF32 for convolutions)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _export(directory, name, precision, **quant):
    """The exporter's own artifacts (what `exporter build` consumes): BN folded, simplified,
    quantized by our stage; random init with randomized BN statistics."""
    from exporter.pipeline import ExportRequest, export

    return export(ExportRequest(model=name, input_size=SIZE, precision=precision, quant=quant,
                                output=directory))


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """(name, eager CUDA reference, directory, fp32 ONNX path, fp16 ONNX path)."""
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    result = _export(directory, name, "fp16")
    return (name, result.reference.cuda(), directory, directory / f"{name}.onnx",
            directory / f"{name}.fp16.onnx")


def _inputs(n=BATCH, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def _eager(model):
    @torch.inference_mode()
    def run(x):
        return model(torch.from_numpy(x).cuda()).float().cpu().numpy()
    return run


def _build(onnx_path, directory, precision, max_batch=BATCH, **kwargs):
    return build_engine(onnx_path, directory, precision, 1, BATCH, max_batch, 1 << 30,
                        directory / "timing.cache", SPEC, **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_parity_and_speed(exported, precision):
    name, model, directory, fp32, fp16 = exported
    onnx_path = fp32 if precision == "fp32" else fp16
    assert lint_onnx(onnx_path, precision).ok
    entry = _build(onnx_path, directory, precision)
    details = entry["details"]
    assert entry["format"] == "tensorrt" and entry["precision"] == precision
    assert details["tensorrt_version"] == trt.__version__ and details["strongly_typed"]
    assert details["profile"]["max"] == [BATCH, 3, SIZE, SIZE]
    runner = make_runner(entry, directory, "cuda")
    assert runner.precision == precision and runner.provider.startswith("cuda:")
    x = _inputs()
    eager = _eager(model)
    reference, candidate = eager(x), runner(x)
    assert candidate.dtype == np.float32 and candidate.shape == reference.shape
    metrics = compare_outputs(reference, candidate)
    tol = DEFAULT_TOLERANCES[precision]
    assert metrics["rel_max_abs"] <= tol.rel_max_abs * (10 if precision == "fp32" else 1), metrics
    assert metrics["top1_agreement"] >= tol.min_top1_agreement, metrics
    assert metrics["cosine"] >= tol.min_cosine, metrics
    small = runner(x[:1])  # any batch inside the profile
    np.testing.assert_allclose(small, candidate[:1], rtol=0, atol=metrics["max_abs"] * 4 + 1e-5)
    t_eager = gpu_latency(eager, x, warmup=5, iters=20)["median_ms"]
    t_trt = gpu_latency(runner, x, warmup=5, iters=20)["median_ms"]
    print(f"{name} {precision}: eager {t_eager:.2f} ms, TensorRT {t_trt:.2f} ms, "
          f"speed-up {t_eager / t_trt:.2f}x, {metrics}")
    if precision == "fp16":
        assert t_trt < t_eager, (t_trt, t_eager)


def test_engine_cache_reuse_and_rebuild(exported):
    name, _, directory, fp32, _ = exported
    first = _build(fp32, directory, "fp32")
    engine = directory / first["file"]
    mtime = engine.stat().st_mtime_ns
    again = _build(fp32, directory, "fp32")
    assert again["details"]["cached"] and again["sha256"] == first["sha256"]
    assert engine.stat().st_mtime_ns == mtime
    rebuilt = _build(fp32, directory, "fp32", max_batch=2 * BATCH)
    assert not rebuilt["details"]["cached"] and rebuilt["file"] == first["file"]
    assert rebuilt["details"]["profile"]["max"][0] == 2 * BATCH
    assert rebuilt["details"]["timing_cache"]["state"] == "loaded"
    runner = make_runner(rebuilt, directory, "cuda")
    with pytest.raises(InputSpecError, match="outside the engine profile"):
        runner(_inputs(2 * BATCH + 1))


def test_stale_engine_is_refused_before_deserializing(exported, tmp_path):
    name, _, directory, fp32, _ = exported
    entry = _build(fp32, directory, "fp32")
    copy = tmp_path / entry["file"]
    copy.write_bytes((directory / entry["file"]).read_bytes())
    manifest = dict(entry["details"], tensorrt_version="9.0.0")
    (tmp_path / (entry["file"] + ".json")).write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatchError, match="TensorRT 9.0.0"):
        make_runner(entry, tmp_path, "cuda")


def test_int8_qdq_engine(exported, tmp_path):
    name, model, _, _, _ = exported
    _export(tmp_path, name, "int8", calibration="packaged:0", samples=32)
    int8 = tmp_path / f"{name}.int8.tensorrt.onnx"
    report = lint_onnx(int8, "int8")
    assert report.ok, report.render()
    entry = _build(int8, tmp_path, "int8")
    runner = make_runner(entry, tmp_path, "cuda")
    x = _inputs()
    metrics = compare_outputs(_eager(model)(x), runner(x))
    print(f"{name} int8: {metrics}")
    assert np.isfinite(metrics["max_abs"]) and metrics["cosine"] >= 0.8, metrics


def test_parity_cli_includes_the_engine(tmp_path):
    """`exporter build` then `exporter parity`: the engine is a row of the report, run on the GPU
    with torch CUDA buffers and timed with CUDA events like eager."""
    from exporter.cli import main

    out = tmp_path / "mv3"
    assert main(["build", "mobilenet_v3_small", "--precision", "fp16", "--input-size", str(SIZE),
                 "--output", str(out), "--max-batch", "8", "--timing-cache",
                 str(tmp_path / "timing.cache")]) == 0
    assert main(["parity", "--artifacts", str(out), "--device", "cuda", "--runs", "10",
                 "--report", str(tmp_path / "rep")]) == 0
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {a["format"] + ":" + a["precision"]: a for a in data["reports"][0]["artifacts"]}
    engine = rows["tensorrt:fp16"]
    assert engine["status"] == "ok" and engine["provider"].startswith("cuda:")
    assert {s["clock"] for s in engine["latency"].values()} == {"cuda-events"}
    assert data["reports"][0]["eager"]["provider"].startswith("cuda")
