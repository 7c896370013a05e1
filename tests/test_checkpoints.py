"""Checkpoint formats users have load through the CLI and their weights reach the ONNX file: a
``.safetensors`` file, and a training checkpoint dict holding a DataParallel (``module.``) state_dict
under ``state_dict``. (Broken checkpoints are cases of ``test_bad_inputs.py``.)"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cli_faults import run_cli


def _trained_like_state() -> dict[str, torch.Tensor]:
    from exporter.builders import build_model
    from exporter.recipes import get_recipe

    model, _ = build_model(get_recipe("lenet5"), seed=7)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("form", ["safetensors", "nested_dataparallel", "no_num_batches_tracked"])
def test_checkpoint_form_reaches_the_onnx_weights(form, tmp_path):
    state = _trained_like_state()
    if form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "lenet5.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif form == "no_num_batches_tracked":  # BN's training counter left out: load_state_dict takes it
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        path = tmp_path / "lenet5.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "lenet5.pth"
        torch.save({"epoch": 12, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    proc = run_cli(["export", "lenet5", "--checkpoint", path.name, "--output", "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "checkpoint"
    # recorded by absolute path: parity of the folder from elsewhere finds the checkpoint (it was
    # recorded as typed, relative to the export's working directory)
    assert manifest["model_options"]["checkpoint"] == str(tmp_path / path.name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli(["parity", "--artifacts", str(tmp_path / "out"), "--no-latency"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(not row["breach"] for row in manifest["parity"])
    inits = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out" / "lenet5.onnx")).graph.initializer]
    last = [k for k in state if k.endswith("weight") and state[k].ndim == 2][-1]  # the classifier
    want = state[last].numpy()
    assert any(a.shape in (want.shape, want.T.shape) and np.allclose(a.reshape(-1), want.reshape(-1))
               or a.shape == want.T.shape and np.allclose(a, want.T) for a in inits)


def test_a_fine_tuned_torchvision_head_exports_with_num_classes(tmp_path):
    """A torchvision checkpoint with a 10-class head, the commonest real model: the fix used to
    send the user to write a file.py:factory; --num-classes now builds the recipe with that head,
    the ONNX records it, parity of the file finds it, and named ImageNet weights refuse it."""
    import onnx
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    torch.save(model.state_dict(), tmp_path / "ten.pth")
    proc = run_cli(["export", "mobilenet_v3_small", "--checkpoint", "ten.pth", "--input-size", "64",
                    "-o", "out"], cwd=tmp_path)
    assert proc.returncode == 4 and not (tmp_path / "out").exists()
    assert ("fix: the checkpoint's classifier has 10 classes, mobilenet_v3_small is built with 1000: "
            "add --num-classes 10") in proc.stderr
    proc = run_cli(["export", "mobilenet_v3_small", "--checkpoint", "ten.pth", "--num-classes", "10",
                    "--input-size", "64", "-o", "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exported = onnx.load(str(tmp_path / "out" / "mobilenet_v3_small.onnx"))
    meta = {p.key: p.value for p in exported.metadata_props}
    assert meta["num_classes"] == "10" and "class_names" not in meta  # not ImageNet's labels
    assert exported.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    proc = run_cli(["parity", "out/mobilenet_v3_small.onnx", "--no-latency", "-o", "rep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-> ok" in proc.stdout or " ok" in proc.stdout
    proc = run_cli(["export", "mobilenet_v3_small", "--weights", "DEFAULT", "--num-classes", "10",
                    "-o", "named"], cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "named").exists()
    assert "--weights DEFAULT of mobilenet_v3_small classify 1000 classes, not 10 (--num-classes)" \
        in proc.stderr


def test_a_checkpoint_with_its_state_dict_under_another_key_names_it(tmp_path, monkeypatch):
    """An EMA checkpoint ({'state_dict_ema': ..., 'epoch': 3}) got a fix that named only
    'state_dict'/'model'; it now names the nested state dict and how to save it."""
    from exporter.checkpoints import read_checkpoint
    from exporter.errors import WeightsError

    state = torch.nn.Linear(3, 2).state_dict()
    torch.save({"state_dict_ema": state, "epoch": 3}, tmp_path / "ema.pth")
    with pytest.raises(WeightsError) as caught:
        read_checkpoint(tmp_path / "ema.pth")
    assert "it holds state dicts under [\"state_dict_ema\"]: save the one to export" in caught.value.fix
    command = caught.value.fix.split('python -c "')[1].rstrip('"')
    monkeypatch.chdir(tmp_path)
    exec(command, {})  # the printed one-liner works as given
    assert read_checkpoint(tmp_path / "ema.state_dict_ema.pth").keys() == state.keys()
