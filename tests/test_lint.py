"""TensorRT-readiness lint on real exported graphs and on small hand-built ONNX graphs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.lint import LintError, detect_precision, lint_onnx, lint_path, trt_op_table


def _export(module: torch.nn.Module, path, size=64) -> onnx.ModelProto:
    module.eval()
    torch.onnx.export(module, (torch.randn(1, 3, size, size),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lint") / "resnet18.onnx"
    model = _export(torchvision.models.resnet18(weights=None, num_classes=10), path)
    return path, model


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.conv2(x)) + x
        return self.fc(x.mean((2, 3)))


def _checks(report, severity="error"):
    return {f.check for f in report.findings if f.severity == severity}


def test_op_table_data_is_sourced():
    table = trt_op_table()
    assert table["opset"] == {"min": 9, "max": 24}
    assert "operators.md" in table["source"]["file"] and "10.15" in table["source"]["version"]
    assert {"Conv", "Gemm", "QuantizeLinear", "HardSwish"} <= set(table["supported"])
    assert "QLinearConv" in table["unsupported"]


def test_exported_torchvision_model_is_ready(resnet):
    path, _ = resnet
    report = lint_onnx(path)
    assert report.ok, report.render()
    assert report.precision == "fp32" and report.opset == 17 and report.op_types["Conv"] == 20
    data = report.to_dict()
    assert data["ok"] and data["errors"] == 0 and json.dumps(data)
    assert "TensorRT lint OK" in report.render()
    report.raise_for_errors()  # no-op


def _graph(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def test_unsupported_ops_are_named():
    model = _graph([helper.make_node("Relu", ["input"], ["a"], name="relu"),
                    helper.make_node("Det", ["a"], ["b"], name="det"),
                    helper.make_node("MyOp", ["b"], ["logits"], name="custom", domain="my.ops")],
                   [_vi("input", ["N", 3, 4, 4])], [_vi("logits", None)], domains=["my.ops"])
    report = lint_onnx(model)
    assert not report.ok
    errors = {f.node: f for f in report.errors}
    assert "'Det'" in errors["det"].message and errors["det"].fix
    assert "my.ops::MyOp" in errors["custom"].message and "plugin" in errors["custom"].fix
    assert "relu" not in errors
    with pytest.raises(LintError, match="op-support") as info:
        report.raise_for_errors()
    assert info.value.fix


def test_dynamic_non_batch_dim_is_an_error():
    model = _graph([helper.make_node("Relu", ["input"], ["logits"])],
                   [_vi("input", ["N", 3, "height", 32])], [_vi("logits", None)])
    report = lint_onnx(model)
    (finding,) = report.errors
    assert finding.check == "static-shape" and "dimension 2" in finding.message
    assert finding.message.endswith("an optimization profile for every dynamic axis)")  # a whole sentence
    assert finding.fix.startswith("re-export without --dynamic-size")
    assert "dynamic_axes" in finding.fix
    ok = _graph([helper.make_node("Relu", ["input"], ["logits"])],
                [_vi("input", ["batch", 3, 32, 32])], [_vi("logits", None)])
    assert lint_onnx(ok).ok


@pytest.mark.parametrize("opset,ok", [(8, False), (9, True), (24, True), (25, False)])
def test_opset_range(opset, ok):
    model = _graph([helper.make_node("Relu", ["input"], ["logits"])],
                   [_vi("input", [1, 3, 8, 8])], [_vi("logits", None)], opset=opset)
    report = lint_onnx(model)
    assert report.ok is ok
    if not ok:
        assert _checks(report) == {"opset"} and "9..24" in report.errors[0].message


def _qdq_conv(zp_dtype=np.int8, zp_value=0, w_axis=0, w_scales=4, bias_int32=False, act_channels=1):
    """input -> Q -> DQ -> Conv(W: int8 initializer -> DQ) -> logits."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.full(act_channels, 0.02, np.float32), "a_scale"),
        numpy_helper.from_array(np.full(act_channels, zp_value, zp_dtype), "a_zp"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(w_scales, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(w_scales, np.int8), "w_zp"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["input", "a_scale", "a_zp"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zp"], ["xd"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w",
                              axis=w_axis)]
    conv_inputs = ["xd", "wd"]
    if bias_int32:
        inits += [numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_q"),
                  numpy_helper.from_array(np.full(4, 2e-4, np.float32), "b_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["bd"], name="dq_b"))
        conv_inputs.append("bd")
    nodes.append(helper.make_node("Conv", conv_inputs, ["logits"], name="conv", pads=[1, 1, 1, 1]))
    return _graph(nodes, [_vi("input", ["N", 3, 8, 8])], [_vi("logits", None)], inits)


def test_tensorrt_style_qdq_is_ready_and_runs_on_ort():
    import onnxruntime as ort

    model = _qdq_conv()
    report = lint_onnx(model, precision="int8")
    assert report.ok, report.render()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.ones((2, 3, 8, 8), np.float32)})[0]
    assert out.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("kwargs,check,text", [
    ({"zp_value": 3}, "qdq-zero-point", "not all 0"),
    ({"zp_dtype": np.uint8, "zp_value": 128}, "qdq-zero-point", "UINT8"),
    ({"bias_int32": True}, "qdq-bias", "int32 bias"),
    ({"w_axis": 1, "w_scales": 3}, "qdq-weight-axis", "axis 0"),
    ({"act_channels": 3}, "qdq-per-channel", "per-tensor"),
])
def test_qdq_invariants(kwargs, check, text):
    report = lint_onnx(_qdq_conv(**kwargs))
    assert check in _checks(report), report.render()
    finding = next(f for f in report.errors if f.check == check)
    assert text in finding.message + finding.fix and finding.fix


def test_per_tensor_weight_is_a_warning_per_channel_axis0_is_clean():
    per_tensor = lint_onnx(_qdq_conv(w_scales=1))
    assert per_tensor.ok and _checks(per_tensor, "warning") == {"qdq-weight-axis"}
    per_channel = lint_onnx(_qdq_conv(w_scales=4, w_axis=0))
    assert per_channel.ok and not per_channel.warnings


def test_int8_without_qdq_is_an_error(resnet):
    report = lint_onnx(resnet[0], precision="int8")
    assert {"precision", "qdq-missing"} <= _checks(report)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return path, _export(TinyNet(), path, size=16)


def _calibration_reader(n=4):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 16, 16), np.float32)}
                                 for _ in range(n)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def test_onnxruntime_quantize_static_defaults_vs_tensorrt_settings(tiny, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src, _ = tiny
    default_path, trt_path = tmp_path / "default.onnx", tmp_path / "trt.onnx"
    quantize_static(str(src), str(default_path), _calibration_reader(), quant_format=QuantFormat.QDQ)
    quantize_static(str(src), str(trt_path), _calibration_reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=False, extra_options={"ActivationSymmetric": True,
                                                       "WeightSymmetric": True,
                                                       "QuantizeBias": False})
    default = lint_onnx(default_path, precision="int8")
    assert {"qdq-zero-point", "qdq-bias"} <= _checks(default), default.render()
    trt = lint_onnx(trt_path, precision="int8")
    assert trt.ok, trt.render()
    assert detect_precision(onnx.load(str(trt_path))) == "int8"


def test_fp16_keep_io_types(tiny, tmp_path):
    import onnxruntime as ort
    from onnxconverter_common import float16

    src, model = tiny
    kept = float16.convert_float_to_float16(model, keep_io_types=True)
    report = lint_onnx(kept, precision="fp16")
    assert report.ok and report.detected_precision == "fp16", report.render()
    path = tmp_path / "tiny.fp16.onnx"
    onnx.save(kept, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert session.run(None, {"input": x})[0].dtype == np.float32

    raw = float16.convert_float_to_float16(model, keep_io_types=False)
    bad = lint_onnx(raw, precision="fp16")
    io = [f for f in bad.errors if f.check == "fp16-io"]
    assert {f.node for f in io} == {"input", "logits"} and "FLOAT16" in io[0].message
    assert "keep_io_types=True" in io[0].fix
    # An fp32 graph linted as fp16: the precision mismatch is reported, never assumed.
    assert "precision" in _checks(lint_onnx(src, precision="fp16"))


def test_lint_path_reads_the_manifest(tiny, tmp_path):
    from onnxconverter_common import float16

    src, model = tiny
    onnx.save(model, str(tmp_path / "tiny.onnx"))
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=False),
              str(tmp_path / "tiny.fp16.onnx"))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "artifacts": [
        {"file": "tiny.onnx", "format": "onnx", "precision": "fp32"},
        {"file": "tiny.fp16.onnx", "format": "onnx", "precision": "fp16"},
        {"file": "tiny.ts.pt", "format": "torchscript", "precision": "fp32"}]}))
    reports = lint_path(tmp_path)
    assert [r.ok for r in reports] == [True, False]
    assert [r.precision for r in reports] == ["fp32", "fp16"]
    assert lint_path(tmp_path / "tiny.onnx")[0].ok


