"""ONNX Runtime execution providers: an explicit request is honoured or refused, never silently
changed, and the report names the provider that actually ran (``session.get_providers()``).

On this CPU machine the real CPU-only onnxruntime build is the fall-back case itself: asking it for
the CUDA or TensorRT provider must fail, or with ``--allow-provider-fallback`` run on CPU and say so.
The ``gpu`` test runs the CUDA provider where onnxruntime-gpu and a GPU are present.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.backends.onnxruntime import (FP16_ON_X86_CPU_NOTE, PROVIDERS, OnnxRuntimeRunner,
                                           ProviderFallbackError, _x86, check_provider, provider_chain)
from exporter.cli import main


def _available() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


needs_cpu_only_ort = pytest.mark.skipif(
    "CUDAExecutionProvider" in _available(), reason="this onnxruntime offers the CUDA provider")


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from exporter.pipeline import ExportRequest, export

    out = tmp_path_factory.mktemp("ort-providers") / "lenet5"
    return export(ExportRequest(model="lenet5", formats=("onnx",), output=out, verify=False))


def _inputs(n=4):
    return np.random.default_rng(0).standard_normal((n, 1, 32, 32)).astype(np.float32)


def test_provider_chain_order_and_options(tmp_path):
    chain = provider_chain("tensorrt", "cuda:1", "fp32", trt_cache_dir=tmp_path / "c")
    assert [p if isinstance(p, str) else p[0] for p in chain] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_opts, cuda_opts = chain[0][1], chain[1][1]
    assert trt_opts["device_id"] == cuda_opts["device_id"] == "1"
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    assert cuda_opts["use_tf32"] == "0"  # fp32 stays fp32 on the CUDA provider
    assert "use_tf32" not in provider_chain("cuda", "cuda", "fp16")[0][1]
    assert provider_chain("cpu", "cuda", "fp32") == ["CPUExecutionProvider"]


@needs_cpu_only_ort
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_provider_is_refused_with_the_fix(provider):
    with pytest.raises(ProviderFallbackError) as err:
        check_provider(provider)
    assert PROVIDERS[provider] in err.value.message and "CPUExecutionProvider" in err.value.message
    assert "onnxruntime-gpu" in err.value.fix and "--allow-provider-fallback" in err.value.fix
    assert check_provider(provider, allow_fallback=True) == PROVIDERS[provider]


@needs_cpu_only_ort
def test_runner_refuses_or_reports_the_fallback(lenet):
    path = lenet.directory / "lenet5.onnx"
    with pytest.raises(ProviderFallbackError, match="offers no CUDAExecutionProvider"):
        OnnxRuntimeRunner(path, provider="cuda", device="cuda")
    runner = OnnxRuntimeRunner(path, provider="tensorrt", allow_fallback=True, device="cuda")
    cpu = OnnxRuntimeRunner(path)
    assert runner.requested == "TensorrtExecutionProvider"
    assert runner.provider == runner.session.get_providers()[0] == "CPUExecutionProvider"
    assert runner.device == "cpu" and runner.name == "onnx fp32"
    assert any("asked ONNX Runtime for TensorrtExecutionProvider, it runs on CPUExecutionProvider"
               in n for n in runner.notes)
    x = _inputs()
    np.testing.assert_array_equal(runner(x), cpu(x))


@needs_cpu_only_ort
def test_cli_refuses_before_exporting(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["parity", "lenet5", "--output", str(out), "--ort-provider", "tensorrt",
                 "--no-latency"]) == 5  # EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert "offers no TensorrtExecutionProvider" in err and "fix:" in err
    assert not out.exists()


@pytest.mark.parametrize("argv,text", [
    (["--ort-provider", "cuda", "--device", "cpu"], "--device cpu was asked for"),
    (["--allow-provider-fallback"], "goes with --ort-provider"),
])
def test_cli_contradictory_provider_options(argv, text, tmp_path, capsys):
    assert main(["parity", "lenet5", "--output", str(tmp_path / "a"), *argv]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@needs_cpu_only_ort
def test_report_states_the_provider_that_ran(lenet, tmp_path, capsys):
    rc = main(["parity", "--artifacts", str(lenet.directory), "--ort-provider", "cuda",
               "--allow-provider-fallback", "--no-latency", "--samples", "4", "--random", "2",
               "--report", str(tmp_path / "rep")])
    assert rc == 0
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    (row,) = [a for a in data["reports"][0]["artifacts"] if a["format"] == "onnx"]
    assert row["provider"] == "CPUExecutionProvider" and row["status"] == "ok"
    assert row["summary"]["rel_max_abs"] < 1e-5
    assert any("asked ONNX Runtime for CUDAExecutionProvider" in n for n in row["notes"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "CPUExecutionProvider" in md


@pytest.mark.gpu
def test_cuda_provider_runs_on_the_gpu(lenet):
    if "CUDAExecutionProvider" not in _available():
        pytest.skip("needs onnxruntime-gpu: pip install 'zoo-exporter[gpu]'")
    path = lenet.directory / "lenet5.onnx"
    runner = OnnxRuntimeRunner(path, provider="cuda", device="cuda")
    assert runner.provider == "CUDAExecutionProvider" and runner.device == "cuda:0"
    assert not any("TF32" in n for n in runner.notes), runner.notes  # use_tf32=0 took effect
    x = _inputs(8)
    ref = OnnxRuntimeRunner(path)(x)
    got = runner(x)
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))
    fn, clock = runner.timed_call(x)
    fn()  # I/O bound on the device


def test_tensorrt_provider_cache_is_per_onnxruntime_version(tmp_path, monkeypatch):
    import onnxruntime as ort

    from exporter.backends.onnxruntime import default_trt_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_trt_cache_dir()
    assert path.parent == tmp_path / "zoo-exporter" / "ort-tensorrt"
    assert path.name.startswith(f"ort-{ort.__version__}-") and "/" not in path.name


@pytest.mark.skipif(not _x86(), reason="the note is about ONNX Runtime's x86 CPU kernels")
def test_cpu_row_of_an_fp16_graph_says_it_measures_fp16_weights(lenet, tmp_path):
    """An fp16 graph (or an INT8 graph with fp16 parts) on the x86 CPU provider says its row is
    fp16 weights with fp32 arithmetic; an fp32 graph says nothing of the kind."""
    from exporter.quantize import quantize_stage
    from exporter.recipes import get_recipe

    fp32, recipe = lenet.directory / "lenet5.onnx", get_recipe("lenet5")
    fp16 = quantize_stage(fp32, tmp_path, recipe, recipe.input, "fp16")
    runner = OnnxRuntimeRunner(tmp_path / fp16["file"], precision="fp16")
    assert runner.provider == "CPUExecutionProvider" and FP16_ON_X86_CPU_NOTE in runner.notes
    assert FP16_ON_X86_CPU_NOTE not in OnnxRuntimeRunner(fp32).notes
