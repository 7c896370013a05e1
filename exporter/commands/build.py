"""``exporter build MODEL|--onnx PATH --precision fp32|fp16|int8``: a TensorRT engine.

TensorRT and a CUDA GPU are checked first: without them the command fails with one line (and the
install hint) before exporting or writing anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cli_options import (add_model_options, add_output_options, add_precision_options, print_json,
                           progress_logger)
from ..errors import EXIT_CODES_ALWAYS, InputError, UsageError

DEFAULT_WORKSPACE_MIB = 2048
EPILOG = """examples: (need TensorRT and an NVIDIA GPU: pip install 'zoo-exporter[tensorrt]')
  exporter build resnet18 --precision fp16                 # export (or re-use) the ONNX, then build
  exporter build --onnx artifacts/resnet18/resnet18.fp16.onnx --precision fp16 --max-batch 64
  exporter build mobilenet_v2 --precision int8 --calibration packaged --json
exit codes: 0 ok, 2 usage, 3 parity breach, 4 bad input, 5 environment (no TensorRT/GPU, out of
memory), 6 could not produce; """ + EXIT_CODES_ALWAYS


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("build", help="build a TensorRT engine (fp32/fp16/int8) from the ONNX export",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, model_required=False)
    add_precision_options(p)
    p.add_argument("--onnx", type=Path, help="build from this existing ONNX file instead of exporting "
                   "(its precision must match --precision) (default: export MODEL)")
    p.add_argument("--min-batch", type=int, help="smallest batch of the engine profile (default 1)")
    p.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default: max batch)")
    p.add_argument("--max-batch", type=int, help="largest batch of the engine profile (default 32)")
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MIB,
                   help=f"builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MIB})")
    p.add_argument("--timing-cache", type=Path,
                   help="persistent timing cache file (default ~/.cache/zoo-exporter/tensorrt/)")
    p.add_argument("--device", default="cuda", help="CUDA device (cuda or cuda:N; default cuda)")
    add_output_options(p)
    p.set_defaults(func=run)


def _batches(args) -> tuple[int, int, int]:
    fixed = getattr(args, "batch", None)
    if fixed is not None:
        given = [b for b in (args.min_batch, args.opt_batch, args.max_batch) if b is not None]
        if any(b != fixed for b in given):
            raise UsageError(f"--batch {fixed} fixes the batch; the profile asks for {given}",
                             fix="drop --min/--opt/--max-batch, or drop --batch")
        return fixed, fixed, fixed
    lo = args.min_batch if args.min_batch is not None else 1
    hi = args.max_batch if args.max_batch is not None else max(32, lo)
    opt = args.opt_batch if args.opt_batch is not None else hi
    if not (1 <= lo <= opt <= hi):
        raise UsageError(f"batch profile min={lo} opt={opt} max={hi} is not 1 <= min <= opt <= max",
                         fix="e.g. --min-batch 1 --opt-batch 8 --max-batch 32")
    return lo, opt, hi


def _validate(args) -> tuple[int, int, int]:
    from ..validate import positive

    for option in ("batch", "min_batch", "opt_batch", "max_batch"):
        positive("--" + option.replace("_", "-"), getattr(args, option, None))
    if args.onnx is None and not args.model:
        raise UsageError("build needs a MODEL to export or --onnx PATH",
                         fix="e.g. exporter build resnet18 --precision fp16, or "
                             "exporter build --onnx artifacts/resnet18/resnet18.fp16.onnx --precision fp16")
    if args.onnx is not None and args.model:
        raise UsageError(f"both MODEL '{args.model}' and --onnx {args.onnx} were given",
                         fix="pass one of them")
    if args.onnx is not None and getattr(args, "calibration", None):
        raise UsageError("--calibration quantizes during export; an --onnx file is built as it is",
                         fix="quantize with `exporter export MODEL --precision int8 --calibration DIR`"
                             " and build its .int8.tensorrt.onnx, or drop --onnx")
    if getattr(args, "target", None) == "cpu":
        raise UsageError("--target cpu places INT8 Q/DQ for ONNX Runtime's CPU; a TensorRT engine is "
                         "built from the tensorrt placement",
                         fix="drop --target (tensorrt is the default), or export the CPU model with "
                             "`exporter export MODEL --precision int8 --target cpu`")
    if args.workspace <= 0:
        raise UsageError(f"--workspace must be a positive number of MiB, got {args.workspace}")
    return _batches(args)


def _spec_from_onnx(onnx_path: Path, manifest: dict[str, Any] | None):
    """The InputSpec of an existing ONNX: its manifest's, else channels/size from the graph."""
    import onnx

    from ..recipes import InputSpec

    info = (manifest or {}).get("input")
    if info:
        return InputSpec(channels=int(info["channels"]), size=tuple(info["size"]),
                         resize=int(info.get("resize", max(info["size"]))),
                         mean=tuple(info["mean"]), std=tuple(info["std"]))
    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or min(dims[1:]) <= 0:
        raise UsageError(f"{onnx_path}: input shape {dims} is not NCHW with fixed C, H, W",
                         fix=f"run `exporter lint {onnx_path}`")
    channels = dims[1]
    return InputSpec(channels=channels, size=(dims[2], dims[3]), resize=max(dims[2:]),
                     mean=(0.0,) * channels, std=(1.0,) * channels)


