"""``exporter export MODEL --format onnx[,pt2,aoti,torchscript] [--precision fp16|int8]``."""
from __future__ import annotations

import argparse

from ..backends import registry
from ..cli_options import (add_graph_input_options, add_model_options, add_output_options, add_precision_options,
                           add_tolerance_options, parse_formats, print_json, progress_logger,
                           request_from_args)
from ..errors import EXIT_CODES_ALWAYS
from ..zoo_plan import add_fanout_options, add_models_option

EPILOG = """examples:
  exporter export mobilenet_v3_small                      # ONNX, random init, verified vs eager
  exporter export mobilenet_v2 --checkpoint "$(python -m exporter.offline_weights)"  # real ImageNet weights
  exporter export resnet18 --format onnx,pt2 --input-size 160
  exporter export timm:resnet10t --weights DEFAULT        # timm's download (needs internet)
  exporter export resnet50 --precision fp16 --json > export.json
  exporter export resnet18 --precision int8 --calibration packaged
  exporter export resnet18 --input-size 64 --dynamic-size --layout nhwc --normalize-in-graph
  exporter export --zoo --reduced -o artifacts/zoo        # every recipe, as matrix jobs on local workers
  exporter export --zoo --ray auto --format onnx,torchscript   # the same jobs as Ray tasks
exit codes: 0 ok, 2 usage, 3 parity breach, 4 bad input, 5 environment (a missing runtime, a full
or read-only disk, out of memory), 6 could not produce; """ + EXIT_CODES_ALWAYS


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX, PyTorch (pt2, AOTInductor, TorchScript) "
                                      "and the mobile/edge runtimes' formats",
                       description="Export a model (BN folded, simplified), write its metadata into "
                                   "every artifact, and verify each artifact against eager PyTorch.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, model_required=False)
    p.add_argument("--format", "-f", default="onnx",
                   help="comma-separated formats (default onnx), each with the precisions it "
                        "produces (every format of an fp16/int8 run must produce it): "
                        + "; ".join(f"{b.format} [{'/'.join(b.precisions)}]: {b.summary}"
                                    for b in registry.BACKENDS.values() if b.exportable))
    add_graph_input_options(p)
    add_precision_options(p)
    p.add_argument("--no-verify", action="store_true",
                   help="skip the parity check against eager (default: verify)")
    p.add_argument("--no-fail", action="store_true",
                   help="keep artifacts even when parity breaches the recipe's tolerance "
                        "(default: fail, exit 3, nothing written)")
    zoo = p.add_argument_group("the whole zoo")
    zoo.add_argument("--zoo", action="store_true",
                     help="every recipe, as matrix jobs (one directory per model under --output, "
                          "default artifacts/zoo; report.md at its top) (default: one MODEL)")
    zoo.add_argument("--reduced", action="store_true",
                     help="with --zoo: each recipe's reduced test size (default: native sizes)")
    add_models_option(zoo)
    add_fanout_options(p, default_jobs="as many local workers as cores")
    add_tolerance_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UsageError
    from ..pipeline import export
    from ..zoo_plan import fanout_requested, run_zoo_plan

    if args.zoo:
        if args.model:
            raise UsageError("--zoo exports every recipe; it takes no MODEL",
                             fix="drop the model name (or drop --zoo)")
        return run_zoo_plan(args, "export", "artifacts/zoo")
    if args.reduced or args.models or fanout_requested(args):
        raise UsageError("--reduced, --models, --jobs and --ray go with --zoo",
                         fix="add --zoo, or use --input-size N for one model")
    if not args.model:
        raise UsageError("which model?", fix="exporter export MODEL (exporter list shows the zoo), "
                                             "or exporter export --zoo")

    request = request_from_args(args, formats=parse_formats(args.format))
    request.log = progress_logger(args)
    if args.verbose:
        request.stage_log = request.log
    request.verify = not args.no_verify
    request.fail_on_breach = not args.no_fail
    result = export(request)
    if args.json:
        print_json({"ok": True, "command": "export", "directory": str(result.directory),
                    "seconds": round(result.seconds, 3), "kept_from_earlier": list(result.kept),
                    "replaced_earlier": result.replaced,
                    **result.manifest})
    else:
        print(result.summary)
    return 0
