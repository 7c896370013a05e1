"""The short human summary ``exporter export`` prints."""
from __future__ import annotations


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rounding(record: dict | None) -> str:
    """' + <method> weight rounding (N layers)' for an opt-in rounding, else ''."""
    if not record or record.get("method", "nearest") == "nearest":
        return ""
    return f" + {record['method']} weight rounding ({record.get('layers', 0)} layer(s))"


def _tuning(record: dict | str | None) -> str:
    """' + range tuning (calibration KL a -> b)' when the opt-in tuning ran, or why it did not."""
    if not record:
        return ""
    if isinstance(record, str):
        return f" + range tuning {record}"
    kept = "" if record.get("applied") else ", not applied: KL not lower"
    return f" + range tuning (calibration KL {record['kl_before']:.4g} -> {record['kl_after']:.4g}{kept})"


MOSTLY_INT8 = 0.5  # under this share of convs in INT8, the summary warns that the model is mostly float


def _quant_lines(d: dict, fp32_file: str = "the FP32 ONNX") -> list[str]:
    """INT8 facts a person needs: how much really runs INT8, what was kept, what was measured."""
    if "quantize" in d:  # OpenVINO: the IR of our Q/DQ ONNX, whose facts it keeps
        return ["    (the Q/DQ ONNX this IR was converted from, cpu placement; its latency is ONNX "
                "Runtime's, not OpenVINO's)"] + _quant_lines(d["quantize"], "the FP32 OpenVINO IR")
    if "int8_conv_fraction" not in d:  # a PT2E artifact (ExecuTorch, LiteRT)
        return _pt2e_lines(d)
    cache = d.get("calibration_cache", {})
    kept = d.get("kept_fp16_layers", [])
    by_rule = [n for n in kept if n in d.get("kept_by_rule", {})]
    by_budget = [n for n in kept if n not in by_rule]
    precision = d.get("kept_layers_precision", "fp16")
    lines = [
        f"    int8: {d['int8_convs']}/{d['convs']} convs INT8 ({100 * d['int8_conv_fraction']:.1f}%); "
        f"kept in {precision}: {len(by_rule)} layer(s) by rule, {len(by_budget)} by the budget"
        + (f" ({', '.join(by_budget[:4])}{', ...' if len(by_budget) > 4 else ''})" if by_budget else "")
        + (f"; {len(d['kept_fp32_layers'])} of them in fp32 (beyond fp16's range)"
           if d.get("kept_fp32_layers") else "")
        + (f", {len(d['float_out_layers'])} run in float (a kept layer reads their output)"
           if d.get("float_out_layers") else ""),
        _budget_line(d),
        *_floor_line(d),
        f"    calibration: {d.get('method')}"
        + (f" + {d['range_search']}" if d.get("range_search") else "")
        + _rounding(d.get("weight_rounding"))
        + f"{' + bias correction' if d.get('bias_correction') else ''}" + _tuning(d.get("range_tuning"))
        + (f" + {len(d['zero_centred'])} activation(s) zero-centred" if d.get("zero_centred") else "")
        + f" over {d.get('samples_used')} sample{'' if d.get('samples_used') == 1 else 's'}{_fewer(d)} from "
        f"{(d.get('calibration') or {}).get('source')}, {d.get('skipped_files', 0)} file(s) skipped"
        + (", cache hit" if cache.get("hit") else f", cache miss ({cache.get('reason')})"),
    ]
    if d.get("budget_warning"):
        lines.append(f"    WARNING: {d['budget_warning']}")
    if by_budget and d["int8_conv_fraction"] < MOSTLY_INT8:
        lines.append(f"    WARNING: only {d['int8_convs']} of the {d['convs']} convs run INT8: the budget "
                     f"kept {len(by_budget)} layer(s) in {precision} (--max-kept-fraction allowed it), so "
                     f"this model is mostly {precision}, with little of INT8's speed and size; "
                     f"compare --precision {'fp16' if precision == 'fp16' else 'fp32'}")
    retry = d.get("lever_retry")
    if retry:
        lines.append(f"    retried: the default calibration missed the budget (best {retry['default_best']}); "
                     f"met with the opt-in lever {retry['levers']} (+{retry['seconds']:.0f} s)")
    lat = d.get("latency_cpu")
    if lat:
        lines.append(f"    latency (ONNX Runtime CPU, batch {lat['batch']}, {lat['threads']} threads): "
                     f"INT8 {lat['int8_ms']:.2f} ms vs FP32 {lat['fp32_ms']:.2f} ms = "
                     f"{lat['speedup']:.2f}x" + (f" ({timings_note(lat)})" if timings_note(lat) else ""))
        if lat["speedup"] < 1.0:
            lines.append(slower_warning(lat["speedup"], d.get("float_readers") or {}, fp32_file))
    return lines


