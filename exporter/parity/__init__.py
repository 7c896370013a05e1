"""Parity: eager PyTorch versus every artifact of a directory, on the same inputs.

``run_parity`` runs the eager reference and every artifact listed in the manifest (through
``backends.base.runner_for``) on the same preprocessed inputs, compares the logits
(``metrics.compare_outputs``), checks each artifact against ``recipe.tolerance(precision)``, and
times everything in one process (``latency.benchmark``). The result is a :class:`ParityReport`;
``report.breaches()`` lists what broke the tolerance and ``report.error()`` turns that into a
:class:`ParityError` naming the file, the output, the numbers and the command to run next.

Which numbers are checked:

* max-abs error relative to ``max|eager logits|`` (worst over every input set) against
  ``rel_max_abs`` - relative because random-init logits range from 1e-2 to 1e11;
* cosine similarity (worst sample over every input set) against ``min_cosine``;
* top-1 agreement on the real images (random tensors only when no image was given) against
  ``min_top1_agreement``; random tensors are out-of-distribution, their argmax is not a meaningful
  prediction, so they test the numbers, the images test the predictions.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from torch import nn

from ..artifacts import changed_files, confined, read_manifest
from ..backends import registry
from ..data import random_inputs
from ..errors import ArtifactError, BackendUnavailableError
from ..latency import (DEFAULT_ROUNDS, DEFAULT_RUNS, DEFAULT_WARMUP, benchmark, ratio_is_stable,
                       set_threads, speedup)
from ..graph_input import GraphInput, adapt_runner
from ..metrics import accuracy, compare_outputs
from ..recipes import InputSpec, Recipe
from ..summary import int8_export_note
from .inputs import (DEFAULT_RANDOM, DEFAULT_SAMPLES, EagerOutputs, InputSet, as_input_sets,
                     build_inputs, check_labels, per_sample_rel_error, run_chunked)
from .results import (OUTPUT_NAME, ArtifactResult, Breach, ParityReport, check_tolerance,
                      defer_agreement_to_budget)

__all__ = ["ArtifactResult", "Breach", "DEFAULT_RANDOM", "DEFAULT_SAMPLES", "EagerOutputs", "InputSet",
           "OUTPUT_NAME", "ParityReport", "build_inputs", "by_size", "check_tolerance", "machine_info",
           "run_chunked", "run_parity"]

DEFAULT_BATCH_SIZES = (1, 8)


# --------------------------------------------------------------------------------------- metrics
def _summarize(sets: Sequence[InputSet], refs: dict[str, np.ndarray],
               outs: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]], dict[str, float], str, int]:
    per_set = {s.name: compare_outputs(refs[s.name], outs[s.name]) for s in sets}
    agree_sets = [s for s in sets if s.real] or list(sets)
    ref = np.concatenate([refs[s.name] for s in agree_sets])
    cand = np.concatenate([outs[s.name] for s in agree_sets])
    agree = compare_outputs(ref, cand)
    values = list(per_set.values())
    summary = {
        "max_abs": max(m["max_abs"] for m in values),
        "rel_max_abs": max(m["rel_max_abs"] for m in values),
        "mean_abs": max(m["mean_abs"] for m in values),
        "cosine": min(m["cosine"] for m in values),
        "top1_agreement": agree["top1_agreement"],
        "top5_agreement": agree["top5_agreement"],
    }
    on = " + ".join(f"{len(s)} {s.name}" for s in agree_sets)
    return per_set, summary, on, len(ref)


def by_size(metrics: dict[str, dict[str, float]], native: Sequence[int]) -> dict[str, dict[str, float]]:
    """Worst errors and top-1 agreement per input size (``{"64x64": {...}, "96x96": {...}}``)
    when the sets span several sizes (a dynamic-size artifact); ``{}`` otherwise. Sets named
    ``name@HxW`` are at HxW, the others at ``native``; agreement is judged on the real images."""
    groups: dict[str, list[str]] = {}
    for name in metrics:
        groups.setdefault(name.partition("@")[2] or "x".join(map(str, native)), []).append(name)
    if len(groups) < 2:
        return {}
    out = {}
    for size, names in groups.items():
        real = [n for n in names if not n.startswith("random")] or names
        out[size] = {"max_abs": max(metrics[n]["max_abs"] for n in names),
                     "rel_max_abs": max(metrics[n]["rel_max_abs"] for n in names),
                     "cosine": min(metrics[n]["cosine"] for n in names),
                     "top1_agreement": min(metrics[n]["top1_agreement"] for n in real)}
    return out


def size_notes(metrics: dict[str, dict[str, float]], native: Sequence[int]) -> list[str]:
    """One line per input size of a dynamic-size artifact, for the table's notes."""
    return [f"at {size}: rel max-abs {m['rel_max_abs']:.2e}, max-abs {m['max_abs']:.2e}, "
            f"top-1 agreement {m['top1_agreement']:.3f}" for size, m in by_size(metrics, native).items()]


