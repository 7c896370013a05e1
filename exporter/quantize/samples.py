"""Which images calibrate and which judge: seeded, class-balanced, disjoint, preprocessed once.

Samples go through ``exporter.data``'s one preprocessing path and are written to a float32
memmap in a scratch directory, so every later pass (statistics, bias correction, sensitivity,
judging) reads slices from disk: peak memory does not grow with the sample count.

Selection from a folder (:mod:`exporter.image_folder`): files are grouped by subfolder (one group
when there are none), each group shuffled with the seed, and the groups interleaved round-robin;
the usable images of that order are read once, calibration takes the first of them and the
held-out (judging) set the rest, so both sets are class-balanced and never share a file. An
``.npy`` is split by a seeded permutation; the ``packaged`` photos are split by photo (a seeded
third judges), never by crop.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..data import (build_transform, iter_packaged_crops, packaged_photos, photo_groups, read_image,
                    split_photos)
from ..errors import CalibrationError
from ..scratch import scratch_dir
from ..image_folder import scan_images
from ..recipes import InputSpec

HOLDOUT_SEED_OFFSET = 7919  # packaged:S judges on crops of seed S + this (never S+1: benchmarks use it)


@dataclass
class SampleSet:
    """Preprocessed NCHW float32 samples (a read-only memmap) and where they came from."""

    array: np.ndarray
    source: str
    kind: str  # folder | npy | packaged
    requested: int
    labels: np.ndarray | None = None  # class index per sample (folders with class subfolders)
    class_names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # samples dropped to make the count a multiple of a fixed batch
    unlabelled: str = ""  # why a folder's subfolders gave no labels (image_folder.FolderScan)
    notes: dict[str, str] = field(default_factory=dict)  # path -> its conversion ("RGBA->RGB")
    held_out: bool = False  # the judging part of a split source (the rest calibrates)
    _sha: str | None = None

    @property
    def conversions(self) -> dict[str, int]:
        """{conversion: images} over the samples kept."""
        return count_notes(self.paths, self.notes)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self), size):
            yield np.ascontiguousarray(self.array[i:i + size], dtype=np.float32)

    @property
    def sha256(self) -> str:
        if self._sha is None:
            h = hashlib.sha256(str(tuple(self.array.shape)).encode())
            for chunk in self.batches(64):
                h.update(chunk.tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def trim_to_batch(self, batch: int | None) -> None:
        """Drop the partial last batch of a fixed-batch model (counted in ``dropped``)."""
        if not batch:
            return
        keep = len(self) - len(self) % batch
        self.dropped += len(self) - keep  # trimmed again later: still the first count
        self.array = self.array[:keep]
        self.paths = self.paths[:keep]
        if self.labels is not None:
            self.labels = self.labels[:keep]

    def summary(self) -> dict:
        return {"source": self.source, "kind": self.kind, "requested": self.requested,
                "used": len(self), "skipped": len(self.skipped),
                "skipped_files": [f"{p}: {r}" for p, r in self.skipped[:20]],
                "conversions": dict(self.conversions), "dropped_for_batch": self.dropped,
                "classes": len(self.class_names) or None}


class Scratch:
    """A scratch directory for memmaps; removed on ``close`` (also at interpreter exit)."""

    def __init__(self) -> None:
        self._dir = scratch_dir("samples")
        self.path = Path(self._dir.name)
        self._count = 0

    def memmap(self, count: int, shape: tuple[int, ...]) -> np.memmap:
        self._count += 1
        return np.lib.format.open_memmap(self.path / f"s{self._count}.npy", mode="w+",
                                         dtype=np.float32, shape=(count, *shape))

    def close(self) -> None:
        self._dir.cleanup()


def _fill(scratch: Scratch, spec: InputSpec, count: int,
          items: Iterable[tuple[str, Callable[[], np.ndarray | None]]]) -> tuple[np.ndarray, list[str]]:
    """Write up to ``count`` produced arrays into a memmap; items yielding None are not counted."""
    shape = (spec.channels, *spec.size)
    out = scratch.memmap(max(count, 1), shape)
    paths: list[str] = []
    items = iter(items)
    while len(paths) < count:  # check before taking: the next set reads on from here
        try:
            name, make = next(items)
        except StopIteration:
            break
        arr = make()
        if arr is None:
            continue
        out[len(paths)] = arr
        paths.append(name)
    out.flush()
    return out[:len(paths)], paths


def row_digests(array: np.ndarray, batch: int = 64) -> list[bytes]:
    """A digest of each preprocessed sample (row) of ``array``, read by batch."""
    out: list[bytes] = []
    for i in range(0, len(array), batch):
        chunk = np.ascontiguousarray(array[i:i + batch], dtype=np.float32)
        out += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in chunk]
    return out


def _shared_rows(calibration: np.ndarray, judged: np.ndarray) -> list[tuple[int, int]]:
    """(judged row, calibration row) index pairs identical after preprocessing."""
    seen = {d: i for i, d in enumerate(row_digests(calibration))}
    return [(j, seen[d]) for j, d in enumerate(row_digests(judged)) if d in seen]


def shared_samples(calibration: SampleSet, judged: np.ndarray,
                   judged_paths: list[str] | None = None) -> list[tuple[str, str]]:
    """(judging sample, calibration sample) pairs identical after preprocessing, by name where
    known (the same file twice, a copy, or an overlapping folder)."""
    cal_names = calibration.paths or [f"calibration sample {i}" for i in range(len(calibration))]
    names = judged_paths or [f"judging sample {i}" for i in range(len(judged))]
    return [(names[j], cal_names[c]) for j, c in _shared_rows(calibration.array, judged)]


def require_disjoint(calibration: SampleSet, judged: np.ndarray, judged_paths: list[str] | None) -> None:
    """Raise :class:`CalibrationError` when ``--eval-images`` holds calibration samples (the user
    chose both sets, so the exporter does not pick for them)."""
    shared = shared_samples(calibration, judged, judged_paths)
    if not shared:
        return
    first, match = shared[0]
    same = "" if first == match else f" = '{match}'"
    raise CalibrationError(
        f"{len(shared)} of the {len(judged)} sample(s) the INT8 budget judges on are identical to "
        f"calibration samples (e.g. '{first}'{same}): the budget would judge INT8 on the data its "
        "ranges were fitted to",
        fix="pass --eval-images a folder that holds none of the calibration images, or leave "
            "--eval-images out: the budget then judges on a deterministic split of the calibration "
            "source")


def require_held(held: SampleSet | None, calibration: SampleSet, batch: int | None = None) -> None:
    """:class:`CalibrationError` when a split left nothing (no whole batch) to judge on."""
    if held is not None and len(held):
        return
    whole = f"whole batch of {batch} samples" if batch else "sample"
    raise CalibrationError(
        f"no {whole} is left to judge the INT8 budget on, held out from '{calibration.source}': "
        f"its {len(calibration)} usable sample(s) all calibrate",
        fix="add images to the calibration source, lower --calibration-samples, or pass "
            "--eval-images DIR")


def count_notes(paths: list[str], notes: dict[str, str]) -> dict[str, int]:
    """{conversion: images} over ``paths``."""
    counts: dict[str, int] = {}
    for path in paths:
        if path in notes:
            counts[notes[path]] = counts.get(notes[path], 0) + 1
    return counts


def judging_notes(samples: SampleSet) -> str:
    """What a judging set's summary adds: files of its folder skipped, images converted, subfolders
    not used as labels."""
    skipped = len(samples.skipped)
    return (_shortfall(samples)
            + (f"; {skipped} file(s) of the folder skipped" if skipped else "")
            + "".join(f"; {count} image(s) converted {note}" for note, count in samples.conversions.items())
            + (f"; {samples.dropped} left out to fill whole batches of the fixed batch size"
               if samples.dropped else "")
            + (f"; no labels, so judged by agreement: {samples.unlabelled}" if samples.unlabelled else ""))


def exhausted(samples: SampleSet) -> bool:
    """The source gave fewer samples than were requested: it holds no more."""
    return samples.requested - len(samples) - samples.dropped > 0


def _shortfall(samples: SampleSet) -> str:
    """'; of N requested: ...' when the source gave fewer samples than --eval-samples asked for."""
    if not exhausted(samples):
        return ""
    return (f"; of {samples.requested} requested (--eval-samples): the source holds no more"
            + (" once the calibration samples are taken" if samples.held_out else ""))


def copies_note(copies: int) -> str:
    """How many held-out samples were left out as copies of calibration images ("" for none)."""
    return f"{copies} {'copy' if copies == 1 else 'copies'} of calibration images left out" if copies else ""


def drop_calibration_copies(calibration: SampleSet, held: SampleSet) -> int:
    """Leave out of the split's held-out set the samples identical to a calibration sample (a
    file the source holds twice); how many. An error when none would be left."""
    shared = {j for j, _ in _shared_rows(calibration.array, held.array)}
    if not shared:
        return 0
    keep = [i for i in range(len(held)) if i not in shared]
    if not keep:
        raise CalibrationError(
            f"every one of the {len(held)} held-out sample(s) of '{held.source}' is identical to a "
            "calibration sample", fix=f"remove the duplicate files from '{held.source}'")
    held.array = np.asarray(held.array[keep])
    held.paths = [held.paths[i] for i in keep] if held.paths else []
    if held.labels is not None:
        held.labels = held.labels[keep]
    return len(shared)


def evenly_spaced(data: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` rows of ``data``, evenly spaced over it (a memory bound that keeps the
    class balance of a balanced order); ``data`` itself when it has no more."""
    if len(data) <= count:
        return data
    return data[np.linspace(0, len(data) - 1, count).round().astype(int)]


