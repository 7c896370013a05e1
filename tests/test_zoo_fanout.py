"""``exporter export --zoo`` and ``exporter parity --zoo --jobs N|--ray``: the zoo as a matrix plan,
run by the matrix executors, from the CLI the way users run it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import build_parser
from exporter.errors import PlanError
from exporter.matrix.plan import parse_plan
from exporter.recipes import all_recipes
from exporter.zoo_plan import zoo_plan_data


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def plan_of(*argv: str, command: str):
    args = build_parser().parse_args([command, *argv])
    return parse_plan(zoo_plan_data(args, command), source="test")


def test_zoo_plan_covers_every_recipe_at_its_reduced_size():
    plan = plan_of("--zoo", "--reduced", "--format", "onnx,torchscript", command="parity")
    recipes = all_recipes()
    assert [name for _, name, _ in plan.models] == list(recipes)
    for _, name, size in plan.models:
        spec = recipes[name].input
        expected = None if spec.fixed_size or spec.test_size == max(spec.size) else spec.test_size
        assert size == expected, name
    jobs = plan.jobs("out")
    assert len(jobs) == len(recipes) and {j.formats for j in jobs} == {("onnx", "torchscript")}
    assert jobs[0].parity["latency"] is True and jobs[0].parity["runs"] == 30


def test_export_zoo_plan_verifies_without_latency_and_carries_int8_calibration():
    plan = plan_of("--zoo", "--models", "resnet1*,lenet5", "--precision", "int8", "--calibration",
                   "packaged", "--calibration-samples", "32", "--target", "cpu",
                   "--weight-rounding", "exact", "--range-tuning", "--lever-retry",
                   command="export")
    assert [name for _, name, _ in plan.models] == ["resnet101", "resnet152", "resnet18", "lenet5"]
    job = plan.jobs("out")[0]
    assert job.precision == "int8" and job.parity == {"latency": False, "samples": 8, "random": 4}
    assert job.quant == {"calibration": "packaged", "samples": 32, "target": "cpu",
                         "weight_rounding": "exact", "range_tuning": True, "lever_retry": True}


def test_zoo_refuses_a_format_that_cannot_make_the_precision():
    from exporter.errors import UsageError

    with pytest.raises(UsageError) as info:  # torchscript x int8 was dropped from the plan
        plan_of("--zoo", "--models", "lenet5", "--format", "onnx,torchscript", "--precision", "int8",
                "--calibration", "packaged", command="export")
    assert "not produced by --format torchscript (torchscript writes fp32 only)" in info.value.message
    assert "--format onnx --precision int8" in info.value.fix


def test_opt_in_levers_in_a_plan_are_checked_up_front():
    with pytest.raises(PlanError) as info:
        parse_plan({"models": ["lenet5"], "formats": ["onnx"], "precisions": ["int8"],
                    "calibration": {"data": "packaged", "weight_rounding": "adaround",
                                    "range_tuning": "yes", "lever_retry": "no"}})
    for part in ("weight rounding 'adaround' is not one of nearest, exact, gptq",
                 "range tuning must be true or false, got 'yes'",
                 "lever retry must be true or false, got 'no'", "3 problem(s)"):
        assert part in info.value.message, (part, info.value.message)


@pytest.mark.parametrize("argv, words", [
    (["export"], "which model?"),
    (["export", "lenet5", "--jobs", "2"], "go with --zoo"),
    (["export", "--zoo", "lenet5"], "takes no MODEL"),
    (["export", "--zoo", "--models", "nope*"], "matches no recipe"),
    (["export", "--zoo", "--models", "lenet5", "--jobs", "0"], "--jobs must be >= 1"),
    (["parity", "lenet5", "--ray", "auto"], "fan out a --zoo run"),
    (["parity", "--zoo", "--models", "lenet5", "--jobs", "1", "--images", "."], "--images cannot"),
    (["parity", "--zoo", "--models", "lenet5", "--jobs", "1", "--atol", "1"], "--atol cannot"),
    (["parity", "--zoo", "--models", "lenet5", "--jobs", "1", "--accept-modified"],
     "--accept-modified cannot"),
    (["export", "--zoo", "--models", "lenet5", "--no-verify"], "--no-verify cannot"),
    # export --zoo always runs as matrix jobs: its fix is not "run without --jobs/--ray"
    (["export", "--zoo", "--models", "lenet5", "--json"], "export the models one at a time"),
])
def test_refusals_exit_2_and_write_nothing(tmp_path, argv, words):
    proc = run_cli(*argv, "--output", "out", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "fix:" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "artifacts").exists()


def test_export_zoo_on_two_workers_then_parity_fanout_equals_the_sequential_zoo_run(tmp_path):
    proc = run_cli("export", "--zoo", "--models", "lenet5,nin", "--reduced", "--jobs", "2",
                   "--output", "zoo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "zoo" / "report.json").read_text())
    assert sorted(j["key"] for j in report["jobs"]) == ["lenet5/fp32", "nin@64/fp32"]
    assert {j["status"] for j in report["jobs"]} == {"ok"}
    for key in ("lenet5/fp32", "nin@64/fp32"):  # export --zoo keeps what it was asked for
        manifest = json.loads((tmp_path / "zoo" / key / "manifest.json").read_text())
        assert [a["format"] for a in manifest["artifacts"]] == ["onnx"]
    # --quiet: the result line only (it printed nothing at all); an edited artifact is not
    # "proved by an earlier run" (it was skipped): its job runs again and refuses the file
    edited = tmp_path / "zoo" / "lenet5" / "fp32" / "lenet5.onnx"
    original = edited.read_bytes()
    edited.write_bytes(original + b"\0")
    again = ("export", "--zoo", "--models", "lenet5,nin", "--reduced", "--jobs", "2", "--output",
             "zoo", "--quiet")
    proc = run_cli(*again, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.startswith("2 job(s): 1 ok, 0 breach, 1 failed, 1 skipped")
    assert "lenet5.onnx in zoo/lenet5/fp32 differ from the sha256" in proc.stderr
    edited.write_bytes(original)
    proc = run_cli(*again, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("2 job(s): 2 ok, 0 breach, 0 failed, 2 skipped") and "report: " in proc.stdout

    common = ["--zoo", "--models", "nin", "--reduced", "--no-latency", "--samples", "8"]
    fanout = run_cli("parity", *common, "--jobs", "1", "--output", "fan", "--report", "fan-report",
                     cwd=tmp_path)
    sequential = run_cli("parity", *common, "--output", "seq", "--report", "seq-report", cwd=tmp_path)
    assert fanout.returncode == 0 and sequential.returncode == 0, fanout.stderr + sequential.stderr
    assert "zoo parity" in fanout.stdout + fanout.stderr  # the same summary table
    assert not (tmp_path / "fan").exists()  # without --keep-artifacts, like the sequential run

    def rows(folder: str) -> dict:
        data = json.loads((tmp_path / folder / "report.json").read_text())
        return {(r["model"], a["file"]): (a["status"], a["summary"]["rel_max_abs"],
                                          a["summary"]["top1_agreement"])
                for r in data["reports"] for a in r["artifacts"]}

    fan_rows, seq_rows = rows("fan-report"), rows("seq-report")
    assert set(fan_rows) == {("nin", "nin.onnx"), ("nin", "nin.ts.pt")}
    for key, (status, err, agreement) in seq_rows.items():
        assert fan_rows[key][0] == status == "ok" and fan_rows[key][2] == agreement
        assert fan_rows[key][1] == pytest.approx(err, rel=0.5, abs=1e-6)  # 1 vs 2 threads
