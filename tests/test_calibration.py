"""Calibration data: bad input is a clear error or a reported conversion; the cache is reused/invalidated."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.data import preprocess
from exporter.errors import CalibrationError, PrecisionError, UsageError
from exporter.quantize import quantize_stage
from exporter.quantize.calibration import load_calibration_data
from exporter.quantize.thresholds import compute_ranges
from exporter.recipes import get_recipe
from exporter.pipeline import ExportRequest
from exporter.validate import check_model_options, packaged_seed

from quant_helpers import fp32_onnx

RECIPE = get_recipe("mobilenet_v2")
SPEC = RECIPE.input.with_size(64)


def _images(folder: Path, count: int, mode: str = "RGB", start: int = 0, size: int = 72) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        arr = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
        img.save(folder / f"img_{i:03d}.png")


def test_missing_calibration_is_a_clear_error():
    with pytest.raises(CalibrationError, match="needs calibration data") as err:
        load_calibration_data(None, SPEC)
    assert "calibration/README.md" in str(err.value)


@pytest.mark.parametrize("text", ["packaged:-1", "packaged:1.5", "packaged:", "packaged:one", "packaged:²"])
def test_packaged_seed_the_cli_refuses_is_refused_by_the_api_too(text):
    with pytest.raises(CalibrationError, match="non-negative integer"):
        load_calibration_data(text, SPEC, samples=4)
    with pytest.raises(UsageError, match="non-negative integer"):
        check_model_options(ExportRequest("lenet5", precision="int8", quant={"calibration": text}))


def test_packaged_seed_picks_the_crops():
    one, same, other = (load_calibration_data(t, SPEC, samples=4).array
                        for t in ("packaged:3", "packaged:3", "packaged:4"))
    assert np.array_equal(one, same) and np.abs(one - other).mean() > 0.05
    assert packaged_seed("packaged", 7) == 7 and packaged_seed("packaged:12", 7) == 12
    assert packaged_seed("packaged_photos", 7) is None and packaged_seed("/data/cal", 7) is None


def test_empty_folder(tmp_path):
    with pytest.raises(CalibrationError, match="no usable images"):
        load_calibration_data(tmp_path, SPEC, samples=8)


def test_missing_path_and_wrong_kind(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration_data(tmp_path / "nope", SPEC)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CalibrationError, match="neither a folder nor an .npy"):
        load_calibration_data(tmp_path / "a.txt", SPEC)


def test_unreadable_files_skipped_and_counted(tmp_path):
    _images(tmp_path, 16)
    (tmp_path / "a_notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    data = load_calibration_data(tmp_path, SPEC, samples=18)  # more than there are: every file read
    assert len(data) == 16 and len(data.skipped) == 2
    reasons = dict(data.skipped)
    assert "not an image" in reasons[str(tmp_path / "a_notes.txt")]
    assert "unreadable" in reasons[str(tmp_path / "broken.jpg")]
    assert data.summary()["skipped"] == 2


def test_too_few_usable_images_after_skipping(tmp_path):
    _images(tmp_path, 3)
    for i in range(5):
        (tmp_path / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match=r"only 3 usable .*5 file\(s\) skipped.*need at least 16"):
        load_calibration_data(tmp_path, SPEC, samples=64)


def test_fewer_samples_than_fixed_batch(tmp_path):
    _images(tmp_path, 5)
    with pytest.raises(CalibrationError, match="fewer than the model's fixed batch 8"):
        load_calibration_data(tmp_path, SPEC, samples=5, batch=8)
    data = load_calibration_data(tmp_path, SPEC, samples=5, batch=2)
    assert len(data) == 4 and data.dropped == 1  # partial batch dropped and reported


def test_grayscale_and_rgba_converted_and_reported(tmp_path):
    _images(tmp_path, 2, "L", start=0)
    _images(tmp_path, 2, "RGBA", start=2)
    _images(tmp_path, 2, "RGB", start=4)
    data = load_calibration_data(tmp_path, SPEC, samples=6)
    assert data.conversions == {"L->RGB": 2, "RGBA->RGB (alpha on white)": 2}
    # the conversion is the recipe's one: identical to exporter.data.preprocess on the same file
    first = Path(data.paths[0])
    with Image.open(first) as img:
        np.testing.assert_array_equal(data.array[0], preprocess(img, SPEC))


def _save(path, arr):
    np.save(path, arr)
    return path


def test_npy_checked_against_the_spec(tmp_path):
    good = np.random.default_rng(0).uniform(-1.5, 1.5, (20, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    data = load_calibration_data(tmp_path / "good.npy", SPEC, samples=16)
    assert len(data) == 16 and data.kind == "npy"
    np.save(tmp_path / "nhwc.npy", good.transpose(0, 2, 3, 1))
    with pytest.raises(CalibrationError, match="NHWC"):
        load_calibration_data(tmp_path / "nhwc.npy", SPEC)
    np.save(tmp_path / "raw.npy", (np.abs(good) * 100).astype(np.float32))
    with pytest.raises(CalibrationError, match="raw pixels"):
        load_calibration_data(tmp_path / "raw.npy", SPEC)
    np.save(tmp_path / "ints.npy", np.zeros((20, 3, 64, 64), np.uint8))
    with pytest.raises(CalibrationError, match="not preprocessed float"):
        load_calibration_data(tmp_path / "ints.npy", SPEC)
    (tmp_path / "junk.npy").write_bytes(bytes(range(256)) * 4)  # numpy would blame pickling
    with pytest.raises(CalibrationError, match="is not a .npy file"):
        load_calibration_data(tmp_path / "junk.npy", SPEC)
    # ToTensor without Normalize (0..1), and another normalization (values beyond black..white)
    np.save(tmp_path / "unit.npy", (good + 1.5) / 3)
    with pytest.raises(CalibrationError, match=r"in 0\.00\.\.1\.00, scaled to 0\.\.1 but not normalized"):
        load_calibration_data(tmp_path / "unit.npy", SPEC)
    np.save(tmp_path / "wide.npy", good * 3)
    with pytest.raises(CalibrationError, match=r"-4\.50\.\.4\.50, outside .* -2\.12\.\.2\.64"):
        load_calibration_data(tmp_path / "wide.npy", SPEC)
    # the recipe's own preprocessing of black and white images passes
    edges = np.stack([preprocess(Image.new("RGB", (64, 64), c), SPEC) for c in ("black", "white")] * 8)
    assert len(load_calibration_data(_save(tmp_path / "edges.npy", edges), SPEC, samples=16)) == 16


def test_methods_give_ordered_ranges(tmp_path):
    path, spec = fp32_onnx(RECIPE, size=64)
    import onnx

    from exporter.quantize.calibration import collect_statistics

    stats = collect_statistics(onnx.load(str(path)), load_calibration_data("packaged", spec, 8).array)
    ranges = {m: compute_ranges(stats, m) for m in ("minmax", "percentile", "entropy")}
    for name, (lo, hi, amax) in ranges["minmax"].items():
        assert ranges["percentile"][name][2] <= amax + 1e-6
        assert ranges["entropy"][name][2] <= amax + 1e-6
    with pytest.raises(CalibrationError):
        compute_ranges(stats, "kmeans")


def test_cache_reused_and_invalidated(tmp_path):
    path, spec = fp32_onnx(RECIPE, size=64)
    out = tmp_path / "art"
    common = dict(calibration="packaged:0", samples=8, budget=False)

    def export(p=path, s=spec, **kw):
        entry = quantize_stage(p, out, RECIPE, s, "int8", **{**common, **kw})
        return entry, entry["details"]["calibration_cache"]

    e1, c1 = export()
    assert not c1["hit"] and c1["reason"] == "no cache"
    assert (out / "mobilenet_v2.int8.calib.json").is_file()
    e2, c2 = export()
    assert c2["hit"] and e2["sha256"] == e1["sha256"]  # same ranges -> same artifact
    _, c3 = export(method="minmax")
    assert not c3["hit"] and "method" in c3["reason"]
    _, c4 = export(samples=9, method="minmax")
    assert not c4["hit"] and c4["reason"] == "changed: data"
    _, c5 = export(s=spec.with_size(64).__class__(**{**spec.__dict__, "resize": 80}))
    assert not c5["hit"] and "preprocessing" in c5["reason"]
    other, _ = fp32_onnx(get_recipe("mobilenet_v2"), size=64, directory=tmp_path / "other")
    import onnx

    m = onnx.load(str(other))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))  # different model
    onnx.save(m, str(other))
    _, c6 = export(p=other)
    assert not c6["hit"] and "model" in c6["reason"]
    cached = json.loads((out / "mobilenet_v2.int8.calib.json").read_text())
    assert set(cached["components"]) == {"model", "preprocessing", "data", "method"}


def test_failed_export_leaves_no_artifact(tmp_path):
    path, spec = fp32_onnx(RECIPE, size=64)
    out = tmp_path / "art"
    with pytest.raises(PrecisionError):
        quantize_stage(path, out, RECIPE, spec, "int8", calibration="packaged:0", samples=8,
                       min_agreement=1.01, max_kept_fraction=0.0)
    assert not out.exists() or not [p for p in out.iterdir()]


def test_make_default_set_materializes_a_usable_folder(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "calibration"))
    from make_default_set import make_default_set

    files = make_default_set(tmp_path / "set", count=4, seed=0, size=96)
    assert len(files) == 4 and all(f.stat().st_size < 60_000 for f in files)
    data = load_calibration_data(tmp_path / "set", SPEC, samples=4)
    assert len(data) == 4 and not data.skipped  # the hidden provenance file is not counted
