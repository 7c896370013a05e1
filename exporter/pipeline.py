"""The export pipeline: it only composes the stages (load -> prepare -> export -> simplify ->
deploy check -> quantize -> verify) and writes the manifest."""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from . import __version__
from .artifacts import (MANIFEST, artifact_entry, read_manifest_if_any, sha256_file, tool_versions,
                        write_json_atomic)
from .builders import build_model, check_input_size, resolve_model
from .errors import ParityError, PrecisionError, UsageError
from .metadata import build_metadata, for_artifact, write_onnx_metadata
from .manifest_model import model_code_sha256, replaced_export
from .output_dir import staging
from .export import DEFAULT_EXPORTER, DEFAULT_OPSET, DEFAULT_SIMPLIFIER, export_onnx, simplify_onnx
from .recipes import InputSpec, Recipe

from .defaults import MODEL_OPTION_KEYS  # noqa: F401  (the fields that define the eager model)


def json_value(value: Any) -> Any:
    """``value`` as it reads back from a JSON manifest (tuples -> lists, paths -> str)."""
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def quant_options_record(quant: dict[str, Any]) -> dict[str, Any]:
    """The quantize options as a precision artifact's manifest entry records them (re-use key)."""
    return {k: json_value(v) for k, v in sorted(quant.items()) if v is not None}


@dataclass
class ExportRequest:
    """Everything a user can ask of ``exporter export`` (and what ``parity`` re-uses)."""

    model: str
    formats: tuple[str, ...] = ("onnx",)
    output: Path | None = None
    weights: str | None = None
    checkpoint: str | None = None
    seed: int = 0
    input_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    batch: int | None = None  # None: dynamic batch axis
    output_index: int | None = None  # which output of a multi-output forward is the logits
    output_name: str | None = None
    opset: int = DEFAULT_OPSET
    exporter: str = DEFAULT_EXPORTER
    simplifier: str = DEFAULT_SIMPLIFIER
    simplify_fallback: bool = False
    precision: str = "fp32"
    quant: dict[str, Any] = field(default_factory=dict)  # calibration, method, samples, target, ...
    verify: bool = True
    fail_on_breach: bool = True
    atol: float | None = None  # command-line overrides of the recipe's tolerances
    rtol: float | None = None
    # what the exported graph takes (exporter.graph_input; the eager reference is unchanged)
    layout: str = "nchw"  # nchw | nhwc
    normalize_in_graph: bool = False  # the graph takes [0, 1] pixels and applies mean/std
    dynamic_size: bool = False  # symbolic height/width, checked at two sizes
    # progress lines of long stages (calibration, the INT8 budget); never recorded in a manifest
    log: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    # one line per pipeline stage (--verbose); never recorded in a manifest
    stage_log: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def stage(self, message: str) -> None:
        if self.stage_log is not None:
            self.stage_log(message)


@dataclass
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    recipe: Recipe
    spec: InputSpec
    reference: nn.Module  # prepared, BN *not* folded: the eager reference
    deploy: nn.Module  # prepared and folded: what was exported
    parity: list[dict[str, Any]]
    seconds: float
    kept: tuple[str, ...] = ()  # files an earlier export of the same model left, not made by this run
    # an earlier export of other model options in the folder: its files this run removed, and why
    replaced: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        from .summary import export_summary

        return export_summary(self)


def _parse_formats(formats: tuple[str, ...], precision: str) -> tuple[str, ...]:
    """The requested formats (order kept as given, duplicates dropped), checked: each is
    exportable and produces ``precision`` itself (none is silently written at fp32)."""
    from .backends import registry

    formats = tuple(dict.fromkeys(formats))
    for fmt in formats:
        backend = registry.get(fmt)
        if not backend.exportable:
            raise UsageError(f"--format {fmt} is not written by `exporter export`",
                             fix=f"use `exporter build MODEL` for {fmt}; export formats: "
                                 f"{list(registry.export_formats())}")
        if precision in backend.unavailable:
            able = [f for f in registry.export_formats() if precision in registry.get(f).precisions]
            raise PrecisionError(f"--format {fmt} --precision {precision}: {backend.unavailable[precision]}",
                                 fix=f"export {precision} for {' or '.join(able)} (e.g. --format "
                                     f"{able[0]} --precision {precision}), or {fmt} at "
                                     f"{' / '.join(backend.precisions)}")
    for fmt in formats:
        registry.check_installed(fmt)
    check_formats_produce(formats, precision)
    return formats


