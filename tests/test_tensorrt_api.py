"""The TensorRT backend on a machine without TensorRT: API hygiene, lazy imports, clean refusal.

The removed-API list follows NVIDIA's TensorRT 10.x deprecations that TensorRT 11.0 removed
(release notes / API migration guide): the implicit INT8 calibrator classes and
``int8_calibrator`` / ``set_dynamic_range`` (deprecated 10.1), the weak-typing precision builder
flags FP16/INT8/BF16/FP8 and per-layer precision controls (deprecated 10.12), plus the APIs gone
since 8.x/10.0: ``max_workspace_size``, ``Builder.build_engine``, ``execute_async_v2``,
``EXPLICIT_BATCH`` and the binding-index accessors. Both lists, and every TensorRT name the backend
uses, are checked against the names of real releases (10.8, 10.16, 11.0, 11.4) that
``scripts/tensorrt_api_names.py`` read from their PyPI bindings wheels (``tests/data/tensorrt_api``).
"""
from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import exporter.backends.tensorrt as trt_backend
from exporter.errors import BackendUnavailableError

PACKAGE = Path(trt_backend.__file__).parent
SOURCES = sorted(PACKAGE.glob("*.py"))  # every module of the backend package

# BuilderFlag members of weakly typed networks (deprecated 10.12, removed 11.0)
REMOVED_BUILDER_FLAGS = {"FP16", "INT8", "BF16", "FP8", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                         "PREFER_PRECISION_CONSTRAINTS"}
REMOVED_ATTRIBUTES = {
    # per-layer precision control (deprecated 10.12, removed 11.0)
    "set_output_type", "precision_is_set", "reset_precision", "reset_output_type",
    # implicit quantization (deprecated 10.1, removed 11.0)
    "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "CalibrationAlgoType", "int8_calibrator", "set_dynamic_range",
    "dynamic_range",
    # removed before 10.0
    "max_workspace_size", "build_engine", "build_cuda_engine", "execute_async_v2", "execute",
    "EXPLICIT_BATCH", "EXPLICIT_PRECISION", "get_binding_index", "get_binding_name",
    "get_binding_shape", "get_binding_dtype", "binding_is_input", "num_bindings",
    "set_binding_shape",
}
# Still in 11.x (the release data below shows them) but of the bindings-array era that
# set_tensor_address + execute_async_v3 replace: avoided all the same.
AVOIDED_ATTRIBUTES = {"execute_v2", "execute_async", "max_batch_size", "set_optimization_profile_async"}
REMOVED_TEXT = ["BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "BuilderFlag.FP8",
                "IInt8", "int8_calibrator", "set_dynamic_range", "max_workspace_size",
                ".build_engine(", "execute_async_v2", "execute_v2", "EXPLICIT_BATCH",
                "get_binding_index", "binding_is_input", "num_bindings", "pycuda"]


