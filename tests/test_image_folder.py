"""Image folders as calibration, the INT8 budget and parity all read them (exporter.image_folder):
which files count, which class each is (its folder's name, never its position), the read order,
and a split sized on the images that could be read. The CLI cases run as users run them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.data import load_image_folder
from exporter.errors import CalibrationError
from exporter.image_folder import scan_images
from exporter.quantize.calibration import load_split
from exporter.recipes import get_recipe

EXPORTER = [sys.executable, "-m", "exporter"]


def _images(folder: Path, count: int, seed: int, size: int = 36) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        paths.append(folder / f"{seed}-{i}.png")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_labels_are_the_folder_names_not_their_positions(tmp_path):
    for name, seed in (("2", 0), ("10", 1), ("0007", 2)):
        _images(tmp_path / name, 3, seed)
    scan = scan_images(tmp_path)
    assert scan.labelled and scan.class_names == ["2", "0007", "10"]  # by index, not by string
    assert sorted({scan.label(p) for p in scan.files}) == [2, 7, 10]
    batch = load_image_folder(tmp_path, get_recipe("lenet5").input)
    assert sorted(batch.labels.tolist()) == [2, 2, 2, 7, 7, 7, 10, 10, 10]
    by_file = {Path(p).parent.name: int(lab) for p, lab in zip(batch.paths, batch.labels)}
    assert by_file == {"2": 2, "10": 10, "0007": 7}


def test_stray_files_hidden_and_empty_folders_do_not_turn_labels_off(tmp_path):
    _images(tmp_path / "0", 2, 0)
    _images(tmp_path / "1", 2, 1)
    _images(tmp_path / ".thumbs", 1, 2)  # hidden: left out, not a class, no crash
    _images(tmp_path / "__MACOSX" / "0", 1, 3)
    (tmp_path / "misc").mkdir()  # empty: not a class
    (tmp_path / "README.txt").write_text("labels: folder = class index\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    scan = scan_images(tmp_path)
    assert scan.labelled and scan.class_names == ["0", "1"] and len(scan.files) == 4
    assert [Path(p).name for p, _ in scan.skipped] == ["README.txt"]


@pytest.mark.parametrize("layout, reason", [
    ({"cat": 2, "dog": 2}, "subfolder(s) 'cat', 'dog'"),
    ({"0": 2, "²": 2}, "subfolder(s) '²'"),  # str.isdigit() admits it, int() does not
    ({"0": 2, "1": 2, "": 2}, "2 image(s) lie directly in"),
])
def test_folders_that_are_not_class_indices_give_no_labels_and_say_why(tmp_path, layout, reason):
    for seed, (name, count) in enumerate(layout.items()):
        _images(tmp_path / name if name else tmp_path, count, seed)
    scan = scan_images(tmp_path)
    assert not scan.labelled and reason in scan.unlabelled and scan.class_names == []
    assert scan.label(scan.files[0]) is None
    groups = sorted(set(scan.groups))  # still balanced over the folders
    assert groups == sorted(layout)


def test_symlinked_folders_are_followed_once_and_broken_links_skipped(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    _images(root / "0", 2, 0)
    _images(elsewhere, 3, 1)
    (root / "1").symlink_to(elsewhere, target_is_directory=True)
    (root / "0" / "loop").symlink_to(root, target_is_directory=True)  # a loop ends
    (root / "0" / "gone.png").symlink_to(tmp_path / "missing.png")
    scan = scan_images(root)
    assert scan.labelled and scan.class_names == ["0", "1"]
    assert sorted(scan.groups) == ["0", "0", "1", "1", "1"]
    assert [(Path(p).name, why) for p, why in scan.skipped] == [
        ("gone.png", "not a readable file (a broken link?)")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_unreadable_folders(tmp_path):
    _images(tmp_path / "0", 2, 0)
    _images(tmp_path / "1", 2, 1)
    (tmp_path / "1").chmod(0)
    try:
        scan = scan_images(tmp_path)
        assert len(scan.files) == 2 and "unreadable folder" in scan.skipped[0][1]
        with pytest.raises(CalibrationError, match="cannot read the image folder"):
            scan_images(tmp_path / "1")
    finally:
        (tmp_path / "1").chmod(0o755)


def test_balanced_order_is_seeded_round_robin(tmp_path):
    for name, count in (("0", 5), ("1", 2), ("2", 3)):
        _images(tmp_path / name, count, int(name))
    scan = scan_images(tmp_path)
    order = scan.balanced(seed=4)
    assert [p.parent.name for p in order] == ["0", "1", "2", "0", "1", "2", "0", "2", "0", "0"]
    assert order == scan.balanced(seed=4) and order != scan.balanced(seed=5)
    assert sorted(order) == scan.files


def test_split_is_sized_on_the_images_that_could_be_read(tmp_path):
    """Unreadable files and non-images never shrink the held-out quarter."""
    _images(tmp_path, 40, 0)
    for i in range(4):
        (tmp_path / f"bad{i}.png").write_bytes(b"not a png")
        (tmp_path / f"notes{i}.txt").write_text("x")
    cal, held = load_split(tmp_path, get_recipe("lenet5").input, samples=256, holdout=200)
    assert (len(cal), len(held)) == (30, 10)
    assert len(cal.skipped) == 8 and not set(cal.paths) & set(held.paths)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*EXPORTER, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_parity_and_the_int8_budget_read_the_same_labels(tmp_path):
    """Images filed under the class FP32 predicts for them: accuracy 1.0 for both the export's
    budget and parity (parity used to label by folder position, and scored 0)."""
    import onnxruntime as ort

    from exporter.data import preprocess

    proc = _cli("export", "lenet5", "-o", str(tmp_path / "fp32"), "--no-verify", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    session = ort.InferenceSession(str(tmp_path / "fp32" / "lenet5.onnx"))
    spec = get_recipe("lenet5").input
    pool = _images(tmp_path / "pool", 24, 7, size=32)
    x = np.stack([preprocess(Image.open(p), spec) for p in pool])
    predicted = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)
    folder = tmp_path / "filed"
    for path, cls in zip(pool, predicted):
        (folder / str(int(cls))).mkdir(parents=True, exist_ok=True)
        path.rename(folder / str(int(cls)) / path.name)
    names = sorted(p.name for p in folder.iterdir())
    assert any(str(i) != n for i, n in enumerate(sorted(names, key=int))), names  # positions differ

    proc = _cli("parity", "lenet5", "--images", str(folder), "--samples", "24", "--random", "1",
                "--no-latency", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)["reports"][0]
    assert report["eager"]["accuracy"]["images"]["top1"] == pytest.approx(1.0)

    out = tmp_path / "int8"
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "packaged",
                "--eval-images", str(folder), "--max-accuracy-drop", "100", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    details = next(a for a in manifest["artifacts"] if a["precision"] == "int8")["details"]
    assert details["criterion"].startswith("top-1 accuracy drop")
    assert details["measured"]["fp32_top1"] == pytest.approx(1.0) and details["measured"]["samples"] == 24


def test_output_inside_the_image_folder_is_refused(tmp_path):
    """The export would read its own artifacts (and staging files) as calibration images."""
    _images(tmp_path / "imgs", 20, 0)
    before = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    for out in ("imgs/artifacts", "imgs"):
        proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "imgs", "-o", out,
                    cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"the output folder '{out}' lies inside the --calibration folder 'imgs'" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == before


def test_a_split_with_nothing_left_to_judge_says_so(tmp_path):
    _images(tmp_path / "one", 1, 0)
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "one",
                "--calibration-samples", "1", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "no sample is left to judge the INT8 budget on, held out from 'one'" in proc.stderr
    assert "batch None" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_packaged_folder_here_does_not_silently_lose_to_the_shipped_photos(tmp_path):
    _images(tmp_path / "packaged", 20, 0)
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "packaged", "-o", "out",
                cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "a 'packaged' folder exists here too" in proc.stderr
    assert "--calibration ./packaged for yours, or --calibration packaged:0" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given", ["./packaged", "packaged/"])
def test_a_path_spelling_of_packaged_that_does_not_exist_names_the_shipped_photos(tmp_path, given):
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", given, "-o", "out",
                cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert f"--calibration {given} does not exist" in proc.stderr
    assert "(the shipped photos: --calibration packaged, as one word)" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_pixels_are_white_for_grey_and_colour_recipes(tmp_path, mode):
    """Alpha is composited onto white for both colour modes (a grey recipe used to read 0)."""
    from exporter.data import convert_mode

    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert(mode)
    for recipe in ("lenet5", "mobilenet_v2"):
        converted, note = convert_mode(image, get_recipe(recipe).input)
        assert np.asarray(converted).min() == 255 and "alpha on white" in note, (recipe, mode)


def test_palette_images_say_alpha_only_when_they_have_transparency():
    """A palette GIF/PNG without a transparent index is converted as is, and not described as
    'alpha on white'; one with a transparent index is composited onto white."""
    from exporter.data import convert_mode

    spec = get_recipe("mobilenet_v2").input
    palette = [10, 20, 30] + [200, 100, 50] + [0, 0, 0] * 254

    def paletted(transparent: bool) -> Image.Image:
        image = Image.new("P", (4, 4), 0)
        image.putpalette(palette)
        image.putpixel((0, 0), 1)
        if transparent:
            image.info["transparency"] = 0
        return image

    converted, note = convert_mode(paletted(False), spec)
    pixels = np.asarray(converted)
    assert note == "P->RGB" and pixels[1, 1].tolist() == [10, 20, 30] and pixels[0, 0].tolist() == [200, 100, 50]
    converted, note = convert_mode(paletted(True), spec)
    pixels = np.asarray(converted)
    assert note == "P->RGB (alpha on white)"
    assert pixels[1, 1].tolist() == [255, 255, 255] and pixels[0, 0].tolist() == [200, 100, 50]


@pytest.mark.parametrize("mode,scale", [("I;16", 257.0), ("F", 1 / 255), ("F", 1.0), ("F", 257.0)])
def test_high_bit_depth_images_keep_their_brightness(mode, scale):
    """16-bit and float images map their white, not their brightest pixel, to 255: a float TIFF in
    0..1 whose brightest pixel is 0.5 used to come out twice as bright."""
    from exporter.data import convert_mode

    grey = np.tile(np.arange(0, 128, 2, dtype=np.float64), (4, 1))  # 0..126: a dim image
    pixels = grey * scale
    image = Image.fromarray(pixels.astype(np.float32)) if mode == "F" else \
        Image.fromarray(pixels.astype(np.uint16)).convert(mode)
    converted, note = convert_mode(image, get_recipe("lenet5").input)
    assert np.abs(np.asarray(converted, np.float64) - grey).max() <= 1, (mode, scale)
    assert note.startswith(f"{mode}->L (high bit depth scaled to 8 bits")


def test_a_phone_photo_is_read_upright_as_a_viewer_shows_it(tmp_path):
    """A JPEG with EXIF orientation 6 (a phone held upright) was read sideways, without a word."""
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 0  # a dark left half tells the orientations apart
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    for folder in ("turned", "upright", "plain"):
        (tmp_path / folder).mkdir()
    image.save(tmp_path / "turned" / "phone.png", exif=exif)
    ImageOps.exif_transpose(Image.open(tmp_path / "turned" / "phone.png")).save(tmp_path / "upright" / "a.png")
    image.save(tmp_path / "plain" / "a.png")
    spec = get_recipe("mobilenet_v3_small").input
    turned, upright, plain = (load_image_folder(tmp_path / f, spec) for f in ("turned", "upright", "plain"))
    assert turned.conversions == {"EXIF orientation 6 applied": 1} and upright.conversions == {}
    assert np.array_equal(turned.array, upright.array)
    assert np.abs(turned.array - plain.array).max() > 1.0


def test_a_class_the_model_lacks_is_refused_wherever_the_split_puts_its_images(tmp_path):
    """A class subfolder '11' for 10-class lenet5 was accepted when its two images both fell in
    the calibration part of the seeded split, and refused when one reached the judging part."""
    for label in range(4):
        _images(tmp_path / "lab" / str(label), 10, label)
    _images(tmp_path / "lab" / "11", 1, 11)
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "lab", "--calibration-samples",
                "32", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "have class subfolder(s) 11, classes the model does not have" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_samples_left_out_for_a_fixed_batch_and_judged_conversions_are_said(tmp_path):
    """--batch 7 left 4 calibration samples out and the summary blamed the folder ('the source
    holds no more'); conversions of the judged images were not counted."""
    _images(tmp_path / "flat", 80, 0)
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "flat", "--calibration-samples",
                "32", "--batch", "7", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "over 28 samples (of 32 requested: 4 left out to fill whole batches of the fixed batch size)" \
        in proc.stdout
    assert "requested: the source holds no more" not in proc.stdout  # the calibration's 32 were there
    assert "48 requested" not in proc.stdout
    assert "of 200 requested (--eval-samples): the source holds no more once the calibration samples " \
        "are taken; 42 image(s) converted RGB->L; 6 left out to fill whole batches of the fixed batch size" \
        in proc.stdout  # the 48 held out, less the partial batch
    assert "calibration: converted 28 image(s) RGB->L" in proc.stderr


def test_a_judging_folder_smaller_than_asked_for_is_said(tmp_path):
    """--eval-samples 500 on a folder of 40 images judged on 40 without a word."""
    _images(tmp_path / "judge", 40, 1)
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "packaged", "--eval-images",
                "judge", "--eval-samples", "500", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "judged on judge (40 samples; of 500 requested (--eval-samples): the source holds no more;" \
        in proc.stdout, proc.stdout


def test_a_small_warning_on_an_exhausted_judging_folder_does_not_suggest_more_eval_samples(tmp_path):
    """16 judging images of 500 requested: the too-few-samples WARNING told the user to raise
    --eval-samples, which the folder cannot give."""
    _images(tmp_path / "judge", 16, 1)
    proc = _cli("export", "lenet5", "--precision", "int8", "--calibration", "packaged", "--eval-images",
                "judge", "--eval-samples", "500", "--no-fail", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "judged on only 16 sample(s): one changed prediction moves the top-1 agreement by 6.2 " \
        "points" in proc.stdout, proc.stdout
    assert "its source holds no more, so add images to it or pass --eval-images DIR with at least 20" \
        in proc.stdout
    assert "(--eval-samples N, or --eval-images DIR)" not in proc.stdout