def _check_default_input(onnx_path: Path, manifest: dict[str, Any] | None) -> None:
    """An engine's optimization profile is NCHW at one size: a graph exported with --dynamic-size,
    --layout nhwc or --normalize-in-graph is refused, never built with another input."""
    from ..graph_input import GraphInput

    options = GraphInput.from_manifest(manifest)
    if not options.default:
        asked = ", ".join(f"{k}={v}" for k, v in options.to_dict().items())
        raise UsageError(f"{onnx_path} was exported with a non-default graph input ({asked}); "
                         "TensorRT engines are built from the default NCHW, normalized, fixed-size ONNX",
                         fix="export the model again without --dynamic-size/--layout/"
                             "--normalize-in-graph (into another --output), then build from that")


def _exported_onnx(args) -> tuple[Path, Path, Any, str]:
    """Take the request's ONNX from its artifact directory, or export it (with --precision's
    quantize stage and the export's parity check) when it is missing or was made differently."""
    from ..cli_options import request_from_args
    from ..reuse import export_or_reuse

    request = request_from_args(args, formats=("onnx",))
    say = progress_logger(args)
    ready = export_or_reuse(request, verify=True, say=say)
    say(ready.note)
    candidates = [a for a in ready.manifest["artifacts"]
                  if a["format"] == "onnx" and a["precision"] == args.precision
                  and (args.precision != "int8" or ".tensorrt." in a["file"])]
    if not candidates:
        raise UsageError(f"the export wrote no {args.precision} ONNX for TensorRT",
                         fix="for int8 use the tensorrt placement (--target tensorrt)")
    return ready.directory / candidates[-1]["file"], ready.directory, ready.spec, ready.recipe.name


def _record(out_dir: Path, entry: dict[str, Any]) -> bool:
    """Add (or replace) the engine entry in ``out_dir/manifest.json`` when there is one."""
    from ..artifacts import read_manifest_if_any, write_json_atomic

    manifest = read_manifest_if_any(out_dir)
    if manifest is None:
        return False
    kept = [a for a in manifest.get("artifacts", []) if a.get("file") != entry["file"]]
    manifest["artifacts"] = kept + [entry]
    write_json_atomic(out_dir / "manifest.json", manifest)
    return True


def run(args) -> int:
    from ..artifacts import read_manifest_if_any
    from ..backends.tensorrt import build_engine, require_tensorrt

    batches = _validate(args)
    if args.onnx is None:  # the export's own checks come first: a wrong option is not a missing GPU
        from ..cli_options import request_from_args
        from ..pipeline import check_request

        check_request(request_from_args(args, formats=("onnx",)))
    require_tensorrt(args.device)  # before any export work: no TensorRT/GPU -> nothing written
    if args.onnx is not None:
        onnx_path = Path(args.onnx)
        if not onnx_path.is_file():
            raise InputError(f"{onnx_path}: no such ONNX file", fix="check the path, or export first")
        source_manifest = read_manifest_if_any(onnx_path.parent)
        _check_default_input(onnx_path, source_manifest)
        spec = _spec_from_onnx(onnx_path, source_manifest)
        out_dir = Path(args.output) if args.output else onnx_path.parent
        model = (source_manifest or {}).get("model") or onnx_path.name.split(".")[0]
    else:
        onnx_path, out_dir, spec, model = _exported_onnx(args)
    entry = build_engine(onnx_path, out_dir, args.precision, *batches,
                         workspace_bytes=args.workspace * (1 << 20),
                         timing_cache_path=args.timing_cache, input_spec=spec, device=args.device,
                         model_name=model)
    recorded = _record(out_dir, entry)
    if args.json:
        print_json({"ok": True, "command": "build", "directory": str(out_dir),
                    "engine": str(out_dir / entry["file"]), "recorded_in_manifest": recorded, **entry})
        return 0
    d = entry["details"]
    how = "reused cached engine" if d.get("cached") else f"built in {d['build_seconds']:.1f}s"
    print(f"{out_dir / entry['file']}: {how}; TensorRT {d['tensorrt_version']} on {d['gpu']} "
          f"(sm{d['compute_capability']}), {d['precision']}, batch {d['profile']['min'][0]}.."
          f"{d['profile']['max'][0]} (opt {d['profile']['opt'][0]}), {entry['bytes'] / 2**20:.1f} MiB"
          + ("" if recorded else " (no manifest.json in that directory; engine manifest beside it)"))
    return 0
