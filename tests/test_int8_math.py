"""The INT8 math against brute-force references: threshold search, per-channel weight quantization,
bias correction, the Wilson interval, and the sampling that feeds them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from exporter.quantize import budget as bud
from exporter.quantize import judging
from exporter.quantize import calibration as cal
from exporter.quantize.thresholds import compute_ranges
from exporter.quantize import thresholds
from exporter.quantize import int8 as q8
from exporter.quantize.bias import bias_correction
from exporter.quantize.placement import plan as make_plan
from exporter.image_folder import scan_images
from exporter.quantize.samples import Scratch, split_sizes
from exporter.recipes import get_recipe

SPEC = get_recipe("mobilenet_v2").input.with_size(32)


def _fake_quant(x: np.ndarray, amax: float) -> np.ndarray:
    step = amax / 127.0
    return np.clip(np.round(x / step), -127, 127) * step


@pytest.mark.parametrize("dist", ["gauss", "laplace", "relu"])
def test_mse_threshold_matches_brute_force(dist):
    rng = np.random.default_rng(0)
    x = {"gauss": rng.standard_normal(200_000), "laplace": rng.laplace(size=200_000),
         "relu": np.maximum(rng.standard_normal(200_000), 0)}[dist].astype(np.float32)
    top = float(np.abs(x).max())
    width = top / thresholds.BINS
    idx = np.minimum((np.abs(x) / width).astype(np.int64), thresholds.BINS - 1)
    hist = np.bincount(idx[x != 0], minlength=thresholds.BINS).astype(np.float64)
    chosen = thresholds.mse_threshold(hist, width)
    grid = np.linspace(top / 256, top, 256)
    errors = [float(np.mean((x - _fake_quant(x, a)) ** 2)) for a in grid]
    best = grid[int(np.argmin(errors))]
    # the histogram estimate lands where the true error is within 2% of the brute-force optimum
    assert float(np.mean((x - _fake_quant(x, chosen)) ** 2)) <= 1.02 * min(errors), (chosen, best)
    assert chosen < top  # clipping the tail pays off for every one of these distributions


def test_unsigned_high_matches_brute_force_and_clips_less_than_amax():
    """A never-negative tensor's ``high`` is chosen for the quantizer that spends all its levels on
    [0, high] (uint8 on ``cpu``, zero-centred int8 on ``tensorrt``), ``amax`` for symmetric int8."""
    x = np.maximum(np.random.default_rng(3).laplace(size=200_000), 0).astype(np.float32)
    top = float(x.max())
    width = top / thresholds.BINS
    idx = np.minimum((x / width).astype(np.int64), thresholds.BINS - 1)
    pos = np.bincount(idx[x != 0], minlength=thresholds.BINS).astype(np.float64)
    stats = {"tensors": {"r": {"min": 0.0, "max": top, "pos": thresholds.sparse_hist(pos),
                               "neg": thresholds.sparse_hist(np.zeros(thresholds.BINS))}}}
    low, high, amax = compute_ranges(stats, "mse")["r"]

    def centred(v, a):  # [0, a] in 254 steps: zero-centred int8 (-127..127 around a / 2)
        step = a / thresholds.UNSIGNED_STEPS
        return np.clip(np.round(v / step), 0, thresholds.UNSIGNED_STEPS) * step

    grid = np.linspace(top / 256, top, 256)
    errors = [float(np.mean((x - centred(x, a)) ** 2)) for a in grid]
    assert low == 0.0 and amax == pytest.approx(thresholds.mse_threshold(pos, width), rel=1e-9)
    assert float(np.mean((x - centred(x, high)) ** 2)) <= 1.02 * min(errors), (high, grid[np.argmin(errors)])
    # twice the steps: the optimum clips less, and the symmetric amax would cost this quantizer more
    assert 1.05 * amax < high < top
    assert float(np.mean((x - centred(x, amax)) ** 2)) > 1.05 * min(errors)


def test_percentile_and_minmax_thresholds():
    x = np.concatenate([np.linspace(0, 1, 99_990), np.full(10, 50.0)]).astype(np.float32)
    width = 50.0 / thresholds.BINS
    idx = np.minimum((x / width).astype(np.int64), thresholds.BINS - 1)
    hist = np.bincount(idx, minlength=thresholds.BINS).astype(np.float64)
    assert thresholds.percentile_threshold(hist, 99.99, width) == pytest.approx(1.0, abs=2 * width)
    assert thresholds.percentile_threshold(hist, 100.0, width) == pytest.approx(50.0, abs=width)


def test_per_channel_weight_quantization_brute_force():
    w = np.random.default_rng(1).standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[2] *= 50  # channels with very different ranges
    w[4] = 0.0  # an all-zero channel must not divide by zero
    q, scale = q8.quantize_weight(w, axis=0)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    for c in range(6):
        amax = np.abs(w[c]).max()
        if amax == 0:
            assert scale[c] == 1.0 and not q[c].any()
            continue
        assert scale[c] == pytest.approx(amax / 127.0)
        # nearest rounding: no other integer grid point is closer to any weight
        err = np.abs(w[c] - q[c] * scale[c])
        assert err.max() <= scale[c] / 2 + 1e-6
        assert np.abs(q[c]).max() == 127  # the largest weight uses the full range


def _conv_model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", w.shape[1], 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["input", "w", "b"], ["logits"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([conv], "g", [x], [y], [numpy_helper.from_array(w, "w"),
                                                       numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_bias_correction_matches_numpy_reference():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((4, 3, 3, 3)) * [[[[1]]], [[[3]]], [[[0.1]]], [[[7]]]]).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    model = _conv_model(w, b)
    x = (rng.standard_normal((20, 3, 8, 8)) + 0.5).astype(np.float32)
    plan = make_plan(model, "tensorrt")
    amax = float(np.abs(x).max())
    ranges = {"input": (float(x.min()), float(x.max()), amax)}
    delta = bias_correction(model, plan, ranges, x)["conv"]
    # reference: mean over N, H, W of conv(x, w) - conv(fq(x), q(w)), computed with torch
    import torch
    import torch.nn.functional as F

    q, scale = q8.quantize_weight(w, 0)
    wq = q.astype(np.float32) * scale[:, None, None, None]
    xq = _fake_quant(x, amax)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1)
    sh = F.conv2d(torch.from_numpy(xq.astype(np.float32)), torch.from_numpy(wq), torch.from_numpy(b), padding=1)
    expected = (ref - sh).double().mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(delta, expected, rtol=1e-3, atol=1e-5)
    # and it works: the corrected int8 conv has (near) zero mean output error per channel
    corrected = q8.build_qdq(model, plan, ranges, {"conv": delta})
    out = q8.run(corrected, x)
    assert np.abs((ref.numpy() - out).mean(axis=(0, 2, 3))).max() < 1e-4


@pytest.mark.parametrize("k,n,lo,hi", [(190, 200, 0.9104, 0.9726), (200, 200, 0.9812, 1.0),
                                       (0, 10, 0.0, 0.2775), (50, 100, 0.4038, 0.5962)])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = judging.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-4)


def test_group_sizes_grow_and_end_at_the_limit():
    assert bud.group_sizes(13) == [1, 2, 3, 4, 5, 7, 9, 12, 13]
    assert bud.group_sizes(1) == [1] and bud.group_sizes(0) == []


def test_largest_prefix_stops_at_the_conv_cap():
    """The budget's last group is the cap itself: Gemm layers do not count against it."""
    nodes = [helper.make_node(op, [], [], name=name)
             for op, name in [("Conv", "a"), ("Conv", "b"), ("Gemm", "fc"), ("Conv", "c"), ("Conv", "d")]]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    ranked = ["b", "fc", "c", "d"]
    assert bud._largest_prefix(model, [], ranked, 2) == 3  # b, fc, c: 2 convs
    assert bud._largest_prefix(model, ["a"], ranked, 2) == 2  # a is out already: b, fc
    assert bud._largest_prefix(model, [], ranked, 0) == 0
    assert bud._largest_prefix(model, [], ranked, 9) == 4