def test_a_stale_recorded_shape_is_an_error(tmp_path):
    """A value_info shape that contradicts the graph (what a rewrite that pads a tensor leaves
    behind when it forgets the record) fails onnx's strict checker: lint says so."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    graph = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["p"]),
                               helper.make_node("Relu", ["p"], ["y"])], "g", [x], [y], [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert not [f for f in lint_onnx(model).errors if f.check == "onnx-valid"]
    model.graph.value_info.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 2, 4, 4]))
    found = [f for f in lint_onnx(model).errors if f.check == "onnx-valid"]
    assert len(found) == 1 and "Inferred shape and existing shape differ" in found[0].message
    # the command: the report, then one error line and one fix line, exit 4 (1 is for bugs)
    onnx.save(model, tmp_path / "stale.onnx")
    for extra in ([], ["--json"]):
        proc = subprocess.run([sys.executable, "-m", "exporter", "lint", str(tmp_path / "stale.onnx"), *extra],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 4, proc.stderr
        tail = proc.stderr.strip().splitlines()[-2:]
        assert tail[0].startswith("error: 1 of 1 ONNX file(s) not TensorRT-ready: 1 error(s) (first: onnx-valid")
        assert tail[1].startswith("fix: drop or correct the stale value_info shapes")
        if extra:
            assert json.loads(proc.stdout)[0]["ok"] is False  # one JSON document: the reports
        else:
            assert "TensorRT lint NOT READY" in proc.stdout


def test_the_cpu_int8_placement_is_named_not_just_rejected(tmp_path):
    """Linting an export's --target cpu INT8 (ONNX Runtime's u8 activations) for TensorRT says
    it is that placement and points at --target tensorrt, above the Q/DQ errors it has by design."""
    out = tmp_path / "cpu8"
    proc = subprocess.run([sys.executable, "-m", "exporter", "export", "lenet5", "--precision", "int8",
                           "--calibration", "packaged", "--target", "cpu", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = next(r for r in lint_path(out / "lenet5.int8.cpu.onnx") if r.precision == "int8")
    assert report.findings[0].check == "placement" and not report.ok
    qdq = [f for f in report.findings if f.check.startswith("qdq")]
    assert qdq and all(f.fix.startswith("by design for --target cpu") for f in qdq)  # not QuantType
    # the file by name: judged, exit 4, the placement's fix
    proc = subprocess.run([sys.executable, "-m", "exporter", "lint", str(out / "lenet5.int8.cpu.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4 and "TensorRT lint NOT READY" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "fix: for a TensorRT engine export --precision int8 --target tensorrt (the default) and build "
        "from that file")
    # the export's directory: the cpu file is listed as not meant for TensorRT, not judged
    proc = subprocess.run([sys.executable, "-m", "exporter", "lint", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TensorRT lint OK" in proc.stdout  # the FP32 file is fine
    assert f"TensorRT lint SKIPPED: {out / 'lenet5.int8.cpu.onnx'} (int8): the exporter's --target cpu INT8" \
        in proc.stdout
    [skipped] = [r for r in lint_path(out) if r.skipped]
    assert skipped.ok and skipped.to_dict()["skipped"].startswith("the exporter's --target cpu INT8")


def test_lint_of_a_pt2_says_it_is_not_onnx_rather_than_corrupt(tmp_path):
    """A valid .pt2 was called 'not a readable ONNX model (... Wire format was corrupt)' with the
    fix 're-export it if it was cut short'."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.pt2", "w") as archive:
        archive.writestr("model/version", "1")
    proc = subprocess.run([sys.executable, "-m", "exporter", "lint", "model.pt2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "model.pt2 is a zip archive (a PyTorch .pt2/.pt file or another package), not ONNX" in proc.stderr
    assert "cut short" not in proc.stderr and "Traceback" not in proc.stderr
