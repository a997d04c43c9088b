"""`bash benchmark.sh gpu` (scripts/gpu_check.py): a clear failure without CUDA, and every step of it on toy sizes on
the CPU (--cpu-smoke), so that no GPU minute is lost to a broken script."""

import csv
import subprocess

import torch
from conftest import ROOT, run_script


def test_gpu_check_fails_clearly_without_cuda(tmp_path):
    if torch.cuda.is_available():
        return  # nothing to check here: the check itself runs on this machine
    proc = subprocess.run(["bash", str(ROOT / "benchmark.sh"), "gpu"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "benchmark.sh gpu needs a CUDA GPU" in proc.stderr


def test_gpu_check_runs_every_step_on_toy_sizes(tmp_path):
    proc = run_script([str(ROOT / "scripts/gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    read = lambda name: list(csv.DictReader(open(tmp_path / f"{name}.csv")))  # noqa: E731
    train = read("train")
    assert {(r["algo"], r["part"]) for r in train} == {(a, p) for a in ("meanflowql", "ofql", "mvp", "som")
                                                       for p in ("train", "resume")}  # fmt: skip
    assert all(r["exit_code"] == "0" for r in train), train  # the resumed runs evaluated at their last step
    assert [r["algo"] for r in read("speed")] == ["meanflowql", "ofql", "mvp", "som"]
    assert all(float(r["updates_per_s"]) > 0 for r in read("speed"))
    assert [r["mode"] for r in read("eval")] == ["sequential", "vector", "async-2"]
    share = read("share")
    assert [r["processes"] for r in share] == ["1", "2"] and all(float(r["total_updates_per_s"]) > 0 for r in share)
