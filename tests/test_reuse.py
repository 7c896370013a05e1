"""Take or make (``reuse.export_or_reuse``, used by ``parity`` and ``build``): a directory written
for the same request is re-used untouched; a differing model, export or quantize option, a
missing file, or calibration files changed in place, is exported again."""
from __future__ import annotations

from dataclasses import replace

import pytest

from exporter.pipeline import ExportRequest, export
from exporter.reuse import export_or_reuse

INT8 = {"calibration": "packaged", "samples": 8, "method": "minmax", "min_agreement": 0.9}  # reuse, not accuracy


@pytest.fixture()
def base(tmp_path):
    request = ExportRequest(model="lenet5", output=tmp_path / "lenet5", precision="int8",
                            quant=dict(INT8), verify=False)
    export(request)
    return request


def _stamp(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_same_request_is_reused_untouched(base):
    before = _stamp(base.output)
    ready = export_or_reuse(base, say=lambda _m: None)
    assert ready.note == f"re-using {base.output}" and _stamp(base.output) == before
    recorded = [a for a in ready.manifest["artifacts"] if a["precision"] == "int8"]
    assert recorded and recorded[0]["details"]["options"] == dict(sorted(INT8.items()))
    assert ready.recipe.name == "lenet5" and ready.spec.channels == 1
    fp32 = export_or_reuse(replace(base, precision="fp32", quant={}), say=lambda _m: None)
    assert fp32.note.startswith("re-using")  # the fp32 ONNX is there


@pytest.mark.parametrize("change,expect", [
    ({"quant": {**INT8, "method": "entropy"}}, "exported onnx int8 into {out} (made with other INT8 "
                                               "options: --calibration-method minmax -> entropy)"),
    ({"quant": {**INT8, "samples": 16}}, "exported onnx int8 into {out} (made with other INT8 options: "
                                         "--calibration-samples 8 -> 16)"),
    ({"formats": ("onnx", "torchscript")}, "exported torchscript fp32"),
    ({"seed": 1}, "exported onnx into"),
    ({"simplifier": "none"}, "exported onnx into"),
])
def test_any_difference_is_exported_again(base, change, expect):
    ready = export_or_reuse(replace(base, **change), say=lambda _m: None)
    assert ready.note.startswith(expect.format(out=base.output)), ready.note
    again = export_or_reuse(replace(base, **change), say=lambda _m: None)
    assert again.note.startswith("re-using")


def test_deleted_file_is_exported_again(base):
    (base.output / "lenet5.int8.tensorrt.onnx").unlink()
    ready = export_or_reuse(base, say=lambda _m: None)
    assert ready.note == f"exported onnx int8 into {base.output} (its file is gone)"
    assert (base.output / "lenet5.int8.tensorrt.onnx").is_file()


def test_calibration_images_changed_in_place_are_exported_again(tmp_path):
    """`parity --precision int8 --calibration DIR` re-used an INT8 model calibrated on images that
    had since been edited in place (same names, modification times put back)."""
    import os

    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    request = ExportRequest(model="lenet5", output=tmp_path / "out", precision="int8", verify=False,
                            quant={**INT8, "calibration": str(folder), "min_agreement": 0.5, "samples": 6})
    export(request)
    details = [a for a in export_or_reuse(request, say=lambda _m: None).manifest["artifacts"]
               if a["precision"] == "int8"][0]["details"]
    assert details["data_files"]["calibration"].startswith("12 file(s), sha256 ")
    assert export_or_reuse(request, say=lambda _m: None).note.startswith("re-using")
    edited = folder / "3.png"
    stat = edited.stat()
    Image.fromarray(rng.integers(0, 255, (40, 41, 3), dtype=np.uint8)).save(edited)  # another size
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ready = export_or_reuse(request, say=lambda _m: None)
    assert ready.note.endswith("(its calibration or judging files changed since)"), ready.note
    assert export_or_reuse(request, say=lambda _m: None).note.startswith("re-using")


def test_parity_that_replaces_an_export_of_other_options_says_so(tmp_path):
    """`parity MODEL` into a folder holding an export at another --input-size re-exported at the
    default size without a word; the earlier files were gone."""
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)

    made = cli("export", "mobilenet_v3_small", "--input-size", "64", "-o", "x", "--no-verify")
    assert made.returncode == 0, made.stderr[-2000:]
    proc = cli("parity", "mobilenet_v3_small", "--input-size", "96", "-o", "x", "--no-latency",
               "--samples", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported onnx, torchscript into x; it replaced the export of other model options there " \
        "(input_size 64 -> 96) (one folder holds one export: --output keeps both)" in proc.stderr
