"""A plain (non-editable) install works: the wheel carries every package, the recipe TOML files
(as ``exporter/_recipes``) and the lint's operator table, and the installed CLI finds them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "exporter").rglob("__init__.py")}
    assert on_disk | {"exporter._recipes"} == listed, sorted(on_disk ^ listed)
    assert config["package-dir"]["exporter._recipes"] == "recipes"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (without dependencies) into a bare folder."""
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"),
                                  str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (work / "dist").glob("zoo_exporter-*.whl")
    target = work / "site"
    install = subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    return target


def _run(installed: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("EXPORTER_RECIPES", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=installed.parent, env=env)


def test_installed_wheel_finds_its_recipes_and_op_table(installed):
    recipes = sorted(p.stem for p in (ROOT / "recipes").glob("*.toml"))
    assert sorted(p.stem for p in (installed / "exporter" / "_recipes").glob("*.toml")) == recipes
    proc = _run(installed, "-c", "import exporter, exporter.recipes as r, exporter.lint as l; "
                "print(exporter.__file__); print(r.recipes_dir()); print(l.trt_op_table()['opset'])")
    assert proc.returncode == 0, proc.stderr
    module, recipes_dir, opset = proc.stdout.splitlines()
    assert module.startswith(str(installed)) and recipes_dir == str(installed / "exporter" / "_recipes")
    assert "min" in opset and "max" in opset
    listing = _run(installed, "-m", "exporter", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert sorted(r["name"] for r in json.loads(listing.stdout)) == recipes