@pytest.mark.parametrize("kind,threshold,points_to_labels", [("agreement", 0.95, True),
                                                              ("accuracy_drop", 1.0, False)])
def test_refusal_names_its_numbers_and_the_levers(kind, threshold, points_to_labels):
    """The refused budget says the cap, the best reached, and the way out; an agreement budget
    also points to labelled judging images (agreement on near-ties is what usually fails)."""
    metrics = {"top1_agreement": 0.925, "top1_agreement_ci95": (0.88, 0.954), "samples": 200}
    err = bud.refusal(judging.Criterion(kind, threshold), judging.Measurement(metrics, False), 11, 13, 52, 0.25)
    assert "at most 13 of the 52 convs" in err.message and "best (11 layer(s) out)" in err.message
    assert "0.925 (95% CI 0.880-0.954, n=200)" in err.message
    assert "--max-kept-fraction 0.5" in err.fix
    assert ("--eval-images DIR with class subfolders" in err.fix) == points_to_labels
    assert ("--min-agreement" in err.fix) == (kind == "agreement")
    # the cap counts convs; a kept classifier Gemm makes the layer count differ, and it says so
    err = bud.refusal(judging.Criterion(kind, threshold), judging.Measurement(metrics, False), 14, 13, 52,
                      0.25, best_convs=13)
    assert "at most 13 of the 52 convs" in err.message
    assert "best (14 layer(s) out, 13 of them convs)" in err.message


