"""timm:<name> models through the same load -> prepare -> export -> parity path, the way users run
them (the CLI in a subprocess); offline: random init (BN stats randomized) and --checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

timm = pytest.importorskip("timm")
MODEL = "timm:resnet10t"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=900)


def test_timm_spec_comes_from_pretrained_cfg():
    from exporter.builders import resolve_model

    recipe, spec = resolve_model(MODEL)
    cfg = timm.models.get_pretrained_cfg("resnet10t")
    assert recipe.source == "timm" and recipe.num_classes == 1000
    assert spec.size == tuple(cfg.input_size[1:]) == (176, 176)
    assert spec.interpolation == "bicubic" and spec.resize == int(176 / cfg.crop_pct)
    assert spec.mean == pytest.approx(cfg.mean) and spec.std == pytest.approx(cfg.std)


def test_timm_export_then_parity_through_the_cli(tmp_path):
    out = tmp_path / "r10"
    proc = run_cli("export", MODEL, "--input-size", "64", "--format", "onnx", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == {"kind": "random", "seed": 0, "bn_stats": "randomized"}
    assert manifest["prepare"]["bn_folded"] > 0
    row = manifest["parity"][0]
    assert row["rel_max_abs"] < 1e-4 and row["top1_agreement"] == 1.0
    from exporter.metadata import read_onnx_metadata

    meta = read_onnx_metadata(out / "resnet10t.onnx")
    assert meta["model_spec"] == MODEL and meta["interpolation"] == "bicubic"
    proc = run_cli("parity", "--artifacts", str(out), "--no-latency", "--samples", "4")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "parity: resnet10t.onnx" in proc.stderr and ".onnx" in proc.stdout  # progress, table


def test_timm_checkpoint_loads_strictly(tmp_path):
    import torch

    torch.manual_seed(1)
    model = timm.create_model("resnet10t", pretrained=False)
    ckpt = tmp_path / "r10.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "ck"
    proc = run_cli("export", MODEL, "--checkpoint", str(ckpt), "--input-size", "64",
                   "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "checkpoint"
    assert manifest["parity"][0]["rel_max_abs"] < 1e-4


def test_unknown_timm_model_suggests_names(tmp_path):
    proc = run_cli("export", "timm:resnet10x", "--output", str(tmp_path / "x"))
    assert proc.returncode == 4
    assert "not a timm model" in proc.stderr and "timm:resnet10t" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,text", [
    (["timm:resnet10t", "--weights", "a1_in1k"], "timm has no pretrained weights 'resnet10t.a1_in1k'"),
    (["timm:resnet10t.a1_in1k"], "timm has no pretrained cfg 'resnet10t.a1_in1k'"),
])
def test_a_pretrained_tag_timm_does_not_have_is_bad_input_with_the_tags(argv, text, tmp_path):
    """Both said 'internal error: RuntimeError: Invalid pretrained tag (a1_in1k)' (exit 1)."""
    proc = run_cli("export", *argv, "--output", str(tmp_path / "x"))
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert text in proc.stderr and "c3_in1k" in proc.stderr and "internal error" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_timm_weights_offline_is_one_line_with_the_fix(tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "exporter", "export", MODEL, "--weights", "DEFAULT",
                           "--output", str(tmp_path / "w")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 4, proc.stderr
    assert "could not download timm weights resnet10t" in proc.stderr
    assert "--checkpoint PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_timm_batchnorm_act_layers_are_folded_with_their_activation_kept():
    """timm's BatchNormAct2d (BN -> drop -> act in one module) was traced into and every one read
    'not called in the traced eval-mode forward': 0 of EfficientNet-B0's 49 BNs folded, and the
    pt2 file kept 49 batch_norm ops."""
    import torch

    from exporter.builders import build_model, resolve_model
    from exporter.prepare import prepare_for_deploy

    recipe, spec = resolve_model("timm:efficientnet_b0", input_size=64)
    with torch.no_grad():
        model, _ = build_model(recipe, seed=0)
        reference, _ = prepare_for_deploy(model, recipe, fold=False)
        deploy, report = prepare_for_deploy(model, recipe, fold=True)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        ref, got = reference(x), deploy(x)
    assert report.bn_folded == 49 and report.bn_unfolded == [], report.bn_unfolded[:3]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in deploy.modules())
    assert (ref - got).abs().max() / ref.abs().max() < 1e-5