def check_formats_produce(formats: tuple[str, ...], precision: str) -> None:
    """UsageError when a format of ``formats`` cannot produce ``precision`` itself: it is never
    written at fp32 in its place (the export and ``--zoo`` runs check this before any work)."""
    from .backends import registry

    unable = [f for f in formats if precision not in registry.get(f).precisions]
    if precision != "fp32" and unable:
        able = [f for f in registry.export_formats() if precision in registry.get(f).precisions]
        rest = [f for f in formats if f not in unable]
        only = "; ".join(f"{f} writes {'/'.join(registry.get(f).precisions)}" for f in unable)
        fix = (f"drop {','.join(unable)} from --format (--format {','.join(rest)} --precision "
               f"{precision}) and export {'them' if len(unable) > 1 else 'it'} in a separate run "
               "at fp32" if rest else
               f"use --format {able[0]} --precision {precision} (formats that produce "
               f"{precision}: {able}), or --precision fp32 for {','.join(unable)}")
        raise UsageError(f"--precision {precision} is not produced by --format {','.join(unable)} "
                         f"({only} only)", fix=fix)


def load_stage(request: ExportRequest) -> tuple[Recipe, InputSpec, nn.Module, dict[str, Any]]:
    from .validate import check_model_options

    check_model_options(request)
    recipe, spec = resolve_model(request.model, input_size=request.input_size,
                                 channels=request.channels, mean=request.mean, std=request.std,
                                 num_classes=request.num_classes)
    selected = request.output_name if request.output_name is not None else request.output_index
    if selected is not None:
        recipe = replace(recipe, prepare=replace(recipe.prepare, output=selected))
    model, weights_info = build_model(recipe, weights=request.weights,
                                      checkpoint=request.checkpoint, seed=request.seed)
    return recipe, spec, model, weights_info


def prepare_stage(model: nn.Module, recipe: Recipe, spec: InputSpec, num_classes: int | None = None):
    """(reference, deploy, report, recipe): the same prepared model without and with BN folding,
    and the recipe with a user module's real class count (``builders.checked_class_count``)."""
    from .builders import checked_class_count
    from .prepare import prepare_for_deploy

    reference, _ = prepare_for_deploy(model, recipe, fold=False)
    deploy, report = prepare_for_deploy(model, recipe, fold=True)
    width = check_input_size(deploy, recipe, spec)
    return reference, deploy, report, checked_class_count(recipe, width, num_classes)


def onnx_stage(deploy: nn.Module, spec: InputSpec, path: Path, request: ExportRequest,
               expected_bn: int, meta: dict[str, str] | None = None) -> dict[str, Any]:
    """Export, simplify and deploy-check one FP32 ONNX file; ``meta`` goes into its
    ``metadata_props`` (exporter.metadata)."""
    from .deploy_check import check_deploy_form
    from .errors import SimplifyError
    from .graph_input import example_input

    info = export_onnx(deploy, spec, path, exporter=request.exporter, opset=request.opset,
                       batch=request.batch)
    test_shape = list(example_input(deploy, spec, 1).shape) if request.dynamic_size else None
    props = for_artifact(meta, "onnx", "fp32") if meta else None
    try:
        info.update(simplify_onnx(path, request.simplifier, test_shape, metadata=props))
    except SimplifyError as err:
        if not request.simplify_fallback:
            raise
        info.update(simplifier=request.simplifier, simplify_failed=err.message, nodes_before=None,
                    nodes_after=info["nodes_exported"])
        if props:
            write_onnx_metadata(path, props)
    # the file is checked in the staging folder; the manifest names it as it lands (beside it)
    info["deploy_check"] = {**check_deploy_form(path, expected_bn, strict=True).to_dict(), "path": path.name}
    return info


def verify_stage(directory: Path, artifacts: list[dict[str, Any]], reference: nn.Module,
                 recipe: Recipe, spec: InputSpec, request: ExportRequest) -> list[dict[str, Any]]:
    """Every artifact against eager on 8 photo crops + 4 random tensors (the parity runner
    without latency); returns one metrics row per artifact, breaches spelled out."""
    from .graph_input import GraphInput, check_sizes
    from .parity import build_inputs, by_size, run_parity

    options = GraphInput.of(request)
    manifest = {"model": recipe.name, "model_spec": request.model, "artifacts": artifacts,
                "input": {"batch": request.batch, **options.to_dict()}}
    inputs = build_inputs(spec, samples=8 if spec.channels in (1, 3) else 0, random=4,
                          sizes=check_sizes(spec, options))
    report = run_parity(directory, reference, spec, recipe, inputs, "cpu", manifest=manifest,
                        latency=False)
    return [{"file": r.file, "format": r.format, "precision": r.precision, "runtime": r.runtime,
             "provider": r.provider, "samples": sum(len(s) for s in inputs), **r.summary,
             "agreement_on": r.agreement_on, "status": r.status, "error": r.error,
             "agreement_judged_by_budget": r.agreement_judged_by_budget,
             "breach": [b.detail for b in r.breaches], "by_size": by_size(r.metrics, spec.size)}
            for r in report.artifacts]


