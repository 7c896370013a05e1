"""The peer-toolkit runners of benchmarks/int8_peers.py: their shared int8-conv count on models
onnxruntime's own quantizer writes, their command line without the toolkit installed, and how the
benchmark reports a toolkit that does not import."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.recipes import get_recipe
from quant_helpers import fp32_onnx

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
RUNNERS = {"quark": "quark", "aimet": "aimet_onnx", "inc": "onnx_neural_compressor"}
sys.path.insert(0, str(PEERS))
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    path, spec = fp32_onnx(get_recipe("lenet5"))
    x = np.random.default_rng(0).standard_normal((8, spec.channels, *spec.size)).astype(np.float32)
    return path, x, sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)


def _ort_quantized(src: Path, out: Path, x: np.ndarray, **options) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(out), Reader(), **options)
    return onnx.load(str(out))


def test_int8_conv_count_on_qdq_qoperator_and_uint8_weights(lenet, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType

    from peer_common import int8_convs

    src, x, convs = lenet
    assert convs >= 2
    assert int8_convs(onnx.load(str(src))) == (0, convs)
    qdq = _ort_quantized(src, tmp_path / "qdq.onnx", x, quant_format=QuantFormat.QDQ, per_channel=True)
    assert int8_convs(qdq) == (convs, convs)
    qop = _ort_quantized(src, tmp_path / "qop.onnx", x, quant_format=QuantFormat.QOperator)
    assert sum(n.op_type == "QLinearConv" for n in qop.graph.node) == convs
    assert int8_convs(qop) == (convs, convs)
    u8 = _ort_quantized(src, tmp_path / "u8.onnx", x, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    assert int8_convs(u8) == (0, convs)


@pytest.mark.parametrize("peer", sorted(RUNNERS))
def test_runner_lists_its_configs_without_the_toolkit(peer):
    from int8_peers import peer_configs

    configs = peer_configs(peer)
    assert len(configs) >= 3 and all(isinstance(v, str) and v for v in configs.values())
    proc = subprocess.run([sys.executable, str(PEERS / f"{peer}_peer.py"), "--config", "list"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == list(configs)


@pytest.mark.parametrize("peer", sorted(RUNNERS))
def test_missing_toolkit_is_reported_not_raised(peer, lenet, tmp_path):
    if importlib.util.find_spec(RUNNERS[peer]) is not None:
        pytest.skip(f"{RUNNERS[peer]} is installed here: the runner would quantize")
    from int8_peers import peer_configs, run_peer

    src, x, _ = lenet
    np.save(tmp_path / "cal.npy", x)
    config = next(iter(peer_configs(peer)))
    result = run_peer(peer, config, None, {"model": src, "cal": tmp_path / "cal.npy"}, tmp_path)
    assert result["error"].startswith("exit 1: ModuleNotFoundError"), result
    assert RUNNERS[peer] in result["error"]
