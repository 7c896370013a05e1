"""Image folders: which files are images, which class each belongs to, and the order they are read
in. One scan shared by INT8 calibration, the budget's judging set and parity, so a folder means the
same thing to all three.

* Hidden entries (``.name``) and macOS ``__MACOSX`` folders are left out; symlinked folders are
  followed (each real folder once, so a link loop ends); files without an image extension, broken
  links and unreadable subfolders are listed in ``skipped``.
* Class subfolders give labels when every image lies in one and every such folder is named by its
  class index (``0``, ``207``, ``0010``): the label is that index, never the folder's position.
  Otherwise ``unlabelled`` says why (folders named ``cat``; images beside the class folders).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CalibrationError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def is_class_index(name: str) -> bool:
    """A folder name that is a class index: ASCII digits only (``int`` reads it)."""
    return name.isascii() and name.isdecimal()


@dataclass
class FolderScan:
    root: Path
    files: list[Path]  # image files, sorted by path
    groups: list[str]  # per file: its top-level subfolder ("" for a file directly in root)
    labelled: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unlabelled: str = ""  # why subfolders give no labels ("" when they do, or when there are none)

    @property
    def class_names(self) -> list[str]:
        """The class folders, by class index (empty when unlabelled)."""
        return sorted(set(self.groups), key=int) if self.labelled else []

    def label(self, path: Path) -> int | None:
        return int(path.relative_to(self.root).parts[0]) if self.labelled else None

    def balanced(self, seed: int) -> list[Path]:
        """Every file, seeded and balanced over the top-level subfolders: one of each in turn."""
        by_group: dict[str, list[Path]] = {}
        for path, group in zip(self.files, self.groups):
            by_group.setdefault(group, []).append(path)
        rng = np.random.default_rng(seed)
        shuffled = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(by_group.items())]
        order: list[Path] = []
        for i in range(max((len(g) for g in shuffled), default=0)):
            order += [g[i] for g in shuffled if i < len(g)]
        return order


def scan_images(root: str | Path, role: str = "image folder") -> FolderScan:
    """Scan ``root`` (see the module docstring). :class:`CalibrationError` when ``root`` is not a
    readable folder; ``role`` names it in that error ("--calibration folder", ...)."""
    root = Path(root)
    if not root.is_dir():
        raise CalibrationError(f"{role} '{root}' does not exist or is not a folder",
                               fix="pass a directory of images (optionally one subfolder per class)")
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(folder: Path) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as err:
            if folder == root:
                raise CalibrationError(
                    f"cannot read the {role} '{root}': {err.strerror or err}",
                    fix="make the folder readable by this user (chmod), or pass another folder") from None
            skipped.append((str(folder), f"unreadable folder: {err.strerror or err}"))
            return
        for entry in entries:
            if _hidden(entry.name):
                continue
            path = Path(entry.path)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symlinks
            except OSError:
                is_dir = is_file = False
            if is_dir:
                visit(path)
            elif not is_file:
                skipped.append((str(path), "not a readable file (a broken link?)"))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((str(path), "not an image file extension"))
            else:
                files.append(path)

    visit(root)
    files.sort()
    parts = [p.relative_to(root).parts for p in files]
    groups = [ps[0] if len(ps) > 1 else "" for ps in parts]
    folders = sorted({g for g in groups if g})
    loose = groups.count("")
    unlabelled = ""
    if folders and loose:
        unlabelled = (f"{loose} image(s) lie directly in '{root}', beside its subfolders, so no "
                      "subfolder is a class")
    elif folders and not all(is_class_index(g) for g in folders):
        bad = [g for g in folders if not is_class_index(g)]
        unlabelled = (f"subfolder(s) {', '.join(repr(b) for b in bad[:3])}{', ...' if len(bad) > 3 else ''} "
                      "of '" + str(root) + "' are not class indices (0, 1, ...)")
    return FolderScan(root, files, groups, bool(folders) and not unlabelled, skipped, unlabelled)
