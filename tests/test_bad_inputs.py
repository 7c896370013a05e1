"""The bad-input corpus: every case runs the ``exporter`` CLI in a subprocess, as a user would, and
must exit with its class's code, print exactly one ``error:`` line and one ``fix:`` line, no
traceback, leave nothing behind, and leave every file that was there byte-identical (the whole
working directory is hashed before and after). Faults (signals, full disks, read-only mounts, a
stalled network) are in ``test_faults.py``."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from cli_faults import assert_one_error, copy_export, run_cli, tree_hash

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

USAGE, INPUT, ENVIRONMENT = 2, 4, 5


@pytest.fixture(scope="module")
def lenet_export(tmp_path_factory) -> Path:
    """One lenet5 export (onnx + torchscript) shared by every case that needs an artifact dir."""
    from exporter.pipeline import ExportRequest, export

    out = tmp_path_factory.mktemp("shared") / "lenet5"
    export(ExportRequest(model="lenet5", formats=("onnx", "torchscript"), output=out, verify=False))
    return out


# ------------------------------------------------------------------------------ file makers
def _write(name: str, data: bytes | str):
    def make(ws: Path, _export: Path) -> None:
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return make


def _module(body: str):
    return _write("net.py", "import torch\nfrom torch import nn\n" + textwrap.dedent(body))


def _lenet_state() -> dict:
    from exporter.builders import build_model
    from exporter.recipes import get_recipe

    model, _ = build_model(get_recipe("lenet5"))
    return model.state_dict()


def _checkpoint(kind: str):
    def make(ws: Path, _export: Path) -> None:
        path = ws / "ckpt.pth"
        if kind == "truncated":
            torch.save(_lenet_state(), path)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "code":
            torch.save({"fn": Path("x")}, path)  # a pickled class: needs code execution
        elif kind == "wrong_arch":
            torch.save({"fc.weight": torch.zeros(3, 3)}, path)
        elif kind == "not_tensors":
            torch.save({"epoch": 3, "lr": 0.1}, path)
        elif kind == "safetensors_truncated":
            from safetensors.torch import save_file

            path = ws / "ckpt.safetensors"
            save_file({k: v.contiguous() for k, v in _lenet_state().items()}, str(path))
            path.write_bytes(path.read_bytes()[:200])
    return make


def _images(folder: str, count: int):
    """``count`` distinct small PNGs in ws/folder."""
    def make(ws: Path, _export: Path) -> None:
        import numpy as np
        from PIL import Image

        (ws / folder).mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(ws / folder / f"{i}.png")
    return make


def _onnx_external_outside(ws: Path, _export: Path) -> None:
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    (ws / "outside.bin").write_bytes(b"\0" * 16)
    node = helper.make_node("Add", ["input", "w"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", 1, [4])],
                              [helper.make_tensor_value_info("logits", 1, [4])], [weight])
    (ws / "m").mkdir()
    (ws / "m" / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())


def _absurd_length(ws: Path, _export: Path) -> None:
    # field 7 (graph), wire type 2, varint length ~ 2**62: a protobuf that claims exabytes
    (ws / "absurd.onnx").write_bytes(b"\x08\x07\x3a" + b"\xff" * 8 + b"\x3f" + b"abc")


def _artifacts(edit=None, replace_file=None):
    """A copy of the shared export in ws/art, its manifest edited by ``edit(manifest)``."""
    def make(ws: Path, export_dir: Path) -> None:
        art = copy_export(export_dir, ws / "art")
        if edit is not None:
            path = art / "manifest.json"
            data = json.loads(path.read_text())
            result = edit(data)
            path.write_text(result if isinstance(result, str) else json.dumps(data))
        if replace_file is not None:
            name, data = replace_file
            if data is None:  # truncated to a third, as an interrupted copy leaves it
                data = (art / name).read_bytes()[: (art / name).stat().st_size // 3]
            (art / name).write_bytes(data)
    return make


def _set(*keys_value):
    *keys, value = keys_value

    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def _both(*makers):
    def make(ws: Path, export_dir: Path) -> None:
        for maker in makers:
            maker(ws, export_dir)
    return make


def _other_model_dir(ws: Path, export_dir: Path) -> None:
    copy_export(export_dir, ws / "shared")


# ------------------------------------------------------------------------------ the corpus
E = ["export", "lenet5"]
P = ["parity", "lenet5", "--no-latency"]
CASES = [
    # usage: options and combinations (exit 2)
    ("batch-negative", None, E + ["--batch", "-1"], USAGE, ["--batch must be >= 1"]),
    ("batch-zero", None, E + ["--batch", "0"], USAGE, ["--batch must be >= 1, got 0"]),
    ("batch-not-int", None, E + ["--batch", "two"], USAGE, ["invalid int value: 'two'"]),
    ("opset-5", None, E + ["--opset", "5"], USAGE, ["--opset 5 is outside", "torchscript"]),
    ("opset-99", None, E + ["--opset", "99"], USAGE, ["--opset 99 is outside"]),
    ("opset-99-dynamo", None, E + ["--opset", "99", "--exporter", "dynamo"], USAGE, ["dynamo"]),
    ("input-size-zero", None, E + ["--input-size", "0"], USAGE, ["--input-size must be >= 1"]),
    ("seed-negative", None, E + ["--seed", "-3"], USAGE, ["--seed must be in 0.."]),
    ("std-zero", None, ["export", "net.py:make", "--channels", "1", "--mean", "0", "--std", "0"],
     USAGE, ["--std 0.0 must be > 0"]),
    ("mean-nan", None, ["export", "net.py:make", "--channels", "1", "--mean", "nan", "--std", "1"],
     USAGE, ["non-finite"]),
    ("unknown-option", None, E + ["--bogus"], USAGE, ["unrecognized arguments: --bogus"]),
    ("no-command", None, [], USAGE, ["required: COMMAND"]),
    ("unknown-command", None, ["exprot"], USAGE, ["invalid choice: 'exprot'"]),
    ("export-no-model", None, ["export"], USAGE, ["which model?"]),
    ("format-empty", None, E + ["--format", ","], USAGE, ["--format is empty"]),
    ("precision-choice", None, E + ["--precision", "int4"], USAGE, ["invalid choice: 'int4'"]),
    ("weights-and-checkpoint", None, E + ["--weights", "DEFAULT", "--checkpoint", "x"], USAGE,
     ["not allowed with argument"]),
    ("output-index-and-name", None, E + ["--output-index", "0", "--output-name", "a"], USAGE,
     ["not allowed with argument"]),
    ("output-index-negative", None, E + ["--output-index", "-1"], USAGE, ["--output-index must be >= 0"]),
    ("calibration-samples-zero", None, E + ["--precision", "int8", "--calibration", "packaged",
                                            "--calibration-samples", "0"], USAGE,
     ["--calibration-samples must be >= 1"]),
    ("calibration-missing", None, E + ["--precision", "int8", "--calibration", "nope/"], INPUT,
     ["--calibration nope/ does not exist"]),
    ("output-inside-calibration", _images("imgs", 20), E + ["--precision", "int8", "--calibration",
                                                             "imgs", "-o", "imgs/out"], USAGE,
     ["the output folder 'imgs/out' lies inside the --calibration folder 'imgs'"]),
    ("packaged-folder-here", _images("packaged", 20), E + ["--precision", "int8", "--calibration",
                                                            "packaged"], USAGE,
     ["a 'packaged' folder exists here too"]),
    ("one-image-nothing-to-judge", _images("one", 1), E + ["--precision", "int8", "--calibration", "one",
                                                           "--calibration-samples", "1"], INPUT,
     ["no sample is left to judge the INT8 budget on"]),
    ("accuracy-drop-500", None, E + ["--precision", "int8", "--calibration", "packaged",
                                     "--max-accuracy-drop", "500"], USAGE, ["0..100"]),
    ("output-is-file", _write("taken", "x"), E + ["--output", "taken"], USAGE, ["is an existing file"]),
    ("output-under-file", _write("taken", "x"), E + ["--output", "taken/sub/dir"], USAGE,
     ["is under taken, which is a file"]),
    ("net-timeout-not-number", None, ["export", "torchvision:resnet18", "--weights", "DEFAULT"],
     USAGE, ["ZOO_EXPORTER_NET_TIMEOUT='soon'"]),
    ("parity-nothing-to-compare", None, P + ["--samples", "0", "--random", "0"], USAGE,
     ["leaves nothing to compare"]),
    ("parity-threads-zero", None, P + ["--threads", "0"], USAGE, ["--threads must be >= 1, got 0"]),
    ("parity-threads-negative", None, P + ["--threads", "-4"], USAGE, ["--threads must be >= 1"]),
    ("parity-samples-negative", None, P + ["--samples", "-1"], USAGE, ["--samples must be >= 0"]),
    ("parity-runs-zero", None, P + ["--runs", "0"], USAGE, ["--runs must be >= 1"]),
    ("parity-rounds-zero", None, P + ["--rounds", "0"], USAGE, ["--rounds must be >= 1"]),
    ("parity-batch-sizes-zero", None, P + ["--batch-sizes", "0"], USAGE, ["positive integers"]),
    ("parity-images-missing", None, P + ["--images", "nope"], INPUT, ["--images nope is missing"]),
    ("parity-images-file", _write("img.png", b"x"), P + ["--images", "img.png"], INPUT, ["is a file"]),
    ("parity-no-model", None, ["parity"], USAGE, ["which model?"]),
    ("parity-zoo-and-model", None, ["parity", "lenet5", "--zoo"], USAGE, ["--zoo runs every recipe"]),
    ("parity-reduced-alone", None, P + ["--reduced"], USAGE, ["--reduced, --models and --keep-artifacts go with --zoo"]),
    ("parity-provider-on-cpu", None, P + ["--ort-provider", "cuda", "--device", "cpu"], USAGE,
     ["runs on a GPU"]),
    ("parity-no-manifest", _write("empty/readme.txt", "hi"), ["parity", "--artifacts", "empty"],
     INPUT, ["--artifacts 'empty' has no manifest.json"]),
    ("parity-folder-as-model", _write("done/manifest.json", "{}"), ["parity", "done"], USAGE,
     ["'done' is a folder, not a model name", "--artifacts done"]),
    ("parity-tflite-file", _write("out/m.int8.tflite", b"TFL3"), ["parity", "out/m.int8.tflite"],
     USAGE, ["takes an ONNX, pt2, AOTInductor or TorchScript file", "--artifacts out"]),
    ("parity-artifacts-absent", None, ["parity", "--artifacts", "nope"], INPUT,
     ["--artifacts 'nope' does not exist"]),
    ("parity-artifacts-with-precision", _write("done/manifest.json", "{}"),
     ["parity", "--artifacts", "done", "--precision", "fp16"], USAGE,
     ["--precision only shapes an export, and with --artifacts nothing is exported"]),
    ("build-nothing", None, ["build"], USAGE, ["build needs a MODEL"]),
    ("build-workspace-zero", None, ["build", "lenet5", "--workspace", "0"], USAGE, ["--workspace"]),
    ("build-target-cpu", None, ["build", "lenet5", "--precision", "int8", "--calibration", "packaged",
                                "--target", "cpu"], USAGE, ["a TensorRT engine is built from the tensorrt"]),
    ("fp16-with-calibration", None, E + ["--precision", "fp16", "--calibration", "packaged"], USAGE,
     ["--calibration only changes an INT8 export, and this one is --precision fp16"]),
    ("build-profile", None, ["build", "lenet5", "--min-batch", "4", "--max-batch", "2"], USAGE,
     ["1 <= min <= opt <= max"]),
    ("lint-precision-dir", _artifacts(), ["lint", "art", "--precision", "fp16"], USAGE,
     ["--precision applies to a single"]),
    ("lint-missing", None, ["lint", "nope.onnx"], INPUT, ["no such ONNX file"]),
    # bad input: models, checkpoints, files, manifests (exit 4)
    ("unknown-model", None, ["export", "lenet6"], INPUT, ["unknown model 'lenet6'"]),
    ("eval-images-are-calibration", _images("imgs", 24), E + ["--precision", "int8", "--calibration",
                                                               "imgs", "--eval-images", "imgs"],
     INPUT, ["--eval-images 'imgs' is the --calibration source"]),

    ("unknown-torchvision", None, ["export", "torchvision:resnet1"], INPUT, ["not a torchvision"]),
    ("model-file-missing", None, ["export", "missing.py:make"], INPUT, ["does not exist"]),
    ("model-file-is-dir", _write("pkg.py/x", ""), ["export", "pkg.py:make"], INPUT, ["is a directory"]),
    ("factory-not-identifier", _module(""), ["export", "net.py:1x"], INPUT, ["not a Python function"]),
    ("model-file-syntax", _write("net.py", "def make(:\n"), ["export", "net.py:make"], INPUT,
     ["syntax error at line 1"]),
    ("model-file-import-fails", _write("net.py", "import not_a_module_xyz\n"),
     ["export", "net.py:make"], INPUT, ["ModuleNotFoundError"]),
    ("factory-raises", _module("def make():\n    raise ValueError('boom')\n"),
     ["export", "net.py:make"], INPUT, ["raised ValueError: boom"]),
    ("factory-needs-argument", _module("def make(width):\n    return nn.Linear(width, 2)\n"),
     ["export", "net.py:make"], INPUT, ["cannot be called without arguments"]),
    ("recipe-mean-std", None, E + ["--mean", "0.5", "--std", "0.25"], USAGE,
     ["--mean 0.5, --std 0.25 would be ignored", "drop --mean --std"]),
    ("file-model-wrong-size", _module("""
        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        """), ["export", "net.py:make", "--input-size", "16"], INPUT,
     ["cannot take a 1x3x16x16 input", "pass the --input-size net_make was built for (got 16"]),
    ("factory-typeerror-inside", _module("def make():\n    return nn.Linear(8, None + 1)\n"),
     ["export", "net.py:make"], INPUT, ["make() raised TypeError: unsupported operand", "fix make in"]),
    ("factory-not-module", _module("def make():\n    return 42\n"), ["export", "net.py:make"],
     INPUT, ["returned int, not nn.Module"]),
    ("factory-missing", _module(""), ["export", "net.py:make"], INPUT, ["has no attribute 'make'"]),
    ("multi-output", _module("""
        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)
            def forward(self, x):
                y = self.fc(x.mean((2, 3)))
                return y, y * 2
        def make():
            return Two()
        """), ["export", "net.py:make", "--channels", "4", "--mean", "0.5,0.5,0.5,0.5",
                   "--std", "0.25,0.25,0.25,0.25", "--input-size", "8"], INPUT,
     ["returns 2 outputs", "[0] Tensor (1, 3)", "--output-index"]),
    ("multi-output-bad-index", _module("""
        class Two(nn.Module):
            def forward(self, x):
                return x.mean((2, 3)), x.amax((2, 3))
        def make():
            return Two()
        """), ["export", "net.py:make", "--channels", "3", "--input-size", "8", "--output-index", "5"],
     INPUT, ["--output-index 5 does not select"]),
    ("channels-without-mean-std", _module("def make():\n    return nn.Conv2d(4, 2, 1)\n"),
     ["export", "net.py:make", "--channels", "4"], USAGE,
     ["--channels 4 needs --mean and --std with 4 values each", "--mean 0.5,0.5,0.5,0.5"]),
    ("checkpoint-dir", _write("weights/a.bin", b"x"), E + ["--checkpoint", "weights"], INPUT,
     ["is a directory"]),
    ("checkpoint-missing", None, E + ["--checkpoint", "nope.pth"], INPUT, ["does not exist"]),
    ("checkpoint-empty", _write("ckpt.pth", b""), E + ["--checkpoint", "ckpt.pth"], INPUT,
     ["is empty (0 bytes)"]),
    ("checkpoint-random", _write("ckpt.pth", bytes(range(7, 250)) * 9), E + ["--checkpoint", "ckpt.pth"],
     INPUT, ["is not a PyTorch or safetensors checkpoint (binary data"]),
    ("checkpoint-text", _write("ckpt.pth", "weights go here\n"), E + ["--checkpoint", "ckpt.pth"],
     INPUT, ["(text,"]),
    ("checkpoint-truncated", _checkpoint("truncated"), E + ["--checkpoint", "ckpt.pth"], INPUT,
     ["truncated or damaged"]),
    ("checkpoint-needs-code", _checkpoint("code"), E + ["--checkpoint", "ckpt.pth"], INPUT,
     ["needs arbitrary code execution"]),
    ("checkpoint-wrong-arch", _checkpoint("wrong_arch"), E + ["--checkpoint", "ckpt.pth"], INPUT,
     ["does not match lenet5"]),
    ("checkpoint-not-tensors", _checkpoint("not_tensors"), E + ["--checkpoint", "ckpt.pth"], INPUT,
     ["are not tensors"]),
    ("safetensors-truncated", _checkpoint("safetensors_truncated"),
     E + ["--checkpoint", "ckpt.safetensors"], INPUT, ["truncated safetensors file"]),
    ("lint-text-file", _write("m.onnx", "not a model\n" * 20), ["lint", "m.onnx"], INPUT,
     ["not"]),
    ("lint-empty-file", _write("m.onnx", b""), ["lint", "m.onnx"], INPUT, ["is empty (0 bytes)"]),
    ("lint-random-bytes", _write("m.onnx", bytes(range(256)) * 4), ["lint", "m.onnx"], INPUT, ["ONNX"]),
    ("lint-truncated", _artifacts(replace_file=("lenet5.onnx", None)), ["lint", "art/lenet5.onnx"],
     INPUT, ["art/lenet5.onnx"]),
    ("lint-dir-truncated", _artifacts(replace_file=("lenet5.onnx", None)), ["lint", "art"],
     INPUT, ["art/lenet5.onnx"]),
    ("lint-absurd-length", _absurd_length, ["lint", "absurd.onnx"], INPUT, ["absurd.onnx"]),
    ("lint-external-outside", _onnx_external_outside, ["lint", "m/model.onnx"], INPUT,
     ["external data cannot be read"]),
    ("lint-manifest-not-json", _artifacts(edit=lambda d: "{not json"), ["lint", "art"], INPUT,
     ["is not valid JSON"]),
    ("lint-manifest-escapes", _artifacts(edit=lambda d: d["artifacts"][0].update(file="../outside.onnx")),
     ["lint", "art"], INPUT, ["'../outside.onnx', which is not inside"]),
    ("lint-manifest-absolute", _artifacts(edit=lambda d: d["artifacts"][0].update(file="/etc/passwd")),
     ["lint", "art"], INPUT, ["not inside"]),
    ("lint-manifest-list", _artifacts(edit=lambda d: "[1, 2]"), ["lint", "art"], INPUT,
     ["is not an exporter manifest"]),
    ("parity-manifest-not-json", _artifacts(edit=lambda d: ""), ["parity", "--artifacts", "art"],
     INPUT, ["is not valid JSON"]),
    ("parity-manifest-escapes", _artifacts(edit=lambda d: d["artifacts"][1].update(file="../../x.pt")),
     ["parity", "--artifacts", "art"], INPUT, ["not inside"]),
    ("parity-manifest-no-options", _artifacts(edit=lambda d: d.pop("model_options")),
     ["parity", "--artifacts", "art", "--no-latency"], INPUT, ["does not record the model options"]),
    ("parity-manifest-bad-seed", _artifacts(edit=_set("model_options", "seed", "abc")),
     ["parity", "--artifacts", "art", "--no-latency"], INPUT, ["'seed' is 'abc'"]),
    ("parity-modified-artifact", _artifacts(replace_file=("lenet5.ts.pt", b"tampered")),
     ["parity", "--artifacts", "art", "--no-latency", "--samples", "2", "--random", "1"], INPUT,
     ["lenet5.ts.pt", "differ from the sha256", "--accept-modified"]),
    ("export-over-user-manifest", _write("mine/manifest.json", '{"my": "notes"}'),
     E + ["--output", "mine"], INPUT, ["was not written by zoo-exporter"]),
    ("export-over-other-model", _other_model_dir, ["export", "mobilenet_v1", "--input-size", "32",
                                                   "--output", "shared"], INPUT,
     ["holds the export of lenet5", "--output shared/mobilenet_v1"]),
    ("export-over-user-file", _write("mine/lenet5.onnx", b"my own model"),
     E + ["--output", "mine", "--no-verify"], INPUT, ["lenet5.onnx, which the exporter did not write"]),
    # trust: an artifact directory never runs code (exit 2)
    ("parity-manifest-runs-code", _both(
        _write("evil.py", "open('PWNED', 'w').write('ran')\nimport torch\n"
                          "def make():\n    return torch.nn.Linear(1, 1)\n"),
        _artifacts(edit=_set("model_options", "model", "evil.py:make"))),
     ["parity", "--artifacts", "art", "--no-latency"], USAGE,
     ["by running evil.py:make", "--trust-model-code"]),
    # environment (exit 5)
    ("build-without-tensorrt", None, ["build", "lenet5", "--precision", "fp16"], ENVIRONMENT,
     ["TensorRT"]),
]
ENV = {"net-timeout-not-number": {"ZOO_EXPORTER_NET_TIMEOUT": "soon"}}


def test_corpus_is_wide_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, setup, args, code, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, setup, args, code, needles, tmp_path, lenet_export):
    if name == "build-without-tensorrt" and torch.cuda.is_available():
        pytest.skip("a CUDA machine may have TensorRT: the build would succeed")
    ws = tmp_path / "ws"
    ws.mkdir()
    if setup is not None:
        setup(ws, lenet_export)
    before = tree_hash(ws)
    proc = run_cli(args, cwd=ws, env=ENV.get(name))
    assert_one_error(proc, code, *needles)
    assert tree_hash(ws) == before  # nothing left behind, nothing changed, no code ran
