"""Input data: one preprocessing path shared by eager, every artifact, and calibration.

``preprocess`` turns a PIL image into the recipe's normalized CHW float32 array using
torchvision transforms (resize shorter side -> center crop -> to tensor -> normalize).
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CalibrationError
from .image_folder import scan_images
from .recipes import InputSpec


def build_transform(spec: InputSpec):
    """The torchvision transform that maps a PIL image to the model's input tensor."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode(spec.interpolation), antialias=True),
        T.CenterCrop(spec.size),
        T.ToTensor(),
        T.Normalize(mean=spec.mean, std=spec.std),
    ])


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def convert_mode(image: Image.Image, spec: InputSpec) -> tuple[Image.Image, str | None]:
    """Convert an image to the recipe's colour mode; return the note describing any conversion."""
    if image.mode == spec.color_mode:
        return image, None
    note = f"{image.mode}->{spec.color_mode}"
    if image.mode in HIGH_DEPTH_MODES:  # convert() would clip 16-bit values: scale them instead
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and pixels.max(initial=0) > 255 else 255.0
        if image.mode == "F":  # float pixels: white is 1.0, 255 or 65535, whichever range they fit
            peak = float(pixels.max(initial=0))
            top = next((t for t in (1.0, 255.0, 65535.0) if peak <= t), peak)
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        note += f" (high bit depth scaled to 8 bits, /{top:g})"
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha and spec.color_mode in ("RGB", "L"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)  # alpha composited onto white
        note += " (alpha on white)"
    return image.convert(spec.color_mode), note


def preprocess(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """One PIL image -> CHW float32 array, exactly as every runner and calibration sees it."""
    image, _ = convert_mode(image, spec)
    return build_transform(spec)(image).numpy().astype(np.float32)


@dataclass
class ImageBatch:
    """Preprocessed images plus what happened while reading them."""

    array: np.ndarray  # NCHW float32
    labels: np.ndarray | None = None  # class indices when the folder had class subfolders
    class_names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    conversions: dict[str, int] = field(default_factory=dict)  # "RGBA->RGB" -> count
    source: str = ""
    unlabelled: str = ""  # why the folder's subfolders gave no labels (image_folder.FolderScan)

    def __len__(self) -> int:
        return int(self.array.shape[0])


def upright(img: Image.Image) -> tuple[Image.Image, str | None]:
    """The image as a viewer shows it: a phone photo's EXIF orientation (tag 274) applied."""
    orientation = img.getexif().get(0x0112)
    if orientation not in range(2, 9):  # absent, 1 (upright) or not a valid value
        return img, None
    return ImageOps.exif_transpose(img), f"EXIF orientation {orientation} applied"


def read_image(path: Path, spec: InputSpec, transform) -> tuple[np.ndarray | None, str | None, str]:
    """(CHW float32 array, conversion note, "") of one image file, or (None, None, why not)."""
    try:
        with warnings.catch_warnings():  # a large photo is read; one past the bomb limit is skipped
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img, turned = upright(img)
                img, note = convert_mode(img, spec)
                note = ", ".join(n for n in (turned, note) if n) or None
                return transform(img).numpy().astype(np.float32), note, ""
    except Image.DecompressionBombError as err:
        return None, None, f"over Pillow's decompression-bomb limit: {err}"
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return None, None, f"unreadable: {err}"


def load_image_folder(root: str | Path, spec: InputSpec, limit: int | None = None,
                      seed: int = 0) -> ImageBatch:
    """Read an image folder (:mod:`exporter.image_folder`: class subfolders named by class index
    give labels), up to ``limit`` images in seeded class-balanced order.

    Unreadable or non-image files are skipped and listed in ``skipped``; mode conversions are
    counted in ``conversions``. Raises :class:`CalibrationError` when nothing usable is found.
    """
    scan = scan_images(root)
    arrays, labels, paths, skipped, conversions = [], [], [], list(scan.skipped), {}
    transform = build_transform(spec)
    for path in scan.balanced(seed):
        if limit is not None and len(arrays) >= limit:
            break
        arr, note, why = read_image(path, spec, transform)
        if arr is None:
            skipped.append((str(path), why))
            continue
        arrays.append(arr)
        if note:
            conversions[note] = conversions.get(note, 0) + 1
        paths.append(str(path))
        labels.append(scan.label(path))
    if not arrays:
        raise CalibrationError(
            f"no usable images in '{scan.root}' ({len(scan.files)} image file(s), "
            f"{len(skipped)} file(s) skipped)",
            fix="point at a folder of .jpg/.png images; see calibration/README.md",
        )
    return ImageBatch(
        array=np.stack(arrays), labels=np.array(labels) if scan.labelled else None,
        class_names=scan.class_names, paths=paths, skipped=skipped,
        conversions=conversions, source=str(scan.root), unlabelled=scan.unlabelled,
    )


def packaged_photos() -> list[tuple[str, Image.Image]]:
    """Natural photos shipped by installed packages (scikit-image, matplotlib, scikit-learn)."""
    photos: list[tuple[str, Image.Image]] = []
    try:
        from skimage import data as skdata

        for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                     "cat"):
            fn = getattr(skdata, name, None)
            if fn is None:
                continue
            try:
                arr = fn()
            except Exception:  # some datasets need pooch downloads; skip those offline
                continue
            if arr.ndim == 3 and arr.shape[2] in (3, 4):
                photos.append((f"skimage:{name}", Image.fromarray(arr[..., :3])))
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            photos.append(("matplotlib:grace_hopper", Image.open(fh).convert("RGB")))
    except Exception:
        pass
    try:
        from sklearn.datasets import load_sample_images

        for i, arr in enumerate(load_sample_images().images):
            photos.append((f"sklearn:sample_{i}", Image.fromarray(arr)))
    except Exception:
        pass
    return photos