def _accuracy(sets: Sequence[InputSet], outs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {s.name: accuracy(outs[s.name], s.labels) for s in sets if s.labels is not None}


def _cpuinfo_field(name: str) -> str:
    """The first ``name`` line of /proc/cpuinfo (its value), or "" where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(name) and ":" in ln), "")


def cpu_int8_isa() -> str | None:
    """The x86 dot-product extensions INT8 CPU kernels run on, e.g. ``"AVX-512 VNNI"`` or ``"no VNNI
    (AVX2)"`` (without VNNI, ONNX Runtime's u8 x s8 kernels saturate: benchmarks/INT8_U8S8.md);
    None where /proc/cpuinfo has no x86 flags."""
    flags = set(_cpuinfo_field("flags").split())
    if not flags:
        return None
    names = [label for flag, label in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"),
                                       ("avx_vnni", "AVX-VNNI")) if flag in flags]
    base = "AVX-512F" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return ", ".join(names) if names else f"no VNNI ({base})"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Machine and versions the numbers were measured with."""
    import torch

    from ..artifacts import tool_versions

    cpu = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    import os

    info = {"cpu": cpu, "cpu_int8": cpu_int8_isa(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "cuda_available": torch.cuda.is_available(),
            "versions": tool_versions()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):  # other jobs on the machine inflate absolute times
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _measured_on(device: str, label: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return (f"CUDA: {label}; PyTorch timed with CUDA events (synchronized, warm-up excluded), "
                f"ONNX Runtime with the CUDA execution provider where installed; {threads} CPU threads")
    why = "no CUDA device found" if not torch.cuda.is_available() else "CPU requested"
    return f"CPU ({why}): measured on CPU with {threads} intra-op threads for every runtime"


def _needs_other_device(backend: Any, device: str) -> bool:
    """Whether ``backend``'s runtime needs another device than ``device`` (a TensorRT engine on a
    CPU run): its artifact is skipped, not run."""
    return bool(backend and backend.device and not device.startswith(backend.device))


def _modified(directory: Path, entries: Sequence[dict[str, Any]],
              device: str) -> tuple[list[str], list[str]]:
    """(files whose sha256 no longer matches their manifest entry, files the manifest lists that
    are missing), companions included; an artifact skipped on ``device`` may be missing."""
    found, missing = [], []
    for entry in entries:
        for record in [entry, *entry.get("companions", [])]:
            confined(directory, record.get("file"))
        for note in changed_files(entry, directory):
            if " differs from the manifest" in note:
                found.append(note.split(" differs")[0])
            elif note.endswith(" is missing") and \
                    not _needs_other_device(registry.BACKENDS.get(entry["format"]), device):
                missing.append(note[:-len(" is missing")])
    return found, missing


# --------------------------------------------------------------------------------------- runner
def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc), None elsewhere."""
    import os

    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _artifact_runner(entry: dict[str, Any], directory: Path, device: str,
                     options: dict[str, dict[str, Any]], threads: int):
    """The registry backend's runner for ``entry``, with this run's thread count for every
    backend whose factory takes ``threads`` (all runtimes timed with the same count)."""
    import inspect

    from ..backends.base import runner_for

    kwargs = dict(options.get(entry["format"], {}))
    factory = registry.load(entry["format"]).make_runner
    if "threads" in inspect.signature(factory).parameters:
        kwargs.setdefault("threads", threads)
    return runner_for(entry, directory, device, **kwargs)


def run_parity(directory: str | Path, reference: nn.Module | None, spec: InputSpec, recipe: Recipe,
               inputs: Any, device: str = "cpu", *, manifest: dict[str, Any] | None = None,
               artifacts: Iterable[str] | None = None,
               runners: dict[str, Any] | None = None,
               runner_options: dict[str, dict[str, Any]] | None = None,
               latency: bool = True, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
               warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, rounds: int = DEFAULT_ROUNDS,
               threads: int | None = None, progress: Callable[[str], None] | None = None,
               accept_modified: bool = False,
               eager_outputs: EagerOutputs | None = None) -> ParityReport:
    """Eager ``reference`` versus every artifact of ``directory`` on ``inputs``.

    ``inputs``: a list of :class:`InputSet` (see :func:`build_inputs`), an ``ImageBatch`` or an
    NCHW array. ``artifacts``: only these files (or formats). ``runners``: ``{file: runner}`` to
    use instead of the manifest's backend for that file (a runner for a file absent from the
    manifest is run too, with format ``custom``) - the plug-in point for other runtimes, and how
    the tests feed an artifact wrongly preprocessed inputs. ``runner_options``: per-format keyword
    arguments for the backend's runner factory, e.g. ``{"onnx": {"provider": "tensorrt"}}``; a
    requested provider that does not load raises (``ProviderFallbackError``), it is not skipped.
    A file whose sha256 differs from its manifest entry is an :class:`ArtifactError` unless
    ``accept_modified`` (then a note in the table). ``eager_outputs``: the eager reference's
    outputs on these very ``inputs``, computed once elsewhere (``exporter matrix`` shares them
    between jobs); ``reference`` is then only run to time it and may be None with ``latency=False``.
    """
    from ..backends.onnxruntime import ProviderFallbackError
    from ..backends.eager import EagerRunner, device_label, resolve_device

    directory = Path(directory)
    say = progress or (lambda _msg: None)
    device = resolve_device(device)
    threads = set_threads(threads)
    manifest = manifest if manifest is not None else read_manifest(directory)
    sets = as_input_sets(inputs)
    graph_input = GraphInput.from_manifest(manifest)  # layout / normalization / dynamic H/W
    # a static-size artifact sees only the inputs at its size; a dynamic-size one sees every size
    static_sets = [s for s in sets if tuple(s.array.shape[2:]) == tuple(spec.size)] or sets
    fixed_batch = (manifest.get("input") or {}).get("batch")
    if fixed_batch:
        batch_sizes = (int(fixed_batch),)
    notes: list[str] = []

    if reference is None and (eager_outputs is None or (latency and batch_sizes)):
        raise ValueError("run_parity needs the eager reference model to compute its outputs or "
                         "to time it")
    eager = EagerRunner(reference, device) if reference is not None else None
    if eager_outputs is None:
        say("parity: eager reference outputs")
        eager_outputs = EagerOutputs.of(eager, sets, fixed_batch)
    else:
        eager_outputs.check(sets)
    refs = eager_outputs.outputs
    check_labels(sets, refs)
    eager_result = ArtifactResult(file="", format="pytorch", precision="fp32", name="eager",
                                  runtime=eager_outputs.runtime, provider=eager_outputs.provider,
                                  threads=threads, status="reference",
                                  notes=list(eager_outputs.notes), accuracy=_accuracy(sets, refs))

    real = [refs[s.name] for s in sets if s.real and len(s) > 1]
    if real and len(np.unique(np.argmax(np.concatenate(real), axis=1))) == 1:
        notes.append("eager predicts the same class for every image (random weights?): top-1 "
                     "agreement says little here; the error and cosine checks still hold")

    entries = list(manifest.get("artifacts", []))
    wanted = set(artifacts) if artifacts is not None else None
    if wanted is not None:
        entries = [e for e in entries if e["file"] in wanted or e["format"] in wanted]
    modified, missing = _modified(directory, [e for e in entries if e["file"] not in (runners or {})],
                                  device)
    if missing:
        raise ArtifactError(f"{', '.join(missing)}, listed in {directory / 'manifest.json'}, "
                            f"{'is' if len(missing) == 1 else 'are'} missing from {directory}",
                            fix="restore the file(s), or re-export the model into the folder "
                                "(exporter export MODEL ... -o DIR)")
    if modified and not accept_modified:
        raise ArtifactError(f"{', '.join(modified)} in {directory} differ from the sha256 its "
                            "manifest recorded (changed since export)",
                            fix="re-export the model, or pass --accept-modified to compare the "
                                "files as they are now")
    extra = dict(runners or {})
    for file in extra:
        if not any(e["file"] == file for e in entries):
            entries.append({"file": file, "format": "custom", "precision": getattr(extra[file], "precision", "fp32")})

    live: dict[str, Any] = {"eager": eager} if eager is not None else {}
    results: list[ArtifactResult] = []
    for entry in entries:
        file = entry["file"]
        result = ArtifactResult(file=file, format=entry["format"], precision=entry.get("precision", "fp32"),
                                tolerance=recipe.tolerance(entry.get("precision", "fp32")))
        results.append(result)
        if file not in extra:  # every file of the artifact (OpenVINO/ncnn .bin, .mlpackage contents)
            result.notes.extend(changed_files(entry, directory))
        say(f"parity: {file}")
        export_note = int8_export_note(entry.get("details") or {})
        if export_note:
            result.notes.append(export_note)
        backend = registry.BACKENDS.get(entry["format"]) if file not in extra else None
        if backend is not None:
            try:
                result.notes.extend(registry.artifact_notes(entry, directory))
            except BackendUnavailableError:
                pass  # the runner below reports the missing backend
        if _needs_other_device(backend, device):
            result.status = "skipped"
            result.error = f"{backend.format} artifacts run on a {backend.device.upper()} device ({backend.summary}); this run is on {device}"
            result.notes.append(f"skipped: {result.error}")
            continue
        rss_before = resident_mb()
        try:
            runner = (extra[file] if file in extra
                      else adapt_runner(_artifact_runner(entry, directory, device, runner_options or {},
                                                         threads), spec, graph_input))
        except ProviderFallbackError:
            raise  # explicitly requested: never silently measured on another provider
        except (BackendUnavailableError, ImportError) as err:
            result.status = "skipped"
            result.error = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            result.notes.append(f"skipped: {result.error}")
            continue
        except Exception as err:  # noqa: BLE001 - a broken artifact is a finding, not a crash
            result.status, result.error = "error", f"{type(err).__name__}: {err}"
            result.breaches.append(Breach(file, OUTPUT_NAME, result.precision, "error", float("nan"),
                                          float("nan"), f"could not be loaded: {result.error}"))
            continue
        result.name = getattr(runner, "name", entry["format"])
        result.runtime = getattr(runner, "runtime", "")
        result.provider = getattr(runner, "provider", "")
        result.output_name = getattr(runner, "output_name", OUTPUT_NAME)
        result.threads = getattr(runner, "threads", threads)
        result.notes.extend(getattr(runner, "notes", []))
        runner_batch = fixed_batch or getattr(runner, "fixed_batch", None)
        try:
            limit = getattr(runner, "max_batch", None)
            mine = sets if graph_input.dynamic_size and file not in extra else static_sets
            outs = {s.name: run_chunked(runner, s.array, runner_batch, limit) for s in mine}
            result.metrics, result.summary, result.agreement_on, result.agreement_samples = \
                _summarize(mine, refs, outs)
            result.notes.extend(size_notes(result.metrics, spec.size))
        except Exception as err:  # noqa: BLE001
            result.status, result.error = "error", f"{type(err).__name__}: {err}"
            result.breaches.append(Breach(file, result.output_name, result.precision, "error",
                                          float("nan"), float("nan"), f"failed to run: {result.error}"))
            continue
        rss_after = resident_mb()
        if rss_before is not None and rss_after is not None:
            result.memory_mb = round(max(0.0, rss_after - rss_before), 1)
        result.accuracy = _accuracy(mine, outs)
        result.sample_errors = [float(v) for s in mine
                                for v in per_sample_rel_error(refs[s.name], outs[s.name])]
        result.breaches.extend(check_tolerance(result, result.tolerance))
        result.status = "breach" if result.breaches else "ok"
        defer_agreement_to_budget(result, entry.get("details") or {})
        live[file] = runner

    if latency and batch_sizes:
        say(f"latency: batch {', '.join(map(str, batch_sizes))}, every runner")
        biggest = max(batch_sizes)
        pool = random_inputs(spec, biggest, seed=12345)
        batches = {int(b): pool[:b] for b in batch_sizes}

        def failed(key: str, size: int, err: Exception) -> None:
            target = eager_result if key == "eager" else next(r for r in results if r.file == key)
            target.notes.append(f"latency at batch {size} failed: {type(err).__name__}: {err}")

        timings = benchmark(live, batches, warmup=warmup, runs=runs, rounds=rounds, threads=threads,
                            on_error=failed)
        eager_result.latency = timings.get("eager", {})
        for result in results:
            result.latency = timings.get(result.file, {})
            for size, stats in result.latency.items():
                if size in eager_result.latency:
                    result.speedup[size] = speedup(eager_result.latency[size], stats)
                    result.speedup_stable[size] = ratio_is_stable(eager_result.latency[size], stats)
        unstable = sorted({f"{r.file or 'eager'} b{b}: {'; '.join(s.unstable)}"
                           for r in [eager_result, *results] for b, s in r.latency.items()
                           if not s.stable})
        if unstable:
            notes.append("unstable timings (measured twice, still unstable; their speed-ups are "
                         "not results): " + " | ".join(unstable))

    model_spec = manifest.get("model_spec") or (manifest.get("model_options") or {}).get("model") \
        or manifest.get("model") or recipe.name
    return ParityReport(
        model=manifest.get("model", recipe.name), model_spec=model_spec, directory=directory,
        device=device, device_label=device_label(device),
        measured_on=_measured_on(device, device_label(device), threads), threads=threads,
        inputs=[s.describe() for s in sets], eager=eager_result, artifacts=results,
        batch_sizes=tuple(int(b) for b in batch_sizes) if latency else (), warmup=warmup,
        runs=runs, rounds=rounds, machine=machine_info(device),
        weights=dict(manifest.get("weights") or {}), input_spec=dict(manifest.get("input") or spec.to_dict()),
        notes=notes,
    )