def _fewer(d: dict) -> str:
    """' (of N requested: ...)' when the source had fewer calibration samples than asked for."""
    calibration = d.get("calibration") or {}
    requested, used = calibration.get("requested"), d.get("samples_used")
    if not requested or used is None or used >= requested:
        return ""
    dropped = calibration.get("dropped_for_batch") or 0
    reasons = [f"{dropped} left out to fill whole batches of the fixed batch size"] if dropped else []
    if requested - used - dropped > 0:
        reasons.append("the source holds no more"
                       + (" once the judging samples are held out" if d.get("judged_on_split") else ""))
    return f" (of {requested} requested: {'; '.join(reasons)})"


def _budget_line(d: dict) -> str:
    m = d.get("measured", {})
    shown = f"top-1 agreement {m.get('top1_agreement', float('nan')):.3f}"
    if m.get("top1_agreement_ci95"):
        lo, hi = m["top1_agreement_ci95"]
        shown += f" (95% CI {lo:.3f}-{hi:.3f}, n={m.get('samples')})"
    if "accuracy_drop_points" in m:
        shown += f", top-1 {m['int8_top1']:.3f} vs FP32 {m['fp32_top1']:.3f}"
    return (f"    budget: {d.get('criterion')} -> {'met' if d.get('budget_met') else 'NOT met'}: "
            f"{shown}; judged on {d.get('measured_on')}")


def _floor_line(d: dict) -> list[str]:
    """The judging samples' floor (:func:`~exporter.quantize.judging.noise_floor`), when measured."""
    floor = d.get("judging_floor")
    if not floor:
        return []
    from .quantize.judging import floor_sentence

    return [f"    judging floor: {floor_sentence(floor)}"
            + ("; that is below the budget, so INT8 is asked to flip fewer near-ties than the noise does"
               if floor.get("below_budget") else "")]


def _pt2e_lines(d: dict) -> list[str]:
    """A PT2E artifact's INT8 facts: its quantizer, the layers kept in float, the budget."""
    if "criterion" not in d:
        return []
    kept = d.get("kept_float") or []
    cal = d.get("calibration") or {}
    lines = [f"    int8: {d.get('quantizer')}; kept in float by the budget: {len(kept)}"
             + (f" ({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})" if kept else ""),
             _budget_line(d),
             *_floor_line(d),
             f"    calibration: {cal.get('used')} samples from {cal.get('source')}, "
             f"{cal.get('skipped', 0)} file(s) skipped"]
    if d.get("options_not_used"):
        lines.append(f"    not used by this runtime's INT8: {', '.join(d['options_not_used'])} "
                     "(options of the ONNX and OpenVINO INT8 path)")
    if d.get("budget_warning"):
        lines.append(f"    WARNING: {d['budget_warning']}")
    return lines


def int8_export_note(details: dict) -> str | None:
    """One line of an INT8 artifact's facts from its export (how much runs INT8, the budget),
    for parity reports that run the artifact later (``parity --artifacts``, --zoo, matrix)."""
    d = details.get("quantize", details)  # OpenVINO keeps the facts of its Q/DQ ONNX
    if "criterion" not in d:
        return None
    if "int8_conv_fraction" in d:
        kept = len(d.get("kept_fp16_layers", []))
        share = (f"{d['int8_convs']}/{d['convs']} convs INT8 ({100 * d['int8_conv_fraction']:.1f}%), "
                 f"{kept} layer(s) kept in {d.get('kept_layers_precision', 'fp16')}")
    else:
        share = f"{len(d.get('kept_float') or [])} layer(s) kept in float ({d.get('quantizer')})"
    return f"INT8 at export: {share}; " + _budget_line(d).strip()


