"""Record the Python API names of TensorRT releases, for tests/test_tensorrt_api.py.

TensorRT's bindings cannot be imported here (the ``-libs`` wheels that hold ``libnvinfer`` come from
NVIDIA's own index), but the ``tensorrt-cuXX-bindings`` wheels are on PyPI and their pybind11
module carries every registered class, method, property, enum value and keyword-argument name as a
string. This script downloads the wheels, reads those strings and writes, per release, the sorted
trailing identifier of every string (compilers merge a name into a longer string that ends with it,
so the trailing identifier is where a name can hide) to ``tests/data/tensorrt_api/<version>.txt.gz``.

    python scripts/tensorrt_api_names.py                       # the releases below
    python scripts/tensorrt_api_names.py tensorrt-cu13-bindings==11.4.0.106
"""
from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RELEASES = ("tensorrt-cu12-bindings==10.8.0.43", "tensorrt-cu12-bindings==10.16.1.11",
            "tensorrt-cu12-bindings==11.0.0.114", "tensorrt-cu13-bindings==11.4.0.106")
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tensorrt_api"
PRINTABLE = re.compile(rb"[\x20-\x7e]{3,}")
TRAILING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def binding_names(so_bytes: bytes) -> set[str]:
    """Trailing identifiers of every printable string of a compiled module (like ``strings``)."""
    names = set()
    for run in PRINTABLE.findall(so_bytes):
        match = TRAILING_NAME.search(run.decode("ascii"))
        if match:
            names.add(match.group(0))
    return names


def release_names(requirement: str, work: Path) -> tuple[str, set[str]]:
    work = work / requirement.replace("=", "_")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-d", str(work),
                    requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_")
    (wheel,) = sorted(work.glob(f"{name}-*.whl"))
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as archive:
        (so,) = [n for n in archive.namelist() if n.endswith("/tensorrt.so")]
        return version, binding_names(archive.read(so))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("releases", nargs="*", default=list(RELEASES))
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for requirement in args.releases:
            version, names = release_names(requirement, Path(tmp))
            path = OUT / f"{version}.txt.gz"
            with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: reproducible bytes
                f.write(("\n".join(sorted(names)) + "\n").encode())
            print(f"{requirement}: {len(names)} names -> {path.relative_to(OUT.parents[2])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
