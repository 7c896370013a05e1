"""Materialize the default calibration set: crops of photos shipped by installed packages.

    python calibration/make_default_set.py OUT_DIR [--count 64] [--seed 0] [--size 256]

Writes OUT_DIR/crop_XXXX.png plus OUT_DIR/.provenance.txt (hidden, so the exporter does not count it as a skipped file; which photo each crop came from and the
licence notes in calibration/PROVENANCE.md). The crops are the same ones
``exporter.data.packaged_crops(spec, count, seed)`` feeds the tests, before preprocessing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.data import packaged_photos  # noqa: E402


def make_default_set(out: Path, count: int = 64, seed: int = 0, size: int = 256) -> list[Path]:
    """Write ``count`` square crops (``size`` px) chosen exactly like ``packaged_crops``."""
    photos = packaged_photos()
    if not photos:
        raise SystemExit("no packaged photos: pip install scikit-image matplotlib")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written, lines = [], []
    for i in range(count):
        name, photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        side = int(rng.uniform(0.35, 1.0) * min(w, h))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        flip = bool(rng.integers(2))
        crop = photo.crop((x0, y0, x0 + side, y0 + side))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = out / f"crop_{i:04d}.png"
        crop.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(path)
        written.append(path)
        lines.append(f"{path.name}\t{name}\tbox=({x0},{y0},{side})\tflip={flip}")
    (out / ".provenance.txt").write_text(
        "crops of photos shipped by installed packages; licences: see calibration/PROVENANCE.md\n"
        + "\n".join(lines) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="side of the saved crops in pixels")
    args = parser.parse_args(argv)
    files = make_default_set(args.out, args.count, args.seed, args.size)
    print(f"wrote {len(files)} crops to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