def split_sizes(available: int, samples: int, holdout: int) -> tuple[int, int]:
    """(calibration, held-out) counts from one pool: the held-out set keeps at least a quarter."""
    if holdout <= 0:
        return min(samples, available), 0
    n_eval = min(holdout, max(available - samples, available // 4))
    return min(samples, available - n_eval), n_eval


def from_folder(root: Path, spec: InputSpec, samples: int, holdout: int, seed: int,
                scratch: Scratch, role: str = "--calibration folder") -> tuple[SampleSet, SampleSet | None]:
    """The first ``samples`` usable images of the folder's balanced order calibrate, up to
    ``holdout`` more are held out; split on the usable images (``split_sizes``), so files that
    are skipped never shrink the held-out share."""
    scan = scan_images(root, role)
    transform = build_transform(spec)
    skipped = list(scan.skipped)
    notes: dict[str, str] = {}

    def reader(path: Path) -> Callable[[], np.ndarray | None]:
        def read() -> np.ndarray | None:
            arr, note, why = read_image(path, spec, transform)
            if arr is None:
                skipped.append((str(path), why))
            elif note:
                notes[str(path)] = note
            return arr
        return read

    arr, paths = _fill(scratch, spec, samples + holdout,
                       ((str(p), reader(p)) for p in scan.balanced(seed)))
    if not paths:
        raise CalibrationError(f"no usable images in '{root}' ({len(scan.files)} image file(s), "
                               f"{len(skipped)} file(s) skipped)",
                               fix="point at a folder of .jpg/.png images; see calibration/README.md")
    n_cal, n_eval = split_sizes(len(paths), samples, holdout)
    labels = np.array([scan.label(Path(p)) for p in paths]) if scan.labelled else None

    def part(start: int, stop: int, source: str, requested: int, held_out: bool) -> SampleSet:
        return SampleSet(arr[start:stop], source, "folder", requested,
                         labels[start:stop] if labels is not None else None, scan.class_names,
                         paths[start:stop], skipped, unlabelled=scan.unlabelled,
                         notes={p: notes[p] for p in paths[start:stop] if p in notes}, held_out=held_out)

    cal = part(0, n_cal, str(root), samples, False)
    if not n_eval:
        return cal, None
    return cal, part(n_cal, n_cal + n_eval, f"{root} (held out from calibration)", holdout, True)


def from_npy(path: Path, spec: InputSpec, samples: int, holdout: int, seed: int,
             scratch: Scratch, check: Callable[[np.ndarray], None]) -> tuple[SampleSet, SampleSet | None]:
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":  # else numpy reads it as a pickle and blames that
                raise CalibrationError(f"'{path}' is not a .npy file (no numpy header)",
                                       fix="save preprocessed NCHW float32 tensors with numpy.save")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CalibrationError(f"cannot read '{path}' as a numpy array ({err})",
                               fix="save preprocessed NCHW float32 tensors with numpy.save") from err
    if arr.ndim == 3:
        arr = arr[None]
    check(arr)
    perm = np.random.default_rng(seed).permutation(len(arr))
    n_cal, n_eval = split_sizes(len(arr), samples, holdout)

    def take(idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return _fill(scratch, spec, len(idx), ((f"{path.name}[{i}]", lambda i=i: np.asarray(
            arr[i], np.float32)) for i in idx))

    cal_arr, cal_paths = take(perm[:n_cal])
    cal = SampleSet(cal_arr, str(path), "npy", samples, paths=cal_paths)
    if not n_eval:
        return cal, None
    held_arr, held_paths = take(perm[n_cal:n_cal + n_eval])
    return cal, SampleSet(held_arr, f"{path} (held out from calibration)", "npy", holdout,
                          paths=held_paths, held_out=True)


def from_packaged(seed: int, spec: InputSpec, samples: int, holdout: int,
                  scratch: Scratch) -> tuple[SampleSet, SampleSet | None]:
    """Crops of the packaged photos; with a held-out set the photos are split (``split_photos``):
    calibration crops come from two thirds of them, judging crops (another crop seed) from the
    rest (identical photos count as one), so the budget is judged on photos the calibration
    never saw (INT8_PHOTO_SPLIT.md)."""
    photos = packaged_photos()

    def items(s: int, count: int, names: list[str] | None):
        chosen = photos if names is None else [(n, p) for n, p in photos if n in names]
        for name, arr in iter_packaged_crops(spec, count, seed=s, photos=chosen):
            yield name, (lambda a=arr: a)

    if not holdout:
        arr, paths = _fill(scratch, spec, samples, items(seed, samples, None))
        return SampleSet(arr, f"packaged photos (seed {seed})", "packaged", samples, paths=paths), None
    cal_photos, judge_photos = split_photos(photo_groups(photos), seed)
    arr, paths = _fill(scratch, spec, samples, items(seed, samples, cal_photos))
    cal = SampleSet(arr, f"packaged photos (seed {seed}; crops of {_drawn(cal_photos, paths)})",
                    "packaged", samples, paths=paths)
    held_seed = seed + HOLDOUT_SEED_OFFSET
    arr, paths = _fill(scratch, spec, holdout, items(held_seed, holdout, judge_photos))
    return cal, SampleSet(arr, f"packaged photos (seed {held_seed}; crops of "
                          f"{_drawn(judge_photos, paths)}: photos the calibration never saw)",
                          "packaged", holdout, paths=paths, held_out=True)


def _drawn(photos: list[str], crops: list[str]) -> str:
    """The photos that ``crops`` (``name[x,y,side]``) were cut from, in ``photos``' order."""
    used = {crop.split("[", 1)[0] for crop in crops}
    return ", ".join(name for name in photos if name in used)
