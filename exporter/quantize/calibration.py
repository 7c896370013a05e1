"""Calibration: read the data (through ``exporter.data`` only), collect activation ranges, cache them.

Data sources (``calibration=``):
  * a directory of images (class subfolders allowed) -> ``exporter.data.load_image_folder``;
  * an ``.npy`` file of already preprocessed NCHW float32 tensors (checked against the spec);
  * ``packaged`` or ``packaged:SEED`` -> ``exporter.data.packaged_crops`` (the default set).

Ranges come from two passes of the FP32 ONNX on ONNX Runtime CPU: pass 1 records min / max of every
activation tensor, pass 2 builds 2048-bin histograms of its positive and negative magnitudes. The
methods: ``minmax`` (max |x|), ``percentile`` (99.99th percentile of |x|), ``entropy`` (TensorRT's
KL-divergence threshold search on the |x| histogram), and ``mse`` (the amax minimising the expected
squared int8 error, clipping plus rounding).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..data import ImageBatch, build_transform, load_image_folder, packaged_crops
from ..errors import CalibrationError
from ..recipes import InputSpec

METHODS = ("minmax", "entropy", "percentile", "mse")
PERCENTILE = 99.99
BINS = 2048
MIN_SAMPLES = 16  # fewer usable samples than min(requested, MIN_SAMPLES) is an error
CACHE_VERSION = 1


@dataclass
class CalibrationData:
    array: np.ndarray  # NCHW float32, preprocessed exactly like every runner's input
    source: str
    kind: str  # folder | npy | packaged
    requested: int
    labels: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    conversions: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # samples dropped to make the count a multiple of a fixed batch

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def sha256(self) -> str:
        h = hashlib.sha256(str(self.array.shape).encode())
        h.update(np.ascontiguousarray(self.array, dtype=np.float32).tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        return {"source": self.source, "kind": self.kind, "requested": self.requested,
                "used": len(self), "skipped": len(self.skipped),
                "skipped_files": [f"{p}: {r}" for p, r in self.skipped[:20]],
                "conversions": dict(self.conversions), "dropped_for_batch": self.dropped}


# data read once by a driver and handed to worker processes (``exporter matrix``): the key is
# what a read would have been asked for, so the manifest records the user's source unchanged
_PRELOADED: dict[tuple[str, str, int], CalibrationData] = {}


def preload_key(calibration: str | os.PathLike, spec: InputSpec, samples: int) -> tuple[str, str, int]:
    return (str(calibration), preprocessing_sha(spec), int(samples))


def preload(calibration: str | os.PathLike, spec: InputSpec, samples: int,
            data: CalibrationData) -> None:
    """Make later reads of (``calibration``, ``spec``, ``samples``) in this process return ``data``
    (read elsewhere, e.g. from a shared file or Ray's object store) instead of reading again."""
    _PRELOADED[preload_key(calibration, spec, samples)] = data


def load_calibration_data(calibration: str | os.PathLike | None, spec: InputSpec, samples: int = 256,
                          batch: int | None = None) -> CalibrationData:
    """Read ``samples`` calibration inputs; errors are :class:`CalibrationError` with a fix."""
    if calibration is not None and _PRELOADED:
        shared = _PRELOADED.get(preload_key(calibration, spec, samples))
        if shared is not None:
            return _trim_to_batch(replace(shared, array=shared.array.copy()), batch)
    if calibration is None or str(calibration) == "":
        raise CalibrationError(
            "--precision int8 needs calibration data",
            fix="pass --calibration DIR (a folder of images), a preprocessed .npy, or 'packaged' for "
                "the small built-in set; see calibration/README.md")
    if samples < 1:
        raise CalibrationError(f"--calibration-samples must be >= 1 (got {samples})")
    text = str(calibration)
    if text == "packaged" or text.startswith("packaged:"):
        seed = int(text.split(":", 1)[1]) if ":" in text else 0
        batch_ = packaged_crops(spec, samples, seed=seed)
        data = CalibrationData(batch_.array, batch_.source, "packaged", samples)
    else:
        path = Path(calibration)
        if path.is_dir():
            images: ImageBatch = load_image_folder(path, spec, limit=samples)
            data = CalibrationData(images.array, str(path), "folder", samples, images.labels,
                                   images.skipped, images.conversions)
        elif path.suffix.lower() == ".npy" and path.is_file():
            data = CalibrationData(_load_npy(path, spec)[:samples], str(path), "npy", samples)
        elif not path.exists():
            raise CalibrationError(f"calibration data '{path}' does not exist",
                                   fix="pass an existing image folder or .npy file")
        else:
            raise CalibrationError(f"calibration data '{path}' is neither a folder nor an .npy file",
                                   fix="put the images in a folder and pass the folder")
    need = min(samples, MIN_SAMPLES)
    if len(data) < need:
        raise CalibrationError(
            f"only {len(data)} usable calibration sample(s) in '{data.source}' "
            f"({len(data.skipped)} file(s) skipped), need at least {need}",
            fix="add more images, or lower --calibration-samples")
    return _trim_to_batch(data, batch)


def _trim_to_batch(data: CalibrationData, batch: int | None) -> CalibrationData:
    """Drop samples so that their count is a multiple of a fixed ``batch``."""
    if batch:
        if len(data) < batch:
            raise CalibrationError(
                f"{len(data)} calibration sample(s) is fewer than the model's fixed batch {batch}",
                fix=f"provide at least {batch} images (or export with a dynamic batch)")
        keep = len(data) - len(data) % batch
        data.dropped = len(data) - keep
        data.array = data.array[:keep]
        if data.labels is not None:
            data.labels = data.labels[:keep]
    return data


def _load_npy(path: Path, spec: InputSpec) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CalibrationError(f"cannot read '{path}' as a numpy array ({err})") from err
    if arr.ndim == 3:
        arr = arr[None]
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
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CalibrationError(f"'{path}' contains NaN or inf values")
    if arr.min() >= 0 and arr.max() > 2.0:
        raise CalibrationError(
            f"'{path}' looks like raw pixels (range {arr.min():.1f}..{arr.max():.1f}), not normalized",
            fix="preprocess with exporter.data.preprocess, or pass the image folder instead")
    return arr


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
def _session_with_outputs(model: onnx.ModelProto, names: list[str]):
    from .int8 import make_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return make_session(m.SerializeToString(), basic=True)


def activation_tensors(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(every float activation tensor, the outputs of Conv/Gemm nodes)."""
    from .placement import Graph

    graph = Graph(model)
    names, linear_out = [], []
    for name in list(graph.inputs) + [o for n in model.graph.node for o in n.output]:
        if graph.is_activation(name) and name not in names:
            names.append(name)
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            linear_out.append(node.output[0])
    return names, linear_out


def collect_statistics(model: onnx.ModelProto, data: np.ndarray, batch: int = 8) -> dict:
    """Two passes over ``data``: min/max, then |x| histograms, of every activation tensor."""
    names, _ = activation_tensors(model)
    from .int8 import fixed_batch

    batch = fixed_batch(model) or batch
    sess = _session_with_outputs(model, names)
    out_names = [o.name for o in sess.get_outputs()]
    input_name = sess.get_inputs()[0].name
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for i in range(0, len(data), batch):
        for name, val in zip(out_names, sess.run(None, {input_name: data[i:i + batch]})):
            if name not in lo:
                continue
            lo[name] = min(lo[name], float(val.min()))
            hi[name] = max(hi[name], float(val.max()))
    amax = {n: max(abs(lo[n]), abs(hi[n]), 1e-12) for n in names}
    pos = {n: np.zeros(BINS, np.int64) for n in names}
    neg = {n: np.zeros(BINS, np.int64) for n in names}
    for i in range(0, len(data), batch):
        for name, val in zip(out_names, sess.run(None, {input_name: data[i:i + batch]})):
            if name not in pos:
                continue
            v = val.ravel()
            idx = np.minimum((np.abs(v) * (BINS / amax[name])).astype(np.int64), BINS - 1)
            pos[name] += np.bincount(idx[v > 0], minlength=BINS)
            neg[name] += np.bincount(idx[v < 0], minlength=BINS)
    return {
        "tensors": {n: {"min": lo[n], "max": hi[n], "pos": _sparse(pos[n]), "neg": _sparse(neg[n])}
                    for n in names},
        "samples": int(len(data)),
    }


def _sparse(hist: np.ndarray) -> list[list[int]]:
    nz = np.nonzero(hist)[0]
    return [nz.tolist(), hist[nz].tolist()]


def _dense(sparse: list) -> np.ndarray:
    hist = np.zeros(BINS, np.float64)
    hist[np.asarray(sparse[0], dtype=np.int64)] = sparse[1]
    return hist


def compute_ranges(stats: dict, method: str) -> dict[str, tuple[float, float, float]]:
    """tensor -> (low, high, symmetric amax) chosen by ``method``."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method '{method}'", fix=f"use one of {METHODS}")
    ranges = {}
    for name, t in stats["tensors"].items():
        lo, hi = float(t["min"]), float(t["max"])
        top = max(abs(lo), abs(hi), 1e-12)
        if method == "minmax":
            ranges[name] = (lo, hi, top)
            continue
        pos, neg = _dense(t["pos"]), _dense(t["neg"])
        width = top / BINS
        if method == "percentile":
            amax = _percentile(pos + neg, PERCENTILE, width)
            up = _percentile(pos, PERCENTILE, width) if hi > 0 else hi
            down = -_percentile(neg, PERCENTILE, width) if lo < 0 else lo
        elif method == "mse":
            amax = _mse(pos + neg, width)
            up, down = min(hi, amax), max(lo, -amax)
        else:
            amax = _entropy(pos + neg, width)
            up, down = min(hi, amax), max(lo, -amax)
        ranges[name] = (min(down, 0.0) if lo < 0 else lo, up, max(amax, 1e-12))
    return ranges


def _percentile(hist: np.ndarray, pct: float, width: float) -> float:
    total = hist.sum()
    if total == 0:
        return width
    idx = int(np.searchsorted(np.cumsum(hist), total * pct / 100.0))
    return (min(idx, BINS - 1) + 1) * width


def _entropy(hist: np.ndarray, width: float, levels: int = 128, stride: int = 16) -> float:
    """TensorRT-style threshold: minimise KL(P || Q) of the clipped vs 128-level histogram."""
    hist = hist.copy()
    hist[0] = 0  # exact zeros (post-ReLU) carry no information about the scale
    if hist.sum() == 0:
        return BINS * width
    best, best_i = np.inf, BINS
    for i in range(levels, BINS + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        base, extra = divmod(i, levels)
        lengths = np.full(levels, base) + (np.arange(levels) < extra)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        mass = np.add.reduceat(hist[:i], starts)
        used = np.add.reduceat(nz.astype(np.float64), starts)
        per = np.divide(mass, used, out=np.zeros(levels), where=used > 0)
        q = np.repeat(per, lengths) * nz
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-30)
        ok = nz & (qs > 0)
        kl = float(np.sum(ps[ok] * np.log(ps[ok] / qs[ok]))) + (np.inf if (nz & (qs == 0)).any() else 0)
        if kl < best:
            best, best_i = kl, i
    return best_i * width


def _mse(hist: np.ndarray, width: float, levels: int = 127, candidates: int = 256) -> float:
    """amax minimising the expected squared int8 error (clipping + rounding) over the histogram."""
    centers = (np.arange(BINS) + 0.5) * width
    amaxes = np.linspace(BINS * width / candidates, BINS * width, candidates)
    step = amaxes / levels
    clip = np.maximum(centers[None, :] - amaxes[:, None], 0.0) ** 2
    rounding = np.where(centers[None, :] <= amaxes[:, None], (step ** 2 / 12.0)[:, None], 0.0)
    cost = ((clip + rounding) * hist[None, :]).sum(axis=1)
    return float(amaxes[int(np.argmin(cost))])
