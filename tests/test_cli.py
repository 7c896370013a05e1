"""The command line as a user meets it: listing, exporting, and every bad input's one-line error.

Each failure must exit non-zero, name the fix, and leave no artifact directory behind.
"""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

from exporter.cli import main
from exporter.recipes import all_recipes


def run_cli(*args: str, cwd=None, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``exporter ARGS`` in a subprocess, as users run it (in ``cwd``, with ``env``)."""
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_list_shows_every_recipe_with_details(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(all_recipes())
    googlenet = next(r for r in rows if r["name"] == "googlenet")
    assert "strip aux1/aux2" in googlenet["prepare"] and "fold BN" in googlenet["prepare"]
    lenet = next(r for r in rows if r["name"] == "lenet5")
    assert lenet["channels"] == 1 and lenet["input"] == [32, 32] and lenet["classes"] == 10


def test_export_command_prints_summary_and_writes_manifest(tmp_path):
    out = tmp_path / "mv3"
    proc = run_cli("export", "mobilenet_v3_small", "--format", "onnx,torchscript", "--input-size", "64",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "random init" in proc.stdout and "parity vs eager" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["size"] == [64, 64] and manifest["input"]["dynamic_batch"] is True
    assert manifest["export"]["nodes_after"] <= manifest["export"]["nodes_exported"]
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= set(manifest["versions"])
    assert manifest["weights"] == {"kind": "random", "seed": 0, "bn_stats": "randomized"}


@pytest.mark.parametrize("args, message, fix", [
    (["mobilenet_v3_smal"], "unknown model 'mobilenet_v3_smal'", "did you mean 'mobilenet_v3_small'"),
    (["torchvision:regnet_x_400"], "not a torchvision classification model", "torchvision:regnet_x_400mf"),
    (["resnet18", "--format", "keras"], "unknown format", "--format onnx,torchscript"),
    (["resnet18", "--input-size", "16"], "needs inputs of at least 32x32", "--input-size 32"),
    (["lenet5", "--input-size", "64"], "only takes 32x32", "drop --input-size"),
    (["resnet18", "--precision", "int8", "--input-size", "32"], "INT8 needs calibration", "--calibration DIR"),
    (["lenet5", "--weights", "DEFAULT"], "not a torchvision model", "--checkpoint PATH"),
])
def test_bad_input_one_line_error_and_no_artifacts(tmp_path, args, message, fix):
    out = tmp_path / "out"
    proc = run_cli("export", *args, "--output", str(out))
    assert proc.returncode != 0
    assert message in proc.stderr and fix in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_checkpoint_mismatch_names_first_keys(tmp_path):
    from torchvision.models import resnet34

    ckpt = tmp_path / "r34.pth"
    torch.save(resnet34().state_dict(), ckpt)
    proc = run_cli("export", "resnet18", "--checkpoint", str(ckpt), "--output", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "does not match resnet18" in proc.stderr and "unexpected (first: layer1.2." in proc.stderr
    assert not (tmp_path / "o").exists()


def test_checkpoint_needing_code_execution_is_refused(tmp_path):
    ckpt = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "config": argparse_namespace()}, ckpt)
    proc = run_cli("export", "resnet18", "--checkpoint", str(ckpt), "--output", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "needs arbitrary code execution" in proc.stderr and "torch.save(model.state_dict()" in proc.stderr
    assert "it pickles an object of class argparse.Namespace" in proc.stderr  # not torch's "two options" preamble
    assert "\x1b[" not in proc.stderr  # no terminal escape codes in the error line


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=0.1)


def test_checkpoint_round_trip_matches(tmp_path):
    from exporter.builders import build_model
    from exporter.pipeline import ExportRequest, export
    from exporter.recipes import get_recipe

    model, _ = build_model(get_recipe("resnet18"), seed=7)
    ckpt = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    result = export(ExportRequest(model="resnet18", checkpoint=str(ckpt), input_size=32,
                                  output=tmp_path / "r18"))
    assert result.manifest["weights"]["kind"] == "checkpoint"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(result.reference(x), model(x), rtol=1e-5, atol=1e-5)


def test_torchvision_model_outside_the_zoo(tmp_path):
    proc = run_cli("export", "torchvision:regnet_x_400mf", "--input-size", "64", "--output",
                   str(tmp_path / "regnet"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "regnet" / "manifest.json").read_text())
    assert manifest["prepare"]["bn_folded"] > 0 and manifest["parity"][0]["top1_agreement"] == 1.0
    graph = onnx.load(str(tmp_path / "regnet" / "regnet_x_400mf.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in graph.graph.node)


def test_user_module_from_file(tmp_path):
    (tmp_path / "models").mkdir()
    src = tmp_path / "models" / "mynet.py"
    src.write_text("from blocks import make  # a module beside it, imported as `python mynet.py` would\n")
    (tmp_path / "models" / "blocks.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def make():
            return nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    """))
    proc = run_cli("export", f"{src}:make", "--input-size", "28", "--channels", "1", "--mean", "0.5",
                   "--std", "0.25", "--format", "onnx,torchscript", "--output", str(tmp_path / "mine"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "mine" / "manifest.json").read_text())
    assert manifest["input"]["channels"] == 1 and manifest["input"]["mean"] == [0.5]
    assert manifest["prepare"]["bn_folded"] == 1
    assert all(r["rel_max_abs"] < 1e-4 for r in manifest["parity"])
    # parity of the file alone rebuilds the 1-channel input from its metadata (was exit 1:
    # "expected input[16, 3, 28, 28] to have 1 channels")
    proc = run_cli("parity", str(tmp_path / "mine" / "mynet_make.onnx"), "--model", f"{src}:make",
                   "--no-latency")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_failed_onnx_export_keeps_stdout_to_one_json_document(tmp_path):
    """torch's TorchScript exporter prints its IR graph to the process's stdout on failure: it
    came before --json's document, which then did not parse."""
    src = tmp_path / "inv.py"
    src.write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        class Inv(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 10)

            def forward(self, x):
                h = self.conv(x).mean((2, 3))[:, :4].reshape(-1, 2, 2) + 3 * torch.eye(2)
                return self.fc(torch.linalg.inv(h).reshape(-1, 4))

        def make():
            return Inv()
    """))
    proc = run_cli("export", f"{src}:make", "--num-classes", "10", "--input-size", "32", "--json",
                   "--output", str(tmp_path / "o"))
    assert proc.returncode == 6, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and "aten::linalg_inv" in doc["error"]
    assert not (tmp_path / "o").exists()


def test_missing_factory_is_a_clear_error(tmp_path):
    src = tmp_path / "empty.py"
    src.write_text("x = 1\n")
    proc = run_cli("export", f"{src}:make", "--output", str(tmp_path / "o"))
    assert proc.returncode != 0 and "has no attribute 'make'" in proc.stderr


def test_fixed_batch_and_dynamo_exporter(tmp_path):
    from exporter.pipeline import ExportRequest, export

    result = export(ExportRequest(model="mobilenet_v2", input_size=64, batch=4, exporter="dynamo",
                                  output=tmp_path / "mv2"))
    graph = onnx.load(str(tmp_path / "mv2" / "mobilenet_v2.onnx"))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 3, 64, 64]
    assert result.manifest["export"]["exporter"] == "dynamo"
    assert result.parity[0]["rel_max_abs"] < 1e-4


def test_weights_download_without_internet_is_a_clear_error(tmp_path, monkeypatch):
    # point the hub cache at an empty folder so a real download is attempted (no network here)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    proc = run_cli("export", "resnet18", "--weights", "IMAGENET1K_V1", "--output", str(tmp_path / "o"))
    if proc.returncode == 0:
        pytest.skip("this machine has internet access: the download succeeded")
    assert "could not download torchvision weights" in proc.stderr and "--checkpoint" in proc.stderr
    assert not (tmp_path / "o").exists()


BRANCHY = """
import torch
import torch.nn as nn