def timings_note(latency: dict) -> str:
    """"the best of N timings: ..." when the ``cpu`` speed guard timed a model more than once."""
    seen = latency.get("speedups") or []
    return f"the best of {len(seen)} timings: {', '.join(f'{v:.2f}x' for v in seen)}" if len(seen) > 1 else ""


def slower_warning(speedup: float, float_readers: dict, fp32_file: str = "the FP32 ONNX") -> str:
    """The summary's line for a ``cpu`` INT8 model that runs slower than FP32."""
    ops = ", ".join(f"{op} x{n}" for op, n in list(float_readers.items())[:4])
    why = (f": ONNX Runtime runs {sum(float_readers.values())} op(s) of it in float between "
           f"DequantizeLinear and QuantizeLinear ({ops})" if float_readers else "")
    return (f"    WARNING: this INT8 model runs slower than FP32 on this CPU ({speedup:.2f}x){why}; "
            f"deploy {fp32_file} on this CPU, or the --target tensorrt INT8 model on a GPU")


def weights_line(info: dict, source: str = "") -> str:
    """What the weights are; random ones say how to pass real ones (a file model: a checkpoint)."""
    if info["kind"] == "random":
        bn = "BN statistics randomized" if info.get("bn_stats", "randomized") == "randomized" \
            else "no BatchNorm to randomize"
        zeros = info.get("zero_weights_randomized") or []
        also = f", zero-initialized {', '.join(zeros)} given random weights" if zeros else ""
        real = "--checkpoint PATH" if source == "file" else "--weights DEFAULT or --checkpoint PATH"
        return (f"weights: seeded random init (seed {info['seed']}, {bn}{also}) - NOT trained; pass "
                f"{real} for real weights")
    if info["kind"] in ("torchvision", "timm"):
        return f"weights: {info['kind']} {info['name']}"
    return f"weights: checkpoint {info['path']} (sha256 {info['sha256'][:12]})"


def _graph_input_line(block: dict) -> str | None:
    """What the graph takes, when it is not the default NCHW normalized static-size input."""
    parts = []
    if block.get("layout", "nchw") != "nchw":
        parts.append(f"{block['layout'].upper()} layout")
    if block.get("normalize_in_graph"):
        parts.append("normalized in the graph ([0, 1] pixels in)")
    if block.get("dynamic_size"):
        sizes = " and ".join("x".join(map(str, s)) for s in block.get("check_sizes", []))
        parts.append(f"dynamic height/width (parity sizes {sizes})")
    return "  graph input: " + ", ".join(parts) if parts else None


def _batch(manifest: dict) -> str:
    """The batch the artifacts take: 'dynamic', or the fixed size of those traced at one (the
    ExecuTorch and LiteRT programs are static even when the rest are dynamic)."""
    if not manifest["input"]["dynamic_batch"]:
        return str(manifest["input"]["batch"])
    fixed = {a["file"]: a.get("details", {}).get("batch") for a in manifest.get("artifacts", [])
             if isinstance(a.get("details", {}).get("batch"), int)}
    if not fixed:
        return "dynamic"
    sizes = sorted(set(fixed.values()))
    if len(fixed) == len(manifest["artifacts"]) and len(sizes) == 1:
        return f"{sizes[0]} (static programs)"
    return f"dynamic ({', '.join(fixed)}: {', '.join(map(str, sizes))})"