def _check_rows(rows: list[dict[str, Any]], recipe: Recipe, command: str) -> None:
    bad = [r for r in rows if r["breach"]]
    if bad:
        detail = "; ".join(f"{r['file']} output 'logits': {', '.join(r['breach'])}" for r in bad)
        raise ParityError(f"{recipe.name}: parity breach vs eager PyTorch: {detail}",
                          fix=f"inspect with `exporter parity {command} --no-fail --locate`, or "
                              "pass --no-fail to keep the artifacts anyway")


def check_request(request: ExportRequest):
    """(formats, graph input options, the named recipe): every check of ``request`` that needs no
    model built and no file written (usage first, then options, files, formats, the model spec)."""
    from .backends import registry
    from .graph_input import check_graph_input
    from .validate import check_model_options

    options = check_graph_input(request, request.formats)  # usage, before any environment check
    formats = _parse_formats(request.formats, request.precision)
    check_model_options(request)
    for fmt in formats:
        registry.check_request(fmt, request)
    if request.precision == "int8" and not request.quant.get("calibration"):
        raise UsageError("INT8 needs calibration images and none were given",
                         fix=f"pass --calibration DIR (an image folder, class subfolders allowed, or "
                             f"an .npy), or try the photos installed packages ship: exporter export "
                             f"{request.model} --precision int8 --calibration packaged")
    named, _ = resolve_model(request.model, input_size=request.input_size, channels=request.channels,
                             mean=request.mean, std=request.std, num_classes=request.num_classes)
    return formats, options, named


def export(request: ExportRequest) -> ExportResult:
    """Run the whole export pipeline; nothing is written unless every stage succeeds."""
    from .output_dir import (check_free_space, check_output_location, claim_output_dir,
                             refuse_foreign_files, without_parent_steps)
    from .graph_input import check_dynamic_size, wrap
    from .validate import check_output_outside_data

    start = time.perf_counter()
    from .backends import registry
    from .recipes import override_tolerances

    formats, options, named = check_request(request)
    directory = without_parent_steps(Path(request.output or Path("artifacts") / named.name))
    check_output_location(directory)
    check_output_outside_data(directory, request.quant or {})
    claim_output_dir(directory, named.name)
    earlier = read_manifest_if_any(directory)
    refuse_foreign_files(directory, registry.artifact_names(  # before calibration, not at the commit
        formats, named.name, request.precision, (request.quant or {}).get("target")), earlier)
    request.stage(f"load: {request.model}")
    recipe, spec, model, weights_info = load_stage(request)
    recipe = override_tolerances(recipe, request.atol, request.rtol)
    request.stage(f"prepare: {', '.join(recipe.prepare_steps)}; input {spec.channels}x"
                  f"{spec.size[0]}x{spec.size[1]}; weights {weights_info.get('kind')}")
    reference, deploy, prep, recipe = prepare_stage(model, recipe, spec, request.num_classes)
    check_dynamic_size(deploy, recipe, spec, options,  # refused before anything is written
                       request.exporter if "onnx" in formats else None)
    graph = wrap(deploy, spec, options)  # what every format is exported from
    weight_bytes = sum(p.numel() * p.element_size() for p in deploy.parameters())
    check_free_space(directory, (weight_bytes + (1 << 20)) * (len(formats) + 1))
    stem = recipe.name
    artifacts: list[dict[str, Any]] = []
    export_info: dict[str, Any] = {}
    with staging(directory) as stage:
        onnx_path = None
        cache = directory / f"{stem}.int8.calib.json"
        if request.precision == "int8" and cache.is_file():  # every INT8 format re-uses its ranges
            shutil.copy2(cache, stage / cache.name)
        meta = build_metadata(recipe, spec, request, weights_info)
        if "onnx" in formats:  # first: the verified FP32 ONNX is the source of from_onnx formats
            onnx_path = stage / f"{stem}.onnx"
            request.stage(f"onnx: {request.exporter} exporter, opset {request.opset}, "
                          f"{request.simplifier} simplifier, deploy check")
            export_info = onnx_stage(graph, spec, onnx_path, request, prep.expected_bn_nodes, meta)
            artifacts.append(artifact_entry(onnx_path, "onnx", "fp32", exporter=request.exporter,
                                            simplifier=request.simplifier, opset=request.opset))
            if request.precision != "fp32":
                artifacts.append(_quantize(stage, stem, recipe, spec, request, meta))
        artifacts += _runtime_artifacts(formats, graph, recipe, spec, request, stage, stem,
                                        onnx_path, prep.expected_bn_nodes, meta)
        request.stage("verify: every artifact vs eager" if request.verify else "verify: skipped")
        parity = verify_stage(stage, artifacts, reference, recipe, spec, request) \
            if request.verify else []
        if request.fail_on_breach:
            _check_rows(parity, recipe, request.model)
        manifest = _manifest(request, recipe, spec, weights_info, prep, export_info, artifacts,
                             parity, directory)
        write_json_atomic(stage / MANIFEST, manifest)
    made = {a["file"] for a in artifacts}
    return ExportResult(directory=directory, manifest=manifest, recipe=recipe, spec=spec,
                        reference=reference, deploy=deploy, parity=parity,
                        seconds=time.perf_counter() - start,
                        kept=tuple(a["file"] for a in manifest["artifacts"] if a["file"] not in made),
                        replaced=replaced_export(earlier, manifest, directory))


