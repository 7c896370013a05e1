"""What every peer runner (``benchmarks/peers/<toolkit>_peer.py``) shares: its command line, the
count of int8 convs in what it produced, and its report line. Used by ``benchmarks/int8_peers.py``.

A runner quantizes ``--model`` (the FP32 ONNX: input ``input``, NCHW float32, normalised, BN
folded) with one toolkit's own post-training INT8, in one of its ``CONFIGS``, calibrating on
``--cal`` (an .npy of crops) and nothing else. It writes the INT8 model as a plain ONNX file (Q/DQ
or QOperator: no custom ops) under ``--work`` and prints, as its last stdout line, one JSON object:
``config``, ``seconds`` (quantization wall time), ``model`` (the file), ``int8_convs``, ``convs``,
``toolkit`` ("<package> <version>") and ``what`` (the configuration in words). ``--config list``
prints the configurations. The judging is the orchestrator's: the runner never sees judged crops.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(configs: dict[str, str], doc: str) -> argparse.Namespace | None:
    """The runner's arguments; None after ``--config list`` has printed the configurations."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--cal", type=Path)
    parser.add_argument("--config", required=True, help="a configuration name, or 'list'")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.config == "list":
        for name, what in configs.items():
            print(f"{name}: {what}")
        return None
    if args.config not in configs:
        parser.error(f"unknown config {args.config!r}; one of {', '.join(configs)}")
    for need in ("model", "cal", "work"):
        if getattr(args, need) is None:
            parser.error(f"--{need} is required")
    args.model, args.cal, args.work = args.model.resolve(), args.cal.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def int8_convs(model) -> tuple[int, int]:
    """(convs whose weight is int8, all convs): a Conv reading DequantizeLinear of int8 data (an
    int8 initializer or Constant, or a QuantizeLinear with an int8 zero-point), or a QLinearConv
    with an int8 weight."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def is_int8(name: str) -> bool:
        if name in inits:
            return inits[name].data_type == TensorProto.INT8
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t).dtype.name == "int8"
        if node is not None and node.op_type == "QuantizeLinear" and len(node.input) > 2:
            return is_int8(node.input[2])
        return False

    k = total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            total += 1
            dq = producer.get(node.input[1])
            k += dq is not None and dq.op_type == "DequantizeLinear" and is_int8(dq.input[0])
        elif node.op_type == "QLinearConv":
            total += 1
            k += is_int8(node.input[3])
    return k, total


def report(config: str, seconds: float, model_path: Path, toolkit: str, what: str) -> None:
    """Print the runner's result line (the last line of its stdout)."""
    import onnx

    k, total = int8_convs(onnx.load(str(model_path)))
    sys.stdout.flush()
    print(json.dumps({"config": config, "seconds": round(seconds, 2), "model": str(model_path),
                      "int8_convs": k, "convs": total, "toolkit": toolkit, "what": what}), flush=True)