def photo_groups(photos: list[tuple[str, Image.Image]]) -> list[list[str]]:
    """The photos' names grouped by identical pixels (scikit-image's ``cat`` is ``chelsea``)."""
    groups: dict[str, list[str]] = {}
    for name, photo in photos:
        groups.setdefault(hashlib.sha1(np.asarray(photo).tobytes()).hexdigest(), []).append(name)
    return list(groups.values())


def split_photos(groups: list[list[str]], seed: int) -> tuple[list[str], list[str]]:
    """(calibration names, judging names): a seeded third of the photo groups (at least one)
    judges, the rest calibrate, so the two sets never share a photo. Needs two or more groups."""
    if len(groups) < 2:
        raise CalibrationError(f"cannot split {len(groups)} distinct packaged photo(s) into "
                               "calibration and judging photos", fix="pip install scikit-image "
                               "matplotlib scikit-learn (they ship the photos), or pass --eval-images DIR")
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    judge = {n for g in order[:max(1, round(len(groups) / 3))] for n in g}
    names = [n for g in groups for n in g]
    return [n for n in names if n not in judge], [n for n in names if n in judge]


def iter_packaged_crops(spec: InputSpec, count: int, seed: int = 0, offset: int = 0,
                        photos: list[tuple[str, Image.Image]] | None = None):
    """Yield ``(description, CHW array)`` for ``count`` deterministic random crops of ``photos``
    (default: all :func:`packaged_photos`), one at a time (nothing accumulates)."""
    photos = packaged_photos() if photos is None else photos
    if not photos:
        raise CalibrationError("no packaged sample photos found",
                               fix="pip install scikit-image matplotlib (they ship natural photos)")
    rng = np.random.default_rng(seed)
    transform = build_transform(spec)
    for i in range(offset + count):
        name, photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        side = int(rng.uniform(0.35, 1.0) * min(w, h))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        flip = bool(rng.integers(2))
        if i < offset:
            continue
        crop = photo.crop((x0, y0, x0 + side, y0 + side))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop, _ = convert_mode(crop, spec)
        yield (f"{name}[{x0},{y0},{side}{',flip' if flip else ''}]",
               transform(crop).numpy().astype(np.float32))


def packaged_crops(spec: InputSpec, count: int, seed: int = 0, offset: int = 0,
                   only: list[str] | None = None) -> ImageBatch:
    """``count`` deterministic random crops of the packaged photos (those named in ``only`` when
    given), preprocessed for ``spec``. Different ``seed`` (or ``offset``) values give other crops;
    to judge on photos the calibration never saw, split the photos (:func:`split_photos`).
    """
    photos = None if only is None else [(n, p) for n, p in packaged_photos() if n in only]
    crops = list(iter_packaged_crops(spec, count, seed, offset, photos))
    return ImageBatch(array=np.stack([a for _, a in crops]), paths=[n for n, _ in crops],
                      source=f"packaged photos (seed {seed})")


def random_inputs(spec: InputSpec, count: int, seed: int = 0) -> np.ndarray:
    """Standard-normal NCHW inputs (already 'normalized'), deterministic per seed."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, spec.channels, *spec.size)).astype(np.float32)