def export_summary(result) -> str:
    """Lines: model, weights, prepare, export, artifacts, parity."""
    m = result.manifest
    prep, exp = m["prepare"], m.get("export", {})
    h, w = result.spec.size
    lines = [f"{result.recipe.name}: input {m['input']['channels']}x{h}x{w}, batch {_batch(m)}, "
             f"done in {result.seconds:.1f} s -> {result.directory}",
             "  " + weights_line(m["weights"], (m.get("recipe") or {}).get("source", ""))]
    graph = _graph_input_line(m["input"])
    if graph:
        lines.append(graph)
    unfolded = prep.get("bn_unfolded", [])
    prepare = f"  prepare: {prep.get('bn_folded', 0)} BN folded, {len(unfolded)} not foldable"
    if unfolded:
        prepare += f" (e.g. {unfolded[0]['module']}: {unfolded[0]['reason']})"
    if prep.get("aux_removed"):
        prepare += ", removed " + ", ".join(f"{k} ({v:,} params)" for k, v in prep["aux_removed"].items())
    lines.append(prepare)
    if exp:
        nodes, seconds = exp.get("nodes_exported"), exp["seconds"]
        if exp.get("simplifier") in (None, "none"):
            simplified = f"{nodes} nodes, not simplified (--simplifier none), export {seconds:.1f} s"
        else:
            simplified = (f"{nodes} nodes -> {exp.get('nodes_after')} after {exp.get('simplifier')}, "
                          f"export {seconds:.1f} s + simplify {exp.get('simplify_seconds', 0):.1f} s")
            if exp.get("simplifier_warnings"):
                simplified += (f" ({exp['simplifier']} printed {exp['simplifier_warnings']} warning line(s): "
                               "hidden, --debug shows them)")
        lines.append(f"  onnx: {exp['exporter']} exporter, opset {exp['opset']}, {simplified}")
        if exp.get("adaptive_pools_as_matmul"):
            lines.append(f"  onnx: adaptive average pool written as two MatMuls (sizes do not "
                         f"divide): {', '.join(exp['adaptive_pools_as_matmul'])}")
    replaced = getattr(result, "replaced", None)
    if replaced:
        from .manifest_model import changed_options

        changed = changed_options(replaced)
        done = ([f"overwrote {', '.join(replaced['overwritten'])}"] if replaced.get("overwritten") else []) \
            + ([f"removed {', '.join(replaced['files'])}"] if replaced.get("files") else [])
        lines.append(f"  replaced: an earlier export of other model options"
                     f"{f' ({changed})' if changed else ''} in this folder; {' and '.join(done)}, "
                     "made for those options (one folder holds one export: --output keeps both)")
    kept = set(getattr(result, "kept", ()))
    for a in m["artifacts"]:
        lines.append(f"  artifact: {a['file']} ({a['format']}, {a['precision']}, {_size(a['bytes'])})"
                     + (" - kept from an earlier export of the same model into this folder, not "
                        "rebuilt or checked by this run" if a["file"] in kept else ""))
        if a["file"] not in kept:
            lines.extend(_quant_lines(a.get("details", {})))
    if not result.parity and any(a["file"] not in kept for a in m["artifacts"]):
        lines.append(f"  parity vs eager: not checked (--no-verify); check with `exporter parity "
                     f"{m.get('model_spec', m['model'])} --artifacts {result.directory}`")
    for row in result.parity:
        if row.get("status") == "skipped":  # e.g. Core ML off macOS: converted and checked, not run
            lines.append(f"  parity vs eager [{row['file']}]: {row.get('error')}")
            continue
        status = "BREACH " + "; ".join(row["breach"]) if row["breach"] else "ok"
        lines.append(f"  parity vs eager [{row['file']} on {row['provider']}, {row['samples']} inputs]: "
                     f"rel max-abs {row['rel_max_abs']:.2e}, cosine {row['cosine']:.6f}, "
                     f"top-1 {row['top1_agreement']:.3f}, top-5 {row['top5_agreement']:.3f} -> {status}")
        if row.get("agreement_judged_by_budget"):
            lines.append(f"    top-1 judged by the INT8 budget: {row['agreement_judged_by_budget']}")
        for size, s in (row.get("by_size") or {}).items():
            lines.append(f"    at {size}: rel max-abs {s['rel_max_abs']:.2e}, max-abs "
                         f"{s['max_abs']:.2e}, top-1 {s['top1_agreement']:.3f}")
    return "\n".join(lines)
