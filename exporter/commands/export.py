"""``exporter export MODEL --format onnx[,torchscript] [--precision fp16|int8]``."""
from __future__ import annotations

import sys

from ..backends import registry
from ..cli_options import add_model_options, add_precision_options, parse_formats, request_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX / TorchScript (BN folded, simplified)")
    add_model_options(p)
    p.add_argument("--format", "-f", default="onnx",
                   help="comma-separated formats (default onnx): "
                        + "; ".join(f"{b.format}: {b.summary}" for b in registry.BACKENDS.values()
                                    if b.exportable))
    add_precision_options(p)
    p.add_argument("--no-verify", action="store_true", help="skip the parity check against eager")
    p.add_argument("--no-fail", action="store_true",
                   help="keep artifacts even when parity breaches the recipe's tolerance")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline import export

    request = request_from_args(args, formats=parse_formats(args.format))
    request.log = lambda msg: print(msg, file=sys.stderr, flush=True)
    request.verify = not args.no_verify
    request.fail_on_breach = not args.no_fail
    result = export(request)
    print(result.summary)
    return 0
