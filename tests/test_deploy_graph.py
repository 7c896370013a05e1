"""Correct models are accepted: the deploy-form check judges the exported graph, so a model that
torch.fx cannot trace, or one BN shared by two convs, exports when the graph is fine; Linear -> BN
is folded; a (logits, aux) model exports with --output-index. Run as the CLI in a subprocess, with
the export's own parity check against eager on."""
from __future__ import annotations

import json
import textwrap

import onnx
import pytest

from cli_faults import run_cli

MODELS = {
    "untraceable": """
        class Net(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
            def __init__(self):
                super().__init__()
                self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
                self.fc = nn.Linear(8, 5)
            def forward(self, x):
                if x.sum() > -1e30:
                    x = self.bn(self.conv(x))
                return self.fc(x.mean((2, 3)))
        """,
    "shared_bn": """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
                self.bn = nn.BatchNorm2d(8)  # one BN after two convs
                self.fc = nn.Linear(8, 5)
            def forward(self, x):
                return self.fc(self.bn(self.b(self.bn(self.a(x)))).mean((2, 3)))
        """,
    "linear_bn": """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3)
                self.fc, self.bn, self.out = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 5)
            def forward(self, x):
                return self.out(self.bn(self.fc(self.conv(x).mean((2, 3)))))
        """,
    "two_outputs": """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
                self.fc, self.aux = nn.Linear(8, 5), nn.Linear(8, 2)
            def forward(self, x):
                y = self.bn(self.conv(x)).mean((2, 3))
                return self.aux(y), self.fc(y)
        """,
}


def _write_model(tmp_path, body: str) -> None:
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n" + textwrap.dedent(body)
        + "\ndef make():\n    torch.manual_seed(0)\n    net = Net().eval()\n"
          "    for m in net.modules():\n"
          "        if isinstance(m, nn.modules.batchnorm._BatchNorm):\n"
          "            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2)\n"
          "    return net\n")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_correct_model_exports_in_deploy_form(name, tmp_path):
    _write_model(tmp_path, MODELS[name])
    extra = ["--output-index", "1"] if name == "two_outputs" else []
    proc = run_cli(["export", "net.py:make", "--input-size", "12", "--output", "out", *extra],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    check = manifest["export"]["deploy_check"]
    assert check["ok"] and check["bn_nodes"] == 0 and check["outputs"] == ["logits"]
    assert check["path"] == "net_make.onnx"  # the artifact, not the staging folder it was checked in
    assert manifest["recipe"]["num_classes"] == 5  # the output's width, not the 1000 default
    assert all(not row["breach"] for row in manifest["parity"])
    graph = onnx.load(str(tmp_path / "out" / "net_make.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 5  # the chosen logits
    if name == "linear_bn":
        assert ["fc", "bn"] in manifest["prepare"]["folded"]


def test_class_count_and_channels_are_the_models_own(tmp_path):
    """A user module's class count is read from its output; options that contradict the module
    are refused with the right fix, and --channels 1 never takes a slice of ImageNet's RGB stats."""
    _write_model(tmp_path, MODELS["linear_bn"])
    cases = [(["--num-classes", "12"], 4, "outputs 5 logits per sample, but its class count is 12",
              "pass --num-classes 5"),
             (["--channels", "1"], 2, "--channels 1 needs --mean and --std with 1 values each",
              "--mean 0.5 --std 0.25"),
             (["--channels", "1", "--mean", "0.5", "--std", "0.25"], 4, "to have 3 channels",
              "the model takes 3 input channel(s): pass --channels 3")]
    for extra, code, what, fix in cases:
        proc = run_cli(["export", "net.py:make", "--input-size", "12", "--output", "out", *extra],
                       cwd=tmp_path)
        assert proc.returncode == code, (extra, proc.stderr[-2000:])
        assert what in proc.stderr and fix in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()