def _folder(root, classes: dict[str, int]) -> None:
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((40, 40, 3), (i * 7) % 255, np.uint8)).save(root / cls / f"{i:03d}.png")


@pytest.mark.parametrize("kind,threshold,n,warns", [
    ("agreement", 0.95, 19, True), ("agreement", 0.95, 20, False), ("agreement", 0.99, 99, True),
    ("agreement", 1.0, 3, False), ("accuracy_drop", 1.0, 99, True), ("accuracy_drop", 1.0, 100, False),
    ("accuracy_drop", 5.0, 19, True), ("accuracy_drop", 0.0, 10, False)])
def test_coarse_warning_when_one_prediction_exceeds_the_margin(kind, threshold, n, warns):
    text = judging.Criterion(kind, threshold).coarse_warning(n)
    assert bool(text) == warns, text
    if warns:
        assert f"only {n} sample(s)" in text and f"{100 / n:.1f} points" in text
        assert "(--eval-samples N, or --eval-images DIR)" in text
        exhausted = judging.Criterion(kind, threshold, source_exhausted=True).coarse_warning(n)
        assert "its source holds no more" in exhausted and "--eval-samples" not in exhausted


@pytest.mark.parametrize("kind,fp32_top1,guess,warns", [
    ("accuracy_drop", 0.0, 0.001, True), ("accuracy_drop", 0.125, 0.125, True),
    ("accuracy_drop", 0.13, 0.125, False), ("accuracy_drop", 0.72, 0.001, False),
    ("agreement", 0.0, 0.5, False)])
def test_labelled_budget_warns_when_fp32_is_no_better_than_a_constant_guess(kind, fp32_top1, guess,
                                                                            warns):
    """Random weights or misnamed class folders: FP32 at 0.000 and INT8 at 0.000 'met' a 1-point
    drop, said as if it meant something."""
    metrics = {"samples": 400, "fp32_top1": fp32_top1, "int8_top1": fp32_top1,
               "accuracy_drop_points": 0.0, "most_common_label_share": guess}
    text = judging.Criterion(kind, 1.0 if kind == "accuracy_drop" else 0.95).warning(metrics)
    assert (f"FP32 itself reaches only top-1 accuracy {fp32_top1:.3f} on the 400 labelled" in text) == warns
    assert (f"most common class ({guess:.3f})" in text) == warns
    assert ("--min-agreement 0.95" in text) == warns and "only 400 sample(s)" not in text


