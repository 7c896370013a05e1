"""``exporter lint PATH``: TensorRT-readiness of an ONNX file or an artifact directory."""
from __future__ import annotations

from pathlib import Path

from ..errors import EXIT_CODES_ALWAYS, InputError, UsageError


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("lint", help="check that ONNX artifacts are ready for a TensorRT build",
                       epilog="""examples:
  exporter lint artifacts/resnet18                 # every ONNX of an export (manifest.json)
  exporter lint model.int8.tensorrt.onnx --precision int8 --json

exit codes: 0 every ONNX file ready; 2 usage; 4 a file not TensorRT-ready (its findings printed),
or one missing or not readable; """ + EXIT_CODES_ALWAYS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, help="an .onnx file or an artifact directory (manifest.json)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="lint a single file as this precision (default: the manifest's, or detected)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON (default: text)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..lint import lint_onnx, lint_path

    path = Path(args.path)
    if args.precision is not None:
        if not path.is_file():
            raise UsageError("--precision applies to a single .onnx file",
                             fix="drop --precision for a directory (its manifest says each precision)")
        reports = [lint_onnx(path, args.precision)]
    else:
        reports = lint_path(path)
    if not reports:
        raise UsageError(f"{path} holds no ONNX artifact", fix="run `exporter export` into it first")
    if args.json:
        from ..cli_options import print_json

        print_json([r.to_dict() for r in reports])
    else:
        print("\n\n".join(r.render() for r in reports))
    bad = [r for r in reports if not r.ok]
    if bad:
        errors = sum(len(r.errors) for r in bad)
        raise InputError(f"{len(bad)} of {len(reports)} ONNX file(s) not TensorRT-ready: {errors} error(s) "
                        f"(first: {bad[0].errors[0].check}: {bad[0].errors[0].message})",
                        fix=next((w.fix for w in bad[0].warnings if w.check == "placement"), "")
                        or bad[0].errors[0].fix or "fix each ERROR listed above as its fix says")
    return 0
