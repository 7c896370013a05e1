"""Labelled ImageNet photos for the INT8 benchmarks: the 20 that foolbox's wheel ships.

foolbox (MIT, on PyPI) ships ``foolbox/data/imagenet_<k>_<class>.jpg``: 20 ImageNet photos, 512x512,
named by their class index. They are the only labelled ImageNet photos reachable on a machine that
has PyPI but no dataset download. The benchmarks read the files; foolbox itself is never imported:

    pip install --no-deps foolbox==3.3.4
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

PIP_HINT = "pip install --no-deps foolbox==3.3.4 (its wheel ships 20 labelled ImageNet photos)"


def imagenet_sample_images() -> list[tuple[str, Image.Image, int]]:
    """[(name, RGB photo, ImageNet class index)] of foolbox's 20 ImageNet photos, in file order."""
    spec = importlib.util.find_spec("foolbox")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"foolbox's ImageNet photos are missing: {PIP_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("imagenet_*_*.jpg"))
    if len(files) != 20:
        raise SystemExit(f"expected 20 ImageNet photos in {folder}, found {len(files)}: {PIP_HINT}")
    return [(f"foolbox:{f.stem}", Image.open(f).convert("RGB"), int(f.stem.rsplit("_", 1)[1]))
            for f in files]


def labelled_crops(spec, images: list[tuple[str, Image.Image, int]], count: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` seeded random crops of ``images`` (the exporter's packaged-photo crops: 35-100 % of
    the short side, random flip), preprocessed for ``spec``, and each crop's class index."""
    from exporter.data import iter_packaged_crops

    label = {name: cls for name, _, cls in images}
    crops = list(iter_packaged_crops(spec, count, seed, photos=[(n, im) for n, im, _ in images]))
    return (np.stack([a for _, a in crops]),
            np.array([label[d.split("[", 1)[0]] for d, _ in crops], dtype=np.int64))