def _quantize(stage: Path, stem: str, recipe: Recipe, spec: InputSpec,
              request: ExportRequest, meta: dict[str, str]) -> dict[str, Any]:
    """The FP16 / INT8 ONNX from the staged FP32 ONNX (an earlier calibration cache, staged by
    :func:`export`, re-used)."""
    from .quantize import quantize_stage

    entry = quantize_stage(stage / f"{stem}.onnx", stage, recipe, spec, request.precision,
                           log=request.log, **request.quant)
    from .reuse import data_fingerprints

    entry.setdefault("details", {})["options"] = quant_options_record(request.quant)
    if request.precision == "int8":
        entry["details"]["data_files"] = data_fingerprints(request.quant)
    # the FP16/INT8 file keeps the FP32 model's metadata; its precision is its own
    path = stage / entry["file"]
    write_onnx_metadata(path, for_artifact(meta, "onnx", entry["precision"]))
    entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    return entry


def _runtime_artifacts(formats, deploy, recipe, spec, request, stage, stem, onnx_path,
                       expected_bn, meta) -> list[dict[str, Any]]:
    """Every requested format but ONNX, through its registry backend, in the order asked."""
    from .scratch import scratch_dir

    from .backends import registry
    from .backends.registry import ExportContext

    others = [f for f in formats if f != "onnx"]
    if not others:
        return []
    entries: list[dict[str, Any]] = []
    with scratch_dir("onnx") as scratch:
        if onnx_path is None and any(registry.get(f).from_onnx for f in others):
            onnx_path = Path(scratch) / f"{stem}.onnx"  # converted from, not shipped
            onnx_stage(deploy, spec, onnx_path, request, expected_bn, meta)
        for fmt in others:
            request.stage(f"{fmt}: {registry.get(fmt).summary}")
            ctx = ExportContext(deploy=deploy, recipe=recipe, spec=spec, request=request,
                                stage=stage, stem=stem, onnx_path=onnx_path,
                                log=request.log or (lambda _msg: None), metadata=meta)
            entries += registry.load(fmt).export(ctx)
    return entries


def _manifest(request, recipe, spec, weights_info, prep, export_info, artifacts, parity,
              directory) -> dict[str, Any]:
    """The manifest: previous artifacts of the *same* model configuration are kept."""
    model_block = {
        "model": recipe.name,
        "model_spec": request.model,
        "recipe": {"name": recipe.name, "family": recipe.family, "source": recipe.source,
                   "builder": recipe.builder, "num_classes": recipe.num_classes,
                   "path": str(recipe.path) if recipe.path else None,
                   **({"source_sha256": model_code_sha256(recipe.builder)} if recipe.source == "file"
                      else {})},
        "weights": weights_info,
        "input": {**spec.to_dict(), "batch": request.batch, "dynamic_batch": request.batch is None,
                  **graph_input_record(request, spec)},
        "model_options": {k: v for k, v in asdict(request).items() if k in MODEL_OPTION_KEYS},
    }
    kept: list[dict[str, Any]] = []
    old = read_manifest_if_any(directory)
    if old is not None and all(old.get(k) == v for k, v in model_block.items()):
        new_files = {a["file"] for a in artifacts}
        kept = [a for a in old.get("artifacts", []) if a["file"] not in new_files
                and (directory / a["file"]).exists()]
        export_info = export_info or old.get("export", {})
    return {
        "schema": 1,
        **model_block,
        "prepare": prep.to_dict(),
        "export": export_info,
        "artifacts": kept + artifacts,
        "parity": parity,
        "versions": {**tool_versions(), "zoo-exporter": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def graph_input_record(request, spec) -> dict[str, Any]:
    """The manifest's record of what the graph takes (layout, normalization, sizes checked)."""
    from .graph_input import GraphInput, check_sizes

    options = GraphInput.of(request)
    return {**options.to_dict(), "check_sizes": [list(s) for s in check_sizes(spec, options)]}