class Branchy(nn.Module):
    # Python control flow on the batch size: tracing records the branch of the dummy batch, so
    # the exported graph is wrong for other batch sizes (a classic dynamic-batch bug)
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if x.shape[0] > 2:
            y = -y * 3
        return self.fc(y)

def make():
    torch.manual_seed(0)
    return Branchy()
"""


def test_parity_breach_is_an_error_naming_the_output_and_leaves_nothing(tmp_path):
    src = tmp_path / "branchy.py"
    src.write_text(BRANCHY)
    out = tmp_path / "artifacts" / "branchy"
    proc = run_cli("export", f"{src}:make", "--input-size", "32", "--output", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "parity breach" in proc.stderr and "output 'logits'" in proc.stderr
    assert "max-abs error" in proc.stderr and "--locate" in proc.stderr
    assert not (tmp_path / "artifacts").exists()
    kept = run_cli("export", f"{src}:make", "--input-size", "32", "--output", str(out), "--no-fail")
    assert kept.returncode == 0 and "BREACH" in kept.stdout and (out / "manifest.json").exists()


def test_naming_a_file_model_again_by_a_relative_path_is_consent(tmp_path):
    """The manifest records the file model's absolute path; naming it again as net.py:make or
    ./net.py:make (from its folder) is consent, and the refusal's command is shell-quoted."""
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))\n")
    cli = [sys.executable, "-m", "exporter"]
    made = subprocess.run([*cli, "export", "net.py:make", "--input-size", "16", "-o", "out dir ü",
                           "--no-verify"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    refused = subprocess.run([*cli, "parity", "--artifacts", "out dir ü", "--no-latency"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert f"exporter parity {tmp_path / 'net.py'}:make --artifacts 'out dir ü'" in refused.stderr
    for spec in ("net.py:make", "./net.py:make"):
        ok = subprocess.run([*cli, "parity", spec, "--artifacts", "out dir ü", "--no-latency", "--samples",
                             "0", "--random", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert ok.returncode == 0, (spec, ok.stderr[-2000:])


@pytest.mark.parametrize("args, text", [
    (["export", "lenet5", "-o", ""], "argument --output/-o: is empty (an unset variable?)"),
    (["parity", "lenet5", "--report", ""], "argument --report: is empty"),
    (["matrix", "plan.toml", "--output", ""], "argument --output/-o: is empty"),
    (["export", "lenet5", "--rtol", "nan"], "--rtol must be a finite number >= 0, got nan"),
    (["export", "lenet5", "--rtol", "-1"], "--rtol must be a finite number >= 0, got -1.0"),
    (["export", "lenet5", "--atol", "inf"], "--atol must be a finite number >= 0, got inf"),
    (["parity", "lenet5", "--atol", "-0.5"], "--atol must be a finite number >= 0, got -0.5")])
def test_empty_folders_and_unusable_tolerances_are_usage_errors(tmp_path, args, text):
    """-o "" was the current folder (an unset $OUT exported there); NaN tolerances passed every
    check, negative ones failed every artifact as a 'breach'."""
    proc = run_cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and text in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_parity_refuses_a_checkpoint_that_changed_since_the_export(tmp_path):
    """The manifest records the checkpoint's sha256; other weights under the same path rebuild
    another eager model, whose mismatch used to be blamed on the artifact (exit 3, --locate)."""
    from exporter.builders import build_model
    from exporter.recipes import get_recipe

    ckpt = tmp_path / "lenet.pth"
    seed = 0
    torch.save(build_model(get_recipe("lenet5"), seed=seed)[0].state_dict(), ckpt)
    cli = [sys.executable, "-m", "exporter"]
    made = subprocess.run([*cli, "export", "lenet5", "--checkpoint", str(ckpt), "-o", "out", "--no-verify"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    same = subprocess.run([*cli, "parity", "--artifacts", "out", "--no-latency", "--samples", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    seed = 1
    torch.save(build_model(get_recipe("lenet5"), seed=seed)[0].state_dict(), ckpt)
    proc = subprocess.run([*cli, "parity", "--artifacts", "out", "--no-latency"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert f"error: the checkpoint {ckpt.resolve()} changed since the export in out (sha256" in proc.stderr
    assert "--locate" not in proc.stderr


def test_parity_of_a_file_whose_checkpoint_moved_or_differs_is_refused_not_breached(tmp_path):
    """The file's metadata names its checkpoint; once it moved, parity FILE compared the file with
    a random-init model and reported a breach (exit 3) of a good file."""
    from exporter.builders import build_model
    from exporter.recipes import get_recipe

    def cli(*args):
        return run_cli(*args, cwd=tmp_path, timeout=300)

    for seed, name in ((0, "lenet.pth"), (1, "other.pth")):
        torch.save(build_model(get_recipe("lenet5"), seed=seed)[0].state_dict(), tmp_path / name)
    made = cli("export", "lenet5", "--checkpoint", "lenet.pth", "-o", "out", "--no-verify")
    assert made.returncode == 0, made.stderr
    quick = ("--no-latency", "--samples", "2")
    assert cli("parity", "out/lenet5.onnx", *quick, "--report", "rep").returncode == 0
    # the report names the eager reference: its input and weights (it said 'input None · weights: ?')
    assert "· input [32, 32] · weights: checkpoint lenet.pth ·" in (tmp_path / "rep" / "report.md").read_text()
    weights = json.loads((tmp_path / "rep" / "report.json").read_text())["reports"][0]["weights"]
    assert weights["kind"] == "checkpoint" and weights["path"] == str(tmp_path / "lenet.pth")
    (tmp_path / "lenet.pth").rename(tmp_path / "moved.pth")
    gone = cli("parity", "out/lenet5.onnx", *quick)
    assert gone.returncode == 4, gone.stderr[-2000:]
    assert "error: out/lenet5.onnx was exported from the checkpoint lenet.pth (sha256 " in gone.stderr
    assert f"is no longer at {tmp_path / 'lenet.pth'}" in gone.stderr and "--checkpoint PATH" in gone.stderr
    assert cli("parity", "out/lenet5.onnx", "--checkpoint", "moved.pth", *quick).returncode == 0
    other = cli("parity", "out/lenet5.onnx", "--checkpoint", "other.pth", *quick)
    assert other.returncode == 4, other.stderr[-2000:]
    assert "not from other.pth (sha256 " in other.stderr and "breach" not in other.stderr


@pytest.mark.parametrize("missing", ["nothere.onnx", "out/nothere.pt2", "a/b/model.ts.pt", "x.tflite"])
def test_parity_of_a_mistyped_file_says_the_file_does_not_exist(tmp_path, missing):
    proc = run_cli("parity", missing, "--no-latency", cwd=tmp_path, timeout=120)
    assert proc.returncode == 4 and f"error: file {missing} does not exist" in proc.stderr, proc.stderr
    assert "unknown model" not in proc.stderr and list(tmp_path.iterdir()) == []


def _images(root, folders):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")


def test_parity_images_labels_are_checked_and_why_there_are_none_is_said(tmp_path):
    """Class folder 12 of a 10-class model counted its images as wrong (accuracy lowered, no word);
    folders named 'cat'/'dog' gave no labels and said so only inside report.json."""
    cli = [sys.executable, "-m", "exporter", "parity", "lenet5", "--no-latency", "--random", "0", "-o",
           str(tmp_path / "out")]
    _images(tmp_path / "beyond", ["3", "12"])
    proc = subprocess.run([*cli, "--images", str(tmp_path / "beyond")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "class subfolder(s) 12 name classes the model does not have (its output has 10: 0..9)" in proc.stderr
    # refused too when --samples draws none of folder 12's images (only the drawn labels were checked)
    _images(tmp_path / "beyond0", ["0", "12"])
    proc = subprocess.run([*cli, "--images", str(tmp_path / "beyond0"), "--samples", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4 and "class subfolder(s) 12 name classes" in proc.stderr, proc.stderr[-2000:]
    _images(tmp_path / "named", ["cat", "dog"])
    proc = subprocess.run([*cli, "--images", str(tmp_path / "named"), "--report", str(tmp_path / "rep")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note images: no labels: subfolder(s) 'cat', 'dog'" in proc.stdout
    assert "- inputs images: no labels: subfolder(s) 'cat', 'dog'" in (tmp_path / "rep" / "report.md").read_text()


def test_simplifier_none_is_said_as_not_simplified(tmp_path):
    proc = run_cli("export", "lenet5", "--simplifier", "none", "--no-verify", "-o", "out", cwd=tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("onnx:"))
    assert "12 nodes, not simplified (--simplifier none)" in line and "after none" not in line


def test_a_damaged_artifact_is_bad_input_not_a_tolerance_breach(tmp_path):
    cli = [sys.executable, "-m", "exporter"]
    made = subprocess.run([*cli, "export", "lenet5", "-o", "out", "--no-verify"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    with open(tmp_path / "out" / "lenet5.onnx", "ab") as fh:
        fh.write(b"\n")
    proc = subprocess.run([*cli, "parity", "--artifacts", "out", "--no-latency", "--accept-modified"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "error: lenet5: 1 artifact(s) could not be loaded: lenet5.onnx output 'logits': could not be " \
           "loaded" in proc.stderr
    assert "tolerance" not in proc.stderr and "--locate" not in proc.stderr and "re-export" in proc.stderr


def test_a_closed_stdout_loses_no_report(tmp_path):
    """`exporter parity ... --report DIR | head -1`: the reader closes stdout early; the report
    files are written before the table is printed."""
    cli = [sys.executable, "-m", "exporter"]
    made = subprocess.run([*cli, "export", "lenet5", "-o", "out", "--no-verify"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    proc = subprocess.Popen([*cli, "parity", "--artifacts", "out", "--no-latency", "--report", "rep"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # a reader that is gone before the first line
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and proc.returncode == 141  # 128 + SIGPIPE, not rich's exit 1
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["reports"][0]["model"] == "lenet5"


def test_paths_with_brackets_are_printed_as_they_are(tmp_path):
    """rich read '[red]' in a folder name as markup and dropped it from the printed path."""
    cli = [sys.executable, "-m", "exporter"]
    proc = subprocess.run([*cli, "parity", "lenet5", "-o", "a[red]b[/]", "--no-latency", "--samples", "2",
                           "--random", "1", "--report", "r[bold]x"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report: r[bold]x/report.md" in proc.stdout and (tmp_path / "r[bold]x" / "report.md").is_file()
    assert "- **Latency:** not timed (--no-latency)" in (tmp_path / "r[bold]x" / "report.md").read_text()
    (tmp_path / "m[bold]x.onnx").write_bytes((tmp_path / "a[red]b[/]" / "lenet5.onnx").read_bytes())
    proc = subprocess.run([*cli, "parity", "m[bold]x.onnx", "--model", "lenet5", "--samples", "2", "--random",
                           "1", "--runs", "1", "--warmup", "0", "--rounds", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(line.split()[:2] == ["m[bold]x.onnx", "fp32"] for line in proc.stdout.splitlines()), \
        proc.stdout  # the table cell as it is, not read as markup
    assert "0 warm-up runs discarded, 1 timed run in 1 interleaved round, batch" in proc.stdout


@pytest.mark.parametrize("args, text", [
    (["lint", "nope.onnx"], "nope.onnx: no such ONNX file or artifact directory"),
    (["export", "lenet5", "--precision", "int8", "--calibration", "nope/"], "--calibration nope/ does not exist"),
    (["parity", "lenet5", "--images", "nope"], "--images nope is missing, not a directory"),
    (["parity", "--artifacts", "nope"], "--artifacts 'nope' does not exist"),
    (["export", "lenet5", "--checkpoint", "nope.pth"], "nope.pth' does not exist")])
def test_a_missing_input_path_is_bad_input_whichever_option_names_it(tmp_path, args, text):
    """Exit 4 (bad input) for every missing input path; --calibration, --images, lint and
    --artifacts said 2 (usage) where --checkpoint and parity FILE said 4."""
    proc = run_cli(*args, cwd=tmp_path, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 4 and len(errors) == 1 and text in errors[0], proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_on_a_kernel_filesystem_is_refused_as_such(tmp_path):
    """-o /proc/x was refused with '0.0 MiB free', as if a disk were full."""
    proc = run_cli("export", "lenet5", "-o", "/proc/zoo-x", cwd=tmp_path, timeout=120)
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "error: --output /proc/zoo-x: /proc is a kernel filesystem that stores no files" in proc.stderr


def test_an_output_through_a_missing_folder_and_back_makes_only_the_output(tmp_path):
    """-o a/../b exported into b but left an empty a/ behind, a folder nobody asked for."""
    proc = run_cli("export", "lenet5", "--format", "onnx", "-o", "a/../b", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["artifacts"][0]["file"] == "lenet5.onnx"


def test_a_signal_after_the_command_finished_keeps_its_exit_code(tmp_path):
    """A Ctrl-C in the interpreter's teardown after a finished export (about 2 s with torch)
    ended in a silent exit 130; the command's result stands."""
    script = ("import os, signal, sys, time\n"
              "from exporter.cli import main\n"
              "sys.argv = ['exporter', 'list']\n"
              "code = main()\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "time.sleep(5)\n"
              "sys.exit(99)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "lenet5" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_a_model_that_asserts_on_its_input_size_is_bad_input_not_a_bug(tmp_path):
    """torchvision's ViT asserts 'Wrong image height!'; only RuntimeError was read as a size
    problem, the rest said 'internal error ... report it as a bug' (exit 1)."""
    (tmp_path / "fixed.py").write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(3, 10)\n"
        "    def forward(self, x):\n        assert x.shape[-1] == 224, f'Wrong image width {x.shape[-1]}'\n"
        "        return self.fc(x.mean((2, 3)))\n\ndef build():\n    return Net()\n")
    proc = run_cli("export", "fixed.py:build", "--input-size", "96", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "fixed_build cannot take a 1x3x96x96 input (Wrong image width 96)" in proc.stderr
    assert "internal error" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_failed_weight_download_keeps_json_stdout_clean_and_names_the_shipped_weights(tmp_path):
    """torch.hub wrote 'Downloading: ...' to stdout ahead of --json's document; a refused
    connection was told to raise the network timeout."""
    import os

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "hub"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}  # a refused connection, with or without internet
    proc = run_cli("export", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--json", "-o", "out", cwd=tmp_path,
                   timeout=300, env=env)
    assert proc.returncode == 4, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # one document, nothing before it
    assert doc["ok"] is False and "could not download torchvision weights" in doc["error"]
    assert 'Downloading: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"' in proc.stderr
    assert '--checkpoint "$(python -m exporter.offline_weights)"' in doc["fix"]
    assert "ZOO_EXPORTER_NET_TIMEOUT" not in doc["fix"] and not (tmp_path / "out").exists()


def test_an_edited_model_file_is_another_model_for_reuse_and_parity(tmp_path):
    """After editing file.py's forward, a re-export kept the old ONNX 'from an earlier export of
    the same model', and parity --artifacts blamed the artifacts (exit 3)."""
    def cli(*args):
        return run_cli(*args, cwd=tmp_path)

    source = ("import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n        self.fc = torch.nn.Linear(8, 10)\n"
              "    def forward(self, x):\n        y = self.conv(x)\n        return self.fc((y + y.relu()).mean((2, 3)))\n\n"
              "def build():\n    return Net()\n")
    model = tmp_path / "net.py"
    model.write_text(source)
    assert cli("export", "net.py:build", "--input-size", "32", "-o", "out", "--no-verify").returncode == 0
    model.write_text(source.replace("y + y.relu()", "y - y.relu()"))
    stale = cli("parity", "net.py:build", "--artifacts", "out", "--no-latency", "--samples", "2")
    assert stale.returncode == 4, stale.stderr[-2000:]
    assert "error: the model file" in stale.stderr and "changed since the export in out" in stale.stderr
    again = cli("export", "net.py:build", "--input-size", "32", "-o", "out", "--format", "pt2", "--no-verify")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "kept from an earlier export" not in again.stdout and not (tmp_path / "out" / "net_build.onnx").exists()
    assert "replaced: an earlier export of other model options (model code sha256 " in again.stdout


def test_a_zero_initialized_head_gets_random_weights_and_no_bn_is_said(tmp_path):
    """torchvision's ViT zero-initializes its head: every logit 0, cosine 0, a parity breach the
    default random init could never pass. A model without BN read 'BN statistics randomized', and
    a file model was told to pass --weights DEFAULT, which it refuses."""
    (tmp_path / "zero.py").write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)\n        self.head = torch.nn.Linear(16, 10)\n"
        "        torch.nn.init.zeros_(self.head.weight)\n        torch.nn.init.zeros_(self.head.bias)\n"
        "    def forward(self, x):\n        return self.head(self.conv(x).relu().mean((2, 3)))\n\n"
        "def build():\n    return Net()\n")
    proc = run_cli("export", "zero.py:build", "--input-size", "32", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weights: seeded random init (seed 0, no BatchNorm to randomize, zero-initialized head given " \
        "random weights) - NOT trained; pass --checkpoint PATH for real weights" in proc.stdout
    assert "cosine 1.000000" in proc.stdout


@pytest.mark.slow
def test_the_simplifiers_native_warnings_are_counted_not_printed(tmp_path):
    """onnxsim printed ~70 'WARNING: failed to run "Transpose" op ... skip' lines for Swin-T on
    stderr, even with --quiet."""
    proc = run_cli("export", "torchvision:swin_t", "--input-size", "96", "--no-verify", "-o", "out",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed to run" not in proc.stderr
    assert re.search(r"onnxsim printed \d+ warning line\(s\): hidden, --debug shows them", proc.stdout)
