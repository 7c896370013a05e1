"""Parity inputs: named batches every runner sees identically, and chunked runs over them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import ImageBatch, load_image_folder, packaged_crops, random_inputs
from ..recipes import InputSpec

from ..defaults import DEFAULT_RANDOM, DEFAULT_SAMPLES  # noqa: F401
MAX_CHUNK = 16  # images per forward when computing outputs (bounds memory at native sizes)

@dataclass
class InputSet:
    """One named batch of preprocessed inputs every runner sees identically."""

    name: str  # "images", "photos", "random"
    array: np.ndarray  # NCHW float32, already through data.py's preprocessing
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    real: bool = True  # natural images (agreement is judged on these) vs random tensors
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "samples": len(self), "source": self.source, "real": self.real,
                "labelled": self.labels is not None, "classes": len(self.class_names),
                "shape": list(self.array.shape[1:]), "notes": list(self.notes)}

    @classmethod
    def from_batch(cls, name: str, batch: ImageBatch) -> "InputSet":
        notes = [f"{len(batch.skipped)} file(s) skipped"] if batch.skipped else []
        notes += [f"{count} converted {what}" for what, count in batch.conversions.items()]
        notes += [f"no labels: {batch.unlabelled}"] if batch.unlabelled else []
        return cls(name, batch.array, batch.labels, list(batch.class_names), batch.source, True, notes)


def build_inputs(spec: InputSpec, *, images: str | Path | None = None,
                 samples: int = DEFAULT_SAMPLES, random: int = DEFAULT_RANDOM,
                 seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> list[InputSet]:
    """The parity inputs: an image folder (class subfolders give labels), else crops of the
    photos shipped by installed packages, plus ``random`` standard-normal tensors.

    Everything goes through :mod:`exporter.data`, the preprocessing every runner and the INT8
    calibration share. ``sizes``: the (height, width) sizes to build (default: the recipe's); sets
    at a size other than the first are named ``photos@HxW`` / ``random@HxW`` (a dynamic-size
    artifact is checked at each).
    """
    sizes = list(sizes or [tuple(spec.size)])
    sets = _sets_at(spec.with_size(sizes[0]), images, samples, random, seed, "")
    for size in sizes[1:]:
        sets += _sets_at(spec.with_size(size), images, samples, random, seed, f"@{size[0]}x{size[1]}")
    return sets


def _sets_at(spec: InputSpec, images, samples: int, random: int, seed: int,
             suffix: str) -> list[InputSet]:
    sets: list[InputSet] = []
    if images is not None:
        sets.append(InputSet.from_batch("images" + suffix,
                                        load_image_folder(images, spec, limit=samples or None,
                                                          seed=seed)))
    elif samples:
        sets.append(InputSet.from_batch("photos" + suffix, packaged_crops(spec, samples, seed=seed + 1000)))
    if random:
        sets.append(InputSet("random" + suffix, random_inputs(spec, random, seed=seed), source=f"N(0,1) seed {seed}",
                             real=False))
    return sets


@dataclass
class EagerOutputs:
    """The eager reference's outputs on a list of :class:`InputSet` (by set name), and what ran
    them: what parity compares every artifact against. Plain data, so it can be computed once and
    shared between processes (``exporter matrix``)."""

    outputs: dict[str, np.ndarray]
    runtime: str = ""
    provider: str = ""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, eager: Any, sets: list[InputSet], batch: int | None = None) -> "EagerOutputs":
        """Run ``eager`` (an ``EagerRunner``) over every set, in chunks of ``batch`` if fixed."""
        return cls({s.name: run_chunked(eager, s.array, batch) for s in sets},
                   getattr(eager, "runtime", ""), getattr(eager, "provider", ""),
                   list(getattr(eager, "notes", [])))

    def check(self, sets: list[InputSet]) -> None:
        """Refuse outputs computed on other inputs (a set missing or of another size)."""
        have = {k: len(v) for k, v in self.outputs.items()}
        want = {s.name: len(s) for s in sets}
        if any(have.get(name) != n for name, n in want.items()):
            raise ValueError(f"the eager outputs were computed on {have}, not on these inputs {want}")


def as_input_sets(inputs: Any) -> list[InputSet]:
    if isinstance(inputs, InputSet):
        return [inputs]
    if isinstance(inputs, ImageBatch):
        return [InputSet.from_batch("images", inputs)]
    if isinstance(inputs, np.ndarray):
        return [InputSet("inputs", inputs.astype(np.float32), source="array", real=True)]
    sets = [s if isinstance(s, InputSet) else as_input_sets(s)[0] for s in inputs]
    if not sets:
        raise ValueError("run_parity needs at least one input set")
    return sets


def run_chunked(runner: Callable[[np.ndarray], np.ndarray], array: np.ndarray,
                batch: int | None = None, max_batch: int | None = None) -> np.ndarray:
    """Run ``array`` through ``runner`` in chunks; a fixed ``batch`` pads the last chunk, a
    ``max_batch`` (an engine profile's largest batch) caps the chunk size."""
    if batch:
        outs = []
        for i in range(0, len(array), batch):
            chunk = array[i:i + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            outs.append(np.asarray(runner(chunk))[:n])
        return np.concatenate(outs)
    step = min(MAX_CHUNK, max_batch or MAX_CHUNK)
    return np.concatenate([np.asarray(runner(array[i:i + step])) for i in range(0, len(array), step)])


def per_sample_rel_error(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """max |ref - cand| of each sample divided by max |ref| of the set (rel_max_abs per sample)."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    scale = float(np.max(np.abs(ref))) or 1.0
    return np.max(np.abs(ref - cand), axis=1) / scale


def check_labels(sets: list[InputSet], outs: dict[str, np.ndarray]) -> None:
    """Class subfolders name classes the model has (index < its output width): one it lacks
    would count every image there as wrong."""
    from ..errors import InputError
    from ..quantize.judging import classes_beyond

    for s in sets:
        classes = int(outs[s.name].shape[-1]) if outs[s.name].ndim == 2 else 0
        bad = classes_beyond(s.labels, classes, s.class_names)
        if not bad:
            continue
        raise InputError(
            f"--images {s.source}: class subfolder(s) {', '.join(map(str, bad[:5]))}"
            f"{', ...' if len(bad) > 5 else ''} name classes the model does not have (its output has "
            f"{classes}: 0..{classes - 1}); accuracy on them would count every image as wrong",
            fix=f"name each class subfolder by the model's class index (0..{classes - 1}), or compare "
                "without labels: a folder of images without class subfolders")