def test_measure_records_the_most_common_label_share():
    ref = np.eye(4)[[0, 1, 2, 3, 0]] * 5.0
    m = judging.measure(ref, ref, np.array([1, 1, 1, 2, 0]), judging.Criterion("accuracy_drop", 1.0))
    assert m.metrics["most_common_label_share"] == pytest.approx(0.6)
    assert m.metrics["fp32_top1"] == pytest.approx(0.4) and m.ok


def test_check_labels_refuses_classes_beyond_the_outputs_only():
    judging.check_labels(None, 10, "x")  # no labels: agreement, nothing to check
    judging.check_labels(np.array([0, 9, 3]), 10, "x")
    judging.check_labels(np.array([0, 12]), 0, "x")  # class count not static: not checked here
    with pytest.raises(cal.CalibrationError, match=r"subfolder\(s\) 10, 12, classes the model") as err:
        judging.check_labels(np.array([0, 12, 10, 12]), 10, "held")
    assert "(0..9)" in err.value.fix


def test_shared_samples_finds_identical_rows_by_content():
    from exporter.quantize.samples import SampleSet, drop_calibration_copies, require_disjoint, shared_samples

    rng = np.random.default_rng(0)
    cal_arr = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    calib = SampleSet(cal_arr, "folder", "folder", 10, paths=[f"c{i}.png" for i in range(10)])
    judged = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    assert shared_samples(calib, judged) == []
    require_disjoint(calib, judged, None)  # disjoint: no error
    judged[2], judged[5] = cal_arr[7], cal_arr[0]
    near = judged.copy()
    names = [f"j{i}.png" for i in range(6)]
    assert shared_samples(calib, judged, names) == [("j2.png", "c7.png"), ("j5.png", "c0.png")]
    near[2] += 1e-6
    near[5] += 1e-6  # one float step away is another image
    assert shared_samples(calib, near) == []
    with pytest.raises(cal.CalibrationError, match="2 of the 6 sample") as err:
        require_disjoint(calib, judged, names)
    assert "'j2.png' = 'c7.png'" in err.value.message and "leave --eval-images out" in err.value.fix
    # a split's held-out copies of calibration files are left out, labels and names with them
    held = SampleSet(judged.copy(), "folder", "folder", 6, labels=np.arange(6), paths=names)
    assert drop_calibration_copies(calib, held) == 2
    assert held.paths == ["j0.png", "j1.png", "j3.png", "j4.png"] and list(held.labels) == [0, 1, 3, 4]
    assert np.array_equal(held.array, judged[[0, 1, 3, 4]])
    assert drop_calibration_copies(calib, held) == 0
    copies = SampleSet(cal_arr[:3].copy(), "folder", "folder", 3, paths=["a", "b", "c"])
    with pytest.raises(cal.CalibrationError, match="every one of the 3 held-out"):
        drop_calibration_copies(calib, copies)


def test_sampling_is_class_balanced_seeded_and_disjoint(tmp_path):
    _folder(tmp_path, {f"{c}": 10 for c in range(20)})  # 20 classes x 10 images, sorted order
    cal_set, held = cal.load_split(tmp_path, SPEC, samples=40, holdout=60, seed=0)
    counts = np.bincount(cal_set.labels, minlength=20)
    assert counts.min() == counts.max() == 2  # the first-N-files bug took 4 classes
    assert held is not None and len(held) == 60
    assert not set(cal_set.paths) & set(held.paths)
    assert np.bincount(held.labels, minlength=20).min() == 3
    again, _ = cal.load_split(tmp_path, SPEC, samples=40, holdout=60, seed=0)
    other, _ = cal.load_split(tmp_path, SPEC, samples=40, holdout=60, seed=1)
    assert again.paths == cal_set.paths and again.sha256 == cal_set.sha256
    assert other.paths != cal_set.paths


