"""The TensorRT engine cache, decided without TensorRT or a GPU: file names per GPU architecture,
the reuse decision, optimization profiles checked against the ONNX, source digests that cover
external weights, and parity's engine row (skipped on CPU, flagged when its ONNX changed)."""
from __future__ import annotations

import json

import pytest

import exporter.backends.tensorrt as trt_backend


def _write_engine(directory, key, payload=b"plan-bytes"):
    import hashlib

    engine = trt_backend.engine_path_for(directory, "resnet18", "fp16", "9.0")
    engine.write_bytes(payload)
    manifest = {"cache_key": key, "engine_sha256": hashlib.sha256(payload).hexdigest(),
                "tensorrt_version": "10.15.1", "compute_capability": "9.0", "precision": "fp16"}
    (directory / (engine.name + ".json")).write_text(json.dumps(manifest))
    return engine


def test_engine_file_is_per_gpu_architecture(tmp_path):
    assert trt_backend.engine_path_for(tmp_path, "resnet18", "int8", "8.6").name == \
        "resnet18.int8.sm86.engine"


def test_matching_engine_is_reused_anything_else_rebuilt(tmp_path):
    engine = _write_engine(tmp_path, "k1")
    reused = trt_backend.reusable_engine(engine, "k1")
    assert reused is not None and reused["cached"] is True
    assert trt_backend.reusable_engine(engine, "k2") is None  # other ONNX/TensorRT/GPU/profile
    engine.write_bytes(b"plan-bytes, truncated or overwritten")
    assert trt_backend.reusable_engine(engine, "k1") is None  # bytes differ from the manifest
    engine.unlink()
    assert trt_backend.reusable_engine(engine, "k1") is None
    assert trt_backend.reusable_engine(tmp_path / "none.engine", "k1") is None


def _onnx_with_input(path, dims, external=False):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


@pytest.mark.parametrize("dims,batches,error,text", [
    (["N", 3, 8, 8], (1, 4, 8), None, None),
    (["N", 3, 8, 8], (2, 1, 8), "UsageError", "1 <= min <= opt <= max"),
    (["N", 3, 16, 16], (1, 4, 8), "InputSpecError", "the input spec says [N, 3, 8, 8]"),
    ([4, 3, 8, 8], (1, 4, 8), "UsageError", "fixed batch of 4"),
    ([4, 3, 8, 8], (4, 4, 4), None, None),
])
def test_engine_profile_is_checked_against_the_onnx(tmp_path, dims, batches, error, text):
    from exporter import errors
    from exporter.recipes import InputSpec

    path = _onnx_with_input(tmp_path / "m.onnx", dims)
    spec = InputSpec(size=(8, 8))
    if error is None:
        profile = trt_backend.engine_profile(path, spec, batches)
        assert profile == {"input": "input", "min": [batches[0], 3, 8, 8],
                           "opt": [batches[1], 3, 8, 8], "max": [batches[2], 3, 8, 8]}
    else:
        with pytest.raises(getattr(errors, error), match=text.replace("[", r"\[").replace("]", r"\]")):
            trt_backend.engine_profile(path, spec, batches)


def test_source_digest_covers_external_weights(tmp_path):
    path = _onnx_with_input(tmp_path / "m.onnx", ["N", 3, 8, 8], external=True)
    data = tmp_path / "m.onnx.data"
    assert data.is_file()
    before = trt_backend.source_digest(path)
    data.write_bytes(bytes(reversed(data.read_bytes())))  # same graph file, other weights
    assert trt_backend.source_digest(path) != before



def test_parity_on_cpu_lists_the_engine_skipped_and_flags_a_stale_one(tmp_path):
    """An engine recorded in the manifest is a parity row: skipped on CPU with the reason, and
    flagged when the ONNX it was built from has been re-exported since."""
    from exporter.artifacts import read_manifest, write_json_atomic
    from exporter.parity import build_inputs, run_parity
    from exporter.pipeline import ExportRequest, export

    result = export(ExportRequest(model="lenet5", output=tmp_path, verify=False))
    engine = trt_backend.engine_path_for(tmp_path, "lenet5", "fp32", "9.0")
    engine.write_bytes(b"a serialized plan")
    manifest = read_manifest(tmp_path)

    def with_engine(source_sha):
        details = {"precision": "fp32", "source_onnx": "lenet5.onnx", "source_onnx_sha256": source_sha,
                   "tensorrt_version": "10.15.1", "compute_capability": "9.0"}
        entry = {"file": engine.name, "format": "tensorrt", "precision": "fp32", "details": details}
        write_json_atomic(tmp_path / "manifest.json", {**manifest,
                                                       "artifacts": manifest["artifacts"] + [entry]})
        report = run_parity(tmp_path, result.reference, result.spec, result.recipe,
                            build_inputs(result.spec, samples=2, random=2), "cpu", latency=False)
        (row,) = [a for a in report.artifacts if a.format == "tensorrt"]
        assert row.status == "skipped" and "run on a CUDA device" in row.error and report.ok
        return row.notes

    assert not any("earlier" in n for n in with_engine(trt_backend.source_digest(tmp_path / "lenet5.onnx")))
    stale = [n for n in with_engine("0" * 64) if "earlier lenet5.onnx" in n]
    assert stale and "exporter build --onnx" in stale[0] and "--precision fp32" in stale[0]
