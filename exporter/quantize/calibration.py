"""Calibration: read the data (through ``exporter.data`` only), collect activation ranges, cache them.

Data sources (``calibration=``):
  * a directory of images (class subfolders allowed) -> ``samples.from_folder`` (scanned by
    ``exporter.image_folder``, read by ``exporter.data.read_image``);
  * an ``.npy`` file of already preprocessed NCHW float32 tensors (checked against the spec);
  * ``packaged`` or ``packaged:SEED`` -> ``exporter.data.packaged_crops`` (the default set).

Ranges come from two passes of the FP32 ONNX on ONNX Runtime CPU: pass 1 records min / max of every
activation tensor, pass 2 builds 2048-bin histograms of its positive and negative magnitudes. The
methods: ``minmax`` (max |x|), ``percentile`` (99.99th percentile of |x|), ``entropy`` (TensorRT's
KL-divergence threshold search on the |x| histogram), and ``mse`` (the amax minimising the expected
squared int8 error, clipping plus rounding).

The methods' threshold math is :mod:`.thresholds`. A range is ``(low, high, amax)``: ``amax`` for
a symmetric int8 quantizer (127 steps on each side of zero), ``low``/``high`` for one that spends
all its levels on ``[low, high]``: ONNX Runtime's uint8 (``cpu``) and the zero-centred int8 of a
ReLU output (``tensorrt``, :mod:`.shift`), both about 255 levels. With ``mse``, a tensor that is
never negative gets its own ``high``, the one that minimises the error of that quantizer: about
twice as many steps over the same values clip less (benchmarks/INT8_UNSIGNED_RANGE.md); before
2026-12-05 both used the symmetric ``amax``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..data import build_transform
from ..errors import CalibrationError
from ..recipes import InputSpec
from ..validate import packaged_seed
from .samples import SampleSet, Scratch, from_folder, from_npy, from_packaged
from .thresholds import BINS, sparse_hist

MIN_SAMPLES = 16  # fewer usable samples than min(requested, MIN_SAMPLES) is an error
CACHE_VERSION = 5  # 4: mse ranges of non-negative tensors have their own high; 5: cpu's conv outputs read by float ops
# elements per tensor and batch that enter a histogram (min/max always see every element); the
# stride is a prime, so it does not alias with channel or row lengths
HIST_ELEMENTS = 1 << 18


CalibrationData = SampleSet  # the name the rest of the package and the tests use
DEFAULT_HOLDOUT = 200  # held-out samples the INT8 budget is judged on


# splits read once by a driver and handed to its worker processes (``exporter matrix``), keyed by
# what a read would have been asked for, so manifests record the user's source unchanged
_PRELOADED: dict[tuple, tuple[SampleSet, SampleSet | None]] = {}


def preload_key(calibration: str | os.PathLike, spec: InputSpec, samples: int, holdout: int = 0,
                seed: int = 0) -> tuple:
    return (str(calibration), preprocessing_sha(spec), int(samples), int(holdout), int(seed))


def preload(key: tuple, split: tuple[SampleSet, SampleSet | None]) -> None:
    """Make later :func:`load_split` calls with ``key``'s arguments in this process return copies
    of ``split`` (read elsewhere: a shared file, Ray's object store) instead of reading again."""
    _PRELOADED[key] = split


def in_memory(split: tuple[SampleSet, SampleSet | None]) -> tuple[SampleSet, SampleSet | None]:
    """``split`` with its arrays copied out of their scratch memmaps (to pickle or share)."""
    return tuple(None if s is None else replace(s, array=np.array(s.array), _sha=None)
                 for s in split)  # type: ignore[return-value]


def load_split(calibration: str | os.PathLike | None, spec: InputSpec, samples: int = 256,
               holdout: int = 0, batch: int | None = None, seed: int = 0,
               scratch: Scratch | None = None,
               role: str = "calibration") -> tuple[SampleSet, SampleSet | None]:
    """(calibration set, held-out set or None) from one source, disjoint and class-balanced.

    ``holdout`` > 0 splits the source (see ``samples.split_sizes``); errors are
    :class:`CalibrationError` with a fix. The arrays live in ``scratch`` (a memmap per set).
    ``role`` "judging" reads ``--eval-images`` (the errors name it, not the calibration).
    """
    if _PRELOADED and calibration is not None:
        shared = _PRELOADED.get(preload_key(calibration, spec, samples, holdout, seed))
        if shared is not None:
            return _checked(*in_memory(shared), samples, batch, role)
    if calibration is None or str(calibration) == "":
        raise CalibrationError(
            "--precision int8 needs calibration data",
            fix="pass --calibration DIR (a folder of images), a preprocessed .npy, or 'packaged' for "
                "the small built-in set; see calibration/README.md")
    if samples < 1:
        raise CalibrationError(f"--calibration-samples must be >= 1 (got {samples})",
                               fix="pass a positive count, e.g. --calibration-samples 256")
    scratch = scratch or Scratch()
    text = str(calibration)
    try:
        crop_seed = packaged_seed(text, seed)
    except ValueError as err:
        raise CalibrationError(f"'{text}': {err}",
                               fix="use --calibration packaged or packaged:SEED") from None
    if crop_seed is not None:
        cal, held = from_packaged(crop_seed, spec, samples, holdout, scratch)
    else:
        path = Path(calibration)
        if path.is_dir():
            cal, held = from_folder(path, spec, samples, holdout, seed, scratch,
                                    role="--calibration folder" if role == "calibration" else "--eval-images folder")
        elif path.suffix.lower() == ".npy" and path.is_file():
            cal, held = from_npy(path, spec, samples, holdout, seed, scratch,
                                 lambda arr: _check_npy(arr, path, spec))
        elif not path.exists():
            raise CalibrationError(f"{_LABEL[role]} '{path}' does not exist",
                                   fix="pass an existing image folder or .npy file")
        else:
            raise CalibrationError(f"{_LABEL[role]} '{path}' is neither a folder nor an .npy file",
                                   fix="put the images in a folder and pass the folder")
    return _checked(cal, held, samples, batch, role)


def load_judging(eval_data: str | os.PathLike, spec: InputSpec, samples: int,
                 batch: int | None = None, scratch: Scratch | None = None) -> SampleSet:
    """The ``--eval-images`` set the INT8 budget is judged on (``samples`` of it, class-balanced)."""
    return load_split(eval_data, spec, samples, 0, batch, scratch=scratch, role="judging")[0]


_LABEL = {"calibration": "calibration data", "judging": "--eval-images"}
_LOW_FIX = {"calibration": "add more images, or lower --calibration-samples",
            "judging": "add images to that folder, or leave --eval-images out: the budget then judges "
                       "on a deterministic split of the calibration source"}


def _checked(cal: SampleSet, held: SampleSet | None, samples: int, batch: int | None,
             role: str = "calibration") -> tuple[SampleSet, SampleSet | None]:
    """Enough samples, and whole batches of a fixed-batch model."""
    need = min(samples, MIN_SAMPLES)
    what = "calibration" if role == "calibration" else "held-out (--eval-images)"
    if len(cal) < need:
        held_out = f" after holding out {len(held)} to judge the INT8 budget" if held is not None else ""
        raise CalibrationError(
            f"only {len(cal)} usable {what} sample(s) in '{cal.source}'{held_out} "
            f"({len(cal.skipped)} file(s) skipped), need at least {need}",
            fix=_LOW_FIX[role] + (", or pass --eval-images DIR so that all of them calibrate"
                                  if held_out else ""))
    if batch:
        if len(cal) < batch:
            raise CalibrationError(
                f"{len(cal)} {what} sample(s) is fewer than the model's fixed batch {batch}",
                fix=f"provide at least {batch} images (or export with a dynamic batch)")
        cal.trim_to_batch(batch)
        if held is not None:
            held.trim_to_batch(batch)
            held = held if len(held) else None
    return cal, held


def load_calibration_data(calibration: str | os.PathLike | None, spec: InputSpec, samples: int = 256,
                          batch: int | None = None, seed: int = 0) -> SampleSet:
    """The calibration set alone (no held-out split)."""
    return load_split(calibration, spec, samples, 0, batch, seed)[0]


def _check_npy(arr: np.ndarray, path: Path, spec: InputSpec) -> None:
    """Shape, dtype and value checks of an ``.npy`` of preprocessed tensors (chunked: a memmap)."""
    want = (spec.channels, *spec.size)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != want:
        hint = " (looks NHWC: transpose to NCHW)" if arr.ndim == 4 and tuple(arr.shape[1:]) == \
            (*spec.size, spec.channels) else ""
        raise CalibrationError(
            f"'{path}' has shape {arr.shape}, expected (N, {', '.join(map(str, want))}){hint}",
            fix="save tensors made by exporter.data.preprocess for this recipe and input size")
    if not np.issubdtype(arr.dtype, np.floating):
        raise CalibrationError(f"'{path}' holds {arr.dtype}, not preprocessed float tensors",
                               fix="preprocess with exporter.data.preprocess (normalized float32)")
    lo, hi = np.inf, -np.inf
    for i in range(0, len(arr), 64):
        chunk = np.asarray(arr[i:i + 64], np.float32)
        if not np.isfinite(chunk).all():
            raise CalibrationError(f"'{path}' contains NaN or inf values",
                                   fix="drop the broken samples and save the array again")
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    if lo >= 0 and hi > 2.0:
        raise CalibrationError(
            f"'{path}' looks like raw pixels (range {lo:.1f}..{hi:.1f}), not normalized",
            fix="preprocess with exporter.data.preprocess, or pass the image folder instead")
    _check_normalized(lo, hi, path, spec)


NPY_RANGE_SLACK = 0.5  # beyond black..white after normalization (resampling of float images overshoots)


def _check_normalized(lo: float, hi: float, path: Path, spec: InputSpec) -> None:
    """The values of an ``.npy`` lie where the recipe's mean/std put black..white pixels."""
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    want_lo, want_hi = float(((0 - mean) / std).min()), float(((1 - mean) / std).max())
    fix = "preprocess with exporter.data.preprocess, or pass the image folder instead"
    expected = f"this recipe's mean {tuple(spec.mean)} and std {tuple(spec.std)} map pixels to " \
               f"{want_lo:.2f}..{want_hi:.2f}"
    if want_lo < -NPY_RANGE_SLACK and lo >= 0 and hi <= 1.0 + 1e-6:
        raise CalibrationError(f"'{path}' holds values in {lo:.2f}..{hi:.2f}, scaled to 0..1 but not "
                               f"normalized: {expected}", fix=fix)
    if lo < want_lo - NPY_RANGE_SLACK or hi > want_hi + NPY_RANGE_SLACK:
        raise CalibrationError(f"'{path}' holds values in {lo:.2f}..{hi:.2f}, outside what "
                               f"preprocessing for this model gives: {expected}", fix=fix)


# ---------------------------------------------------------------- hashing & cache
def preprocessing_sha(spec: InputSpec) -> str:
    import torchvision

    desc = {"spec": spec.to_dict(), "transform": repr(build_transform(spec)),
            "torchvision": torchvision.__version__}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def cache_key(components: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()[:32]


def read_cache(path: Path, components: dict[str, str]) -> tuple[dict | None, str]:
    """(cached ranges or None, why): a hit only when every component hash matches."""
    if not path.is_file():
        return None, "no cache"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "cache unreadable"
    if cached.get("version") != CACHE_VERSION:
        return None, "cache version changed"
    old = cached.get("components", {})
    changed = sorted(k for k in components if old.get(k) != components[k])
    if changed:
        return None, "changed: " + ", ".join(changed)
    return cached, "hit"


def write_cache(path: Path, components: dict[str, str], stats: dict) -> None:
    payload = {"version": CACHE_VERSION, "key": cache_key(components), "components": components, **stats}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


# ---------------------------------------------------------------- statistics
def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float activations either placement can quantize: the inputs of Conv/Gemm, Add, Concat, Mul,
    pooling and shape-only ops, and what those ops (but shape-only ones) write through a ReLU
    (``cpu`` quantizes it where a float op like HardSwish reads it); not a conv output that only
    feeds a ReLU."""
    from .placement import CPU_INT8_OPS, LINEAR_OPS, PASSTHROUGH_OPS, Graph, fused_output

    graph = Graph(model)
    ops = set(LINEAR_OPS) | set(CPU_INT8_OPS) | set(PASSTHROUGH_OPS)
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in ops:
            names += [t for t in node.input if graph.is_activation(t) and t not in names]
    for node in model.graph.node:
        tensor = fused_output(graph, node) if node.op_type in CPU_INT8_OPS else None  # (Conv/Gemm among them)
        if tensor and tensor not in names and tensor not in graph.outputs:
            names.append(tensor)
    return names


def tensor_maxima(model: onnx.ModelProto, tensors: list[str], data: np.ndarray,
                  batch: int = 8) -> dict[str, float]:
    """Largest |value| of each named floating-point tensor over ``data``, streamed by batch (a
    fixed-batch model in its own batch size); integer and empty tensors are left out."""
    from .int8 import fixed_batch, session_with_outputs

    batch = fixed_batch(model) or batch
    sess = session_with_outputs(model, tensors)
    input_name = sess.get_inputs()[0].name
    top: dict[str, float] = {}
    for i in range(0, len(data), batch):
        x = np.ascontiguousarray(data[i:i + batch], dtype=np.float32)
        for name, val in zip(tensors, sess.run(tensors, {input_name: x})):
            if np.issubdtype(val.dtype, np.floating) and val.size:
                top[name] = max(top.get(name, 0.0), float(np.abs(val).max()))
    return top


def collect_statistics(model: onnx.ModelProto, data: np.ndarray, batch: int = 8,
                       log: Callable[[str], None] | None = None) -> dict:
    """Two streaming passes over ``data`` (an array or memmap): min/max, then |x| histograms of
    every activation tensor. Memory holds one batch of activations, whatever ``len(data)``."""
    names = activation_tensors(model)
    from .int8 import fixed_batch, session_with_outputs

    batch = fixed_batch(model) or batch
    sess = session_with_outputs(model, names)
    out_names = [o.name for o in sess.get_outputs()]
    input_name = sess.get_inputs()[0].name
    say = log or (lambda _msg: None)

    def passes(label: str):
        step = max(len(data) // 4, batch)
        for i in range(0, len(data), batch):
            x = np.ascontiguousarray(data[i:i + batch], dtype=np.float32)
            yield from zip(out_names, sess.run(None, {input_name: x}))
            done = min(i + batch, len(data))
            if done == len(data) or done // step != (done - batch) // step:
                say(f"calibration: {label} {done}/{len(data)} samples")

    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for name, val in passes("pass 1/2 (ranges)"):
        if name in lo:
            lo[name] = min(lo[name], float(val.min()))
            hi[name] = max(hi[name], float(val.max()))
    amax = {n: max(abs(lo[n]), abs(hi[n]), 1e-12) for n in names}
    pos = {n: np.zeros(BINS, np.int64) for n in names}
    neg = {n: np.zeros(BINS, np.int64) for n in names}
    for name, val in passes("pass 2/2 (histograms)"):
        if name not in pos:
            continue
        v = val.ravel()
        if v.size > HIST_ELEMENTS:  # an evenly strided subset: the histogram's shape, 40x cheaper
            v = v[::_prime_at_least(v.size // HIST_ELEMENTS)]
        idx = np.minimum((np.abs(v) * (BINS / amax[name])).astype(np.int64), BINS - 1)
        pos[name] += np.bincount(idx[v > 0], minlength=BINS)
        neg[name] += np.bincount(idx[v < 0], minlength=BINS)
    return {
        "tensors": {n: {"min": lo[n], "max": hi[n], "pos": sparse_hist(pos[n]), "neg": sparse_hist(neg[n])}
                    for n in names},
        "samples": int(len(data)),
    }


def _prime_at_least(n: int) -> int:
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n
