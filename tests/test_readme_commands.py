"""Every ``exporter ...`` command shown in README.md runs (a subprocess, as a user types it), so a
documented command cannot break while the suite stays green.

Commands are run as written, made small where the README's model is big: a recipe's reduced test
size is added (``--input-size``), parity gets ``--no-latency --samples 2 --random 1``, and example
paths (``~/val``, ``path/to/images``) point at a tiny image folder. Synopsis lines (with
placeholders such as ``MODEL``) are checked with ``--help``. A command that needs what this
machine lacks (TensorRT, a GPU provider, an optional extra, internet for ``--weights``) is skipped
with the reason; an optional extra is recognised by the CLI's own exit code 5 and its error line.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_faults import error_lines, run_cli

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = re.compile(r"\b(MODEL|PATH|DIR|N)\b|\[|\||\.\.\.")
EXAMPLE_PATHS = ("~/val", "path/to/images", "images/")


EXPECTED_EXIT: dict[str, int] = {}  # commands whose README comment says "exit N"


def readme_commands() -> list[str]:
    """``exporter`` lines of the README's code blocks, comments and continuations joined."""
    commands, block, pending = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block, pending = not block, ""
            continue
        if not block:
            continue
        text = pending + line.split(" # ")[0].split("  #")[0].strip()
        expected = re.search(r"#\s*exit (\d+)", line)
        if expected:
            EXPECTED_EXIT[text.removeprefix(".venv/bin/")] = int(expected.group(1))
        pending = ""
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        text = text.split("&&")[-1].strip().removeprefix(".venv/bin/")
        if text.startswith("exporter "):
            commands.append(text)
    return list(dict.fromkeys(commands))


def _skip_reason(argv: list[str]) -> str | None:
    import importlib.util

    import torch

    if argv[0] == "build" or "tensorrt" in argv:
        if not (torch.cuda.is_available() and importlib.util.find_spec("tensorrt")):
            return "needs TensorRT and a CUDA GPU (pip install 'zoo-exporter[tensorrt]')"
    if "--ort-provider" in argv and argv[argv.index("--ort-provider") + 1] != "cpu":
        if not torch.cuda.is_available():
            return "needs onnxruntime-gpu and a CUDA GPU (pip install 'zoo-exporter[gpu]')"
    if "--zoo" in argv and "--models" not in argv:
        return "runs the whole zoo (tests/test_parity.py covers --zoo on small sizes)"
    if "--weights" in argv and not _weights_cached(argv[1], argv[argv.index("--weights") + 1]):
        return "needs internet (torchvision weights not in the torch hub cache)"
    return None


def _weights_cached(model: str, name: str) -> bool:
    import torch
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(model.removeprefix("torchvision:"))
        weights = enum.DEFAULT if name == "DEFAULT" else enum[name]
    except (ValueError, KeyError):
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).is_file()


def _small(argv: list[str], images: Path) -> list[str]:
    from exporter.recipes import all_recipes

    argv = [str(images) if a in EXAMPLE_PATHS else a for a in argv]
    recipes = all_recipes()
    model = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
    if argv[0] in ("export", "parity") and model in recipes and "--input-size" not in argv:
        spec = recipes[model].input
        if spec.test_size and not spec.fixed_size:
            argv += ["--input-size", str(spec.test_size)]
    if argv[0] == "parity":
        argv += [a for a in ("--no-latency",) if a not in argv]
        if "--samples" not in argv:
            argv += ["--samples", "2", "--random", "1"]
    return argv


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    ws = tmp_path_factory.mktemp("readme")
    import shutil  # README commands run from the project root, where examples/ is

    shutil.copytree(README.parent / "examples", ws / "examples")
    images = ws / "images"
    for label in ("0", "1"):
        (images / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / label / f"{i}.png")
    return ws, images


COMMANDS = readme_commands()


def test_readme_shows_commands():
    assert len(COMMANDS) >= 10 and any(c.startswith("exporter export") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, workspace):
    ws, images = workspace
    argv = shlex.split(command)[1:]
    if PLACEHOLDER.search(command):  # a synopsis: the subcommand and its options exist
        proc = run_cli([argv[0], "--help"], cwd=ws)
        assert proc.returncode == 0, proc.stderr
        for option in re.findall(r"--[a-z][a-z0-9-]*", command):
            assert option in proc.stdout, f"{option} of README's `{command}` is not an option"
        return
    reason = _skip_reason(argv)
    if reason:
        pytest.skip(reason)
    for i, arg in enumerate(argv):  # an earlier README command's artifacts: made here, small
        made_by_this = i > 0 and argv[i - 1] in ("--output", "-o")
        if arg.startswith("artifacts/") and not made_by_this and not (ws / arg).exists():
            _export_small(arg.split("/")[1], ws / "artifacts" / arg.split("/")[1], ws, images)
    if "foreign.onnx" in argv and not (ws / "foreign.onnx").exists():
        _foreign_onnx(ws, images)
    proc = _run_as_typed(command, argv, ws, images)
    errors, _ = error_lines(proc.stderr)
    if proc.returncode == 5 and errors and "pip install" in proc.stderr:
        pytest.skip(f"optional extra not installed here: {errors[0]}")
    assert proc.returncode == EXPECTED_EXIT.get(command, 0), (command, proc.stderr[-3000:])


def _run_as_typed(command: str, argv: list[str], ws: Path, images: Path):
    """The README line through bash (``$(...)``, ``>`` work), ``exporter``/``python`` from this venv,
    with the small-run options appended and example paths pointed at the tiny image folder."""
    import os
    import subprocess
    import sys

    text = command
    for example in EXAMPLE_PATHS:
        text = text.replace(f" {example}", f" {images}")
    extra = _small(list(argv), images)[len(argv):]
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": venv_bin + os.pathsep + os.environ["PATH"]}
    return subprocess.run(["bash", "-c", f"{text} {shlex.join(extra)}"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=900)


def _export_small(model: str, out: Path, ws: Path, images: Path) -> None:
    made = run_cli(_small(["export", model, "--format", "onnx,torchscript,pt2", "--no-verify",
                           "--output", str(out)], images), cwd=ws, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]


def _foreign_onnx(ws: Path, images: Path) -> None:
    """A user's ONNX file of lenet5 that carries none of our metadata."""
    import onnx

    out = ws / "foreign-src"
    _export_small("lenet5", out, ws, images)
    model = onnx.load(str(out / "lenet5.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(ws / "foreign.onnx"))