def _code_only(source: str) -> str:
    """The module's code without comments and docstrings."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(body[0].lineno)
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start[0] in docstrings):
            continue
        out.append(tok.string)
    return " ".join(out)


def test_backend_package_is_walked_whole():
    names = {p.name for p in SOURCES}
    assert {"__init__.py", "build.py", "runner.py", "engine_cache.py", "environment.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_backend_uses_no_removed_tensorrt_api(path):
    source = path.read_text()
    tree = ast.parse(source)
    used, flags = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            used.add(node.attr)
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else \
                getattr(node.value, "id", "")
            if owner == "BuilderFlag":
                flags.add(node.attr)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            used.add(node.args[1].value)  # getattr(trt.X, "NAME") style access
            owner = node.args[0]
            if getattr(owner, "attr", getattr(owner, "id", "")) == "BuilderFlag":
                flags.add(node.args[1].value)
    assert not (used & (REMOVED_ATTRIBUTES | AVOIDED_ATTRIBUTES)), sorted(
        used & (REMOVED_ATTRIBUTES | AVOIDED_ATTRIBUTES))
    assert not (flags & REMOVED_BUILDER_FLAGS), sorted(flags & REMOVED_BUILDER_FLAGS)
    code = _code_only(source).replace(" ", "")
    found = [text for text in REMOVED_TEXT if text.replace(" ", "") in code]
    assert not found, found


def test_backend_uses_the_current_api():
    code = " ".join(_code_only(p.read_text()) for p in SOURCES)
    for needed in ("build_serialized_network", "set_memory_pool_limit", "MemoryPoolType",
                   "WORKSPACE", "create_optimization_profile", "set_input_shape",
                   "set_tensor_address", "execute_async_v3", "num_io_tensors", "get_tensor_name",
                   "get_tensor_mode", "deserialize_cuda_engine", "create_timing_cache",
                   "get_timing_cache", "parse_from_file", '"STRONGLY_TYPED"'):
        assert needed in code, needed
    # The strongly typed flag is looked up by name, never as an attribute (its value moved in 11.x).
    assert ".STRONGLY_TYPED" not in code


def test_module_imports_without_tensorrt_or_cuda():
    script = ("import sys; sys.modules['tensorrt'] = None\n"
              "import exporter.backends.tensorrt, exporter.backends.onnxruntime, exporter.lint\n"
              "print([m for m in ('tensorrt', 'onnxruntime', 'torch', 'cuda') if sys.modules.get(m)])\n"
              "import exporter.commands.build, exporter.commands.lint, torch\n"
              "print([m for m in ('tensorrt', 'onnxruntime') if sys.modules.get(m)],"
              " torch.cuda.is_initialized())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "[] False"]


def test_require_tensorrt_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without the package
    with pytest.raises(BackendUnavailableError) as info:
        trt_backend.require_tensorrt()
    err = info.value
    assert "tensorrt' Python package" in err.message and "\n" not in err.message
    assert "pip install 'zoo-exporter[tensorrt]'" in err.fix and "NVIDIA GPU" in err.fix


def test_runner_refuses_cpu_and_unverifiable_engines(tmp_path):
    with pytest.raises(BackendUnavailableError, match="CUDA devices only"):
        trt_backend.device_index("cpu")
    gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    engine = tmp_path / "m.fp16.sm90.engine"
    ok = {"tensorrt_version": "10.15.1", "compute_capability": "9.0", "gpu": "NVIDIA H100"}
    trt_backend.check_engine_compatible(ok, "10.15.1", gpu, engine)
    for manifest, text in [(None, "no engine manifest"),
                           ({**ok, "tensorrt_version": "10.9.0"}, "TensorRT 10.9.0"),
                           ({**ok, "compute_capability": "8.6"}, "compute capability 8.6"),
                           ({**ok, "gpu": "NVIDIA H800"}, "built on a NVIDIA H800")]:
        with pytest.raises(trt_backend.EngineMismatchError, match=text) as info:
            trt_backend.check_engine_compatible(manifest, "10.15.1", gpu, engine)
        assert "rebuild" in info.value.fix and isinstance(info.value, BackendUnavailableError)


def test_engine_cache_key_covers_every_input():
    base = dict(onnx_sha256="a" * 64, trt_version="10.15.1", compute_capability="9.0",
                gpu_name="NVIDIA H100 80GB HBM3", profile={"input": "input", "min": [1, 3, 8, 8], "opt": [4, 3, 8, 8],
                         "max": [8, 3, 8, 8]}, precision="fp16", workspace_bytes=1 << 30)
    key = trt_backend.engine_cache_key(**base)
    assert key == trt_backend.engine_cache_key(**base)
    for change in [{"onnx_sha256": "b" * 64}, {"trt_version": "11.4.0"},
                   {"compute_capability": "8.9"}, {"gpu_name": "NVIDIA H200"}, {"precision": "fp32"},
                   {"workspace_bytes": 1 << 31},
                   {"profile": {**base["profile"], "max": [16, 3, 8, 8]}}]:
        assert trt_backend.engine_cache_key(**{**base, **change}) != key, change


def _cli(argv, capsys):
    from exporter.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_command_without_tensorrt_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "engines"
    code, stdout, stderr = _cli(["build", "resnet18", "--precision", "fp16", "--input-size", "64",
                                 "--output", str(out)], capsys)
    assert code != 0 and stdout == ""
    first = stderr.splitlines()[0]
    assert first.startswith("error: TensorRT backend unavailable") and "tensorrt' Python package" in first
    assert "pip install 'zoo-exporter[tensorrt]'" in stderr
    assert list(tmp_path.iterdir()) == []  # no output dir, no artifacts/ dir, no export

    # An existing ONNX: still refused before anything is written beside it.
    onnx_dir = tmp_path / "given"
    onnx_dir.mkdir()
    (onnx_dir / "m.onnx").write_bytes(b"not read")
    code, _, stderr = _cli(["build", "--onnx", str(onnx_dir / "m.onnx")], capsys)
    assert code != 0 and "TensorRT backend unavailable" in stderr
    assert [p.name for p in onnx_dir.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize("argv,text", [
    (["build"], "needs a MODEL"),
    (["build", "resnet18", "--onnx", "x.onnx"], "both MODEL"),
    (["build", "--onnx", "x.onnx", "--calibration", "calib"], "--calibration"),
    (["build", "resnet18", "--min-batch", "8", "--max-batch", "4"], "min=8"),
    (["build", "resnet18", "--batch", "4", "--max-batch", "8"], "--batch 4"),
])
def test_build_command_rejects_bad_options(argv, text, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _cli(argv, capsys)
    assert code != 0 and text in stderr and "fix:" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,code,text", [
    (["build", "nosuchmodel", "--precision", "fp16"], 4, "nosuchmodel"),
    (["build", "mobilenet_v2", "--precision", "int8"], 2, "INT8 needs calibration images"),
    (["build", "resnet18", "--input-size", "0"], 2, "--input-size"),
])
def test_build_checks_its_own_options_before_the_gpu(argv, code, text, tmp_path):
    """Without TensorRT, a mistyped model or a missing --calibration said 'TensorRT backend
    unavailable' (exit 5) where export says exit 4 / 2: a user fixed the GPU first for nothing."""
    proc = subprocess.run([sys.executable, "-m", "exporter", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == code and text in proc.stderr, proc.stderr[-2000:]
    assert "TensorRT" not in proc.stderr.splitlines()[0] and list(tmp_path.iterdir()) == []


def test_lint_command_exit_codes(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    def save(name, op):
        graph = helper.make_graph([helper.make_node(op, ["input"], ["logits"])], "g",
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                 ["N", 3, 8, 8])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                  str(tmp_path / name))

    save("good.onnx", "Relu")
    save("bad.onnx", "Det")
    code, out, _ = _cli(["lint", str(tmp_path / "good.onnx")], capsys)
    assert code == 0 and "TensorRT lint OK" in out
    code, out, err = _cli(["lint", str(tmp_path / "bad.onnx")], capsys)
    assert code == 4 and "'Det'" in out and "fix:" in out  # not ready: bad input (1 is for bugs)
    assert err.strip().splitlines()[0].startswith("error: 1 of 1 ONNX file(s) not TensorRT-ready")
    code, out, _ = _cli(["lint", str(tmp_path), "--json"], capsys)
    assert code == 4 and [r["ok"] for r in json.loads(out)] == [False, True]
    code, _, err = _cli(["lint", str(tmp_path / "missing.onnx")], capsys)
    assert code != 0 and "no such ONNX" in err


# ------------------------------------------------------------------ names checked against releases
# The Python API names of real TensorRT releases, read from their PyPI bindings wheels by
# scripts/tensorrt_api_names.py (the bindings cannot be imported here: libnvinfer is not on PyPI).
RELEASE_NAMES = {p.name[:-len(".txt.gz")]: p for p in
                 sorted((Path(__file__).parent / "data" / "tensorrt_api").glob("*.txt.gz"))}
TRT_ROOTS = {"trt", "builder", "network", "config", "parser", "opt_profile", "self.engine",
             "self.context", "self._runtime"}  # names bound to TensorRT objects in the backend


def _release(version: str) -> set[str]:
    import gzip

    with gzip.open(RELEASE_NAMES[version], "rt") as f:
        return set(f.read().split())


def _has(names: set[str], name: str) -> bool:
    """A name a pybind11 module registers: a string of its own, or the tail of a longer one
    (compilers merge a string into one that ends with it)."""
    return name in names or any(n.endswith(name) for n in names)


def _root(node) -> str | None:
    """The variable at the base of an attribute/call chain: `config` for config.a().b."""
    while True:
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return f"self.{node.attr}"
            node = node.value
        elif isinstance(node, (ast.Call,)):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def tensorrt_names_used() -> dict[str, set[str]]:
    """Every TensorRT attribute, getattr name and keyword argument the backend uses, with files."""
    used: dict[str, set[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Attribute) and _root(node.value) in TRT_ROOTS:
                names.append(node.attr)
            elif isinstance(node, ast.Call):
                if (getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2
                        and isinstance(node.args[1], ast.Constant) and _root(node.args[0]) in TRT_ROOTS):
                    names.append(node.args[1].value)
                if _root(node.func) in TRT_ROOTS:
                    names += [kw.arg for kw in node.keywords if kw.arg]
            for name in names:
                if not name.startswith("__"):
                    used.setdefault(name, set()).add(path.name)
    return used


def test_release_name_data_is_there_and_tells_versions_apart():
    assert {"10.8.0.43", "10.16.1.11", "11.0.0.114", "11.4.0.106"} <= set(RELEASE_NAMES)
    for version in RELEASE_NAMES:
        names = _release(version)
        assert len(names) > 5000 and _has(names, "build_serialized_network"), version
        removed_in_11 = ["IInt8EntropyCalibrator2", "int8_calibrator", "EXPLICIT_BATCH",
                         "OBEY_PRECISION_CONSTRAINTS"]
        present = [n for n in removed_in_11 if _has(names, n)]
        assert present == (removed_in_11 if version.startswith("10.") else []), (version, present)
        # gone before 10.8 already
        assert not any(_has(names, n) for n in ("max_workspace_size", "build_engine",
                                                "execute_async_v2", "num_bindings")), version


@pytest.mark.parametrize("version", [v for v in sorted(RELEASE_NAMES) if v.startswith("11.")])
def test_removed_list_matches_the_11x_releases(version):
    names = _release(version)
    assert not sorted(a for a in REMOVED_ATTRIBUTES if _has(names, a))
    assert sorted(a for a in AVOIDED_ATTRIBUTES if _has(names, a)) == sorted(AVOIDED_ATTRIBUTES)


def test_collector_finds_the_backends_tensorrt_calls():
    used = tensorrt_names_used()
    for name in ("build_serialized_network", "set_memory_pool_limit", "WORKSPACE", "STRONGLY_TYPED",
                 "TF32", "ignore_mismatch", "execute_async_v3", "set_tensor_address",
                 "get_tensor_profile_shape", "deserialize_cuda_engine", "serialize", "HALF"):
        assert name in used, name
    assert "lines" not in used and "cuda_stream" not in used  # our logger, torch's stream


@pytest.mark.parametrize("version", sorted(RELEASE_NAMES))
def test_every_tensorrt_name_the_backend_uses_exists_in_the_release(version):
    names = _release(version)
    missing = {n: sorted(files) for n, files in tensorrt_names_used().items() if not _has(names, n)}
    # Anything missing is a typo or an API this release lacks (the backend supports 10.x and 11.x).
    assert not missing, f"TensorRT {version} has no {missing}"