def test_split_keeps_a_quarter_for_judging():
    assert split_sizes(1000, 256, 200) == (256, 200)
    assert split_sizes(300, 256, 200) == (225, 75)  # small folder: a quarter is held out
    assert split_sizes(300, 256, 0) == (256, 0)


def test_balanced_order_without_classes(tmp_path):
    for i in range(5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    scan = scan_images(tmp_path)
    order = scan.balanced(seed=3)
    assert not scan.labelled and scan.class_names == [] and scan.unlabelled == ""
    assert sorted(order) == sorted(tmp_path.glob("*.png")) and order != sorted(order)


def test_samples_live_on_disk_not_in_memory(tmp_path):
    scratch = Scratch()
    try:
        cal_set, held = cal.load_split("packaged", SPEC, samples=20, holdout=10, scratch=scratch)
        assert isinstance(cal_set.array, np.memmap) and isinstance(held.array, np.memmap)
        assert len(cal_set) == 20 and len(held) == 10
        photo = lambda path: path.split("[")[0]  # noqa: E731
        cal_photos, held_photos = {photo(p) for p in cal_set.paths}, {photo(p) for p in held.paths}
        assert not cal_photos & held_photos  # other photos judge, never other crops of the same
        assert len(held_photos) == 3 and len(cal_photos) >= 5, (cal_photos, held_photos)
        assert all(p in held.source for p in held_photos) and "never saw" in held.source
        assert sum(len(b) for b in cal_set.batches(8)) == 20
    finally:
        scratch.close()
    assert not scratch.path.exists()


def test_packaged_sets_name_only_the_photos_their_crops_came_from():
    """One calibration sample was described as crops of all six calibration photos."""
    one, held = cal.load_split("packaged", SPEC, samples=1, holdout=200)
    drawn = one.paths[0].split("[")[0]
    assert one.source.endswith(f"crops of {drawn})"), one.source
    held_photos = sorted({p.split("[")[0] for p in held.paths})
    assert len(held_photos) == 3 and all(p in held.source for p in held_photos)
    assert drawn not in held.source


def test_split_photos_is_seeded_disjoint_and_keeps_identical_photos_together():
    from exporter.data import photo_groups, split_photos
    from exporter.errors import CalibrationError

    img = lambda v: Image.fromarray(np.full((4, 4, 3), v, np.uint8))  # noqa: E731
    groups = photo_groups([(f"p{i}", img(i)) for i in range(8)] + [("p0 again", img(0))])
    assert len(groups) == 8 and ["p0", "p0 again"] in groups  # the same pixels are one photo
    cal_a, judge_a = split_photos(groups, seed=0)
    assert split_photos(groups, seed=0) == (cal_a, judge_a)  # deterministic
    assert not set(cal_a) & set(judge_a) and len(cal_a) + len(judge_a) == 9
    assert ("p0" in judge_a) == ("p0 again" in judge_a)
    assert len([g for g in groups if g[0] in judge_a]) == 3  # a third of 8, rounded
    assert any(split_photos(groups, seed=s)[1] != judge_a for s in range(1, 5))  # the seed matters
    assert split_photos([["a"], ["b"]], seed=0)[1] in (["a"], ["b"])
    with pytest.raises(CalibrationError, match="cannot split 1 distinct packaged photo"):
        split_photos([["a", "a copy"]], seed=0)


def test_coverage_gaps_name_the_tensors_judged_data_drive_past_the_calibration():
    """The budget's refusal names quantized activations the judging samples drive past 1.5x the
    calibration's largest |value| (brute force: every tensor's maxima from a full run)."""
    from exporter.data import packaged_crops
    from exporter.quantize.placement import ensure_node_names
    from quant_helpers import fp32_onnx

    path, spec = fp32_onnx(get_recipe("lenet5"), size=32)
    model = onnx.load(str(path))
    ensure_node_names(model)
    x = packaged_crops(spec, 24, seed=0).array
    x_cal = 0.3 * x  # dimmer calibration data: every range reached on x is larger
    tensors = list(make_plan(model, "tensorrt").edges)
    ranges = compute_ranges(cal.collect_statistics(model, x_cal), "mse")
    full = {part: q8.run(model, data, extra=tensors) for part, data in (("cal", x_cal), ("eval", x))}
    brute = {part: {t: float(np.abs(v[t]).max()) for t in tensors} for part, v in full.items()}
    gaps, sentence = bud.coverage_gaps(model, ranges, tensors, x_cal, x)
    expected = {t for t in tensors if brute["eval"][t] > bud.COVERAGE_FACTOR * brute["cal"][t]}
    assert expected and {g["tensor"] for g in gaps} == expected
    for g in gaps:  # the streamed maxima are the full run's
        assert g["calibration_max"] == pytest.approx(brute["cal"][g["tensor"]], rel=1e-6)
        assert g["judged_max"] == pytest.approx(brute["eval"][g["tensor"]], rel=1e-6)
    ratios = [g["judged_max"] / g["calibration_max"] for g in gaps]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1.5
    assert gaps[0]["calibrated_amax"] == pytest.approx(ranges[gaps[0]["tensor"]][2])
    assert f"drive {len(gaps)} of the {len(tensors)} quantized activation(s)" in sentence
    assert gaps[0]["tensor"] in sentence
    assert bud.coverage_gaps(model, ranges, tensors, x, x) == ([], "")  # judged like calibrated


@pytest.mark.parametrize("coverage", ["", "the judging samples drive 3 of the 9 quantized activation(s) past"])
def test_refusal_puts_the_data_first_when_the_judged_data_leave_the_calibrated_range(coverage):
    criterion = judging.Criterion("agreement", 0.95)
    best = judging.measure(np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5], np.eye(4, dtype=np.float32)[[0, 1, 2, 0] * 5],
                       None, criterion)
    err = bud.refusal(criterion, best, 3, 2, 10, 0.25, coverage=coverage)
    assert "top-1 agreement 0.750" in err.message and err.message.endswith(f"; {coverage}" if coverage else "n=20)")
    assert err.fix.startswith("calibrate with data like the judging data") == bool(coverage)
    assert ("closer-to-deployment" in err.fix) != bool(coverage)  # named once, first when it is the cause


def test_both_budgets_are_refused_in_the_same_words_by_the_request_check_and_the_quantizer():
    from exporter.validate import quant_problems

    (what, fix, kind), = [p for p in quant_problems({"max_accuracy_drop": 2.0, "min_agreement": 0.9})]
    with pytest.raises(kind) as err:
        judging.Criterion.make(np.array([0, 1]), 2.0, 0.9)
    assert str(err.value).startswith(what) and err.value.fix == fix
    assert what.startswith("--max-accuracy-drop 2 and --min-agreement 0.9 are two budgets")


@pytest.mark.parametrize("threshold, shown", [(0.95, "0.950"), (0.5, "0.500"), (0.9999, "0.9999"),
                                              (0.12345, "0.12345"), (1.0, "1.000")])
def test_agreement_budget_is_shown_with_the_digits_it_was_given(threshold, shown):
    assert judging.Criterion("agreement", threshold).describe() == f"top-1 agreement with FP32 >= {shown}"


def test_copies_note_counts_in_words():
    from exporter.quantize.samples import copies_note

    assert copies_note(0) == "" and copies_note(1) == "1 copy of calibration images left out"
    assert copies_note(5) == "5 copies of calibration images left out"
