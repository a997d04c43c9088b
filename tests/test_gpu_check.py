"""`bash benchmark.sh gpu` (scripts/gpu_check.py): a clear failure without CUDA, every step of it on toy sizes on the
CPU (--cpu-smoke), so that no GPU minute is lost to a broken script, and a non-zero exit when any child fails."""

import csv
import subprocess

import torch
from conftest import ROOT, import_script, run_script

gpu_check = import_script("gpu_check")


def test_gpu_check_fails_clearly_without_cuda(tmp_path):
    if torch.cuda.is_available():
        return  # nothing to check here: the check itself runs on this machine
    proc = subprocess.run(["bash", str(ROOT / "benchmark.sh"), "gpu"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "benchmark.sh gpu needs a CUDA GPU" in proc.stderr


def test_gpu_check_runs_every_step_on_toy_sizes_and_fails_with_a_failing_child(tmp_path):
    """One smoke run (each costs a minute of CPU): every row passes but the one child made to fail, whose row fails
    the check with a one-line summary."""
    proc = run_script([str(ROOT / "scripts/gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path)], cwd=tmp_path,
                      env={"GPU_CHECK_FAIL": "share_2_1"})  # fmt: skip
    output = proc.stdout[-5000:] + proc.stderr[-3000:]
    assert proc.returncode == 1, output
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert failed == [f"FAILED share 2 processes: exit 2 (see {tmp_path / 'share_2_1.log'})"], output
    assert "--made-to-fail-by-GPU_CHECK_FAIL" in (tmp_path / "share_2_1.log").read_text()
    read = lambda name: list(csv.DictReader(open(tmp_path / f"{name}.csv")))  # noqa: E731
    train = read("train")
    runs = ["meanflowql --eval-workers 4", "ofql --compile", "mvp", "som"]  # OFQL's eager pair: not in the smoke run
    assert [(r["part"], r["run"]) for r in train] == [(p, r) for p in ("train", "resume") for r in runs]
    assert all(r["status"] == "ok" for r in train), train  # each part ran and evaluated where it should
    graphs = read("cudagraphs")  # no CUDA graphs on a CPU: the report says so
    assert [r["run"] for r in graphs] == ["train_ofql_compile", "resume_ofql_compile"]
    assert all(r["cudagraphs"] == "not seen: no cudagraphs log line" for r in graphs)
    (speed,) = read("speed")
    assert (speed["run"], speed["precision"], speed["status"]) == ("meanflowql", "fp32", "ok")
    assert float(speed["updates_per_s"]) > 0
    evaluation = read("eval")
    assert [r["mode"] for r in evaluation] == ["sequential", "vector", "async-2"]
    assert all(r["status"] == "ok" for r in evaluation)
    share = read("share")
    assert [(r["processes"], r["status"]) for r in share] == [("1", "ok"), ("2", "exit 2")]


def test_children_fail_on_exit_codes_silence_and_timeouts(tmp_path):
    runner = gpu_check.Runner(tmp_path, {}, budget=60)
    code = {
        "ok": "print('x,1')",
        "silent": "pass",
        "exit": "raise SystemExit(3)",
        "hang": "import time; time.sleep(60)",
    }
    children = runner.run({name: ["-c", src] for name, src in code.items()}, timeout=3)
    assert {name: c.status for name, c in children.items()} == {
        "ok": "ok", "silent": "ok", "exit": "exit 3", "hang": "timed out after 3 s"}  # fmt: skip
    assert children["hang"].seconds < 10
    keys = ("algo", "n")
    assert gpu_check.result_rows(children["ok"], "x,", keys, expected=1) == [{"algo": "x", "n": "1", "status": "ok"}]
    assert gpu_check.result_rows(children["silent"], "x,", keys, expected=1) == [
        {"status": "printed 0 of 1 result rows"}
    ]  # no IndexError
    assert gpu_check.result_rows(children["exit"], "x,", keys, expected=1) == [{"status": "exit 3"}]
    late = gpu_check.Runner(tmp_path, {}, budget=0).run({"late": ["-c", "pass"]}, timeout=3)["late"]
    assert late.status.startswith("not run")


def test_a_missing_compiler_or_python_headers_is_a_clear_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(gpu_check.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    (tmp_path / "Python.h").touch()
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert gpu_check.toolchain_problem() is None
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    (tmp_path / "Python.h").unlink()
    problem = gpu_check.toolchain_problem()
    assert "a C compiler" in problem and "Python headers" in problem and "apt install build-essential" in problem


def test_the_cudagraph_report_reads_the_compiled_runs_logs(tmp_path):
    logs = {
        "ran": "[cudagraphs] Recording cudagraph tree for graph without symints\n",
        "skipped": "W1202 perf_hints skipping cudagraphs due to cpu device (_tensor_constant0)\nmore\n",
        "quiet": "step 1\n",
    }
    for name, text in logs.items():
        (tmp_path / f"{name}.log").write_text(text)
    status = {name: gpu_check.cudagraph_status(gpu_check.Child("ok", 1.0, tmp_path / f"{name}.log")) for name in logs}
    assert status == {
        "ran": "ran",
        "skipped": "skipped: W1202 perf_hints skipping cudagraphs due to cpu device (_tensor_constant0)",
        "quiet": "not seen: no cudagraphs log line",
    }
    failed = gpu_check.Child("exit 1", 1.0, tmp_path / "ran.log")
    assert gpu_check.cudagraph_status(failed) == "unknown: the run failed (exit 1)"


def test_the_fail_switch_names_a_child_by_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_FAIL", "train_x")
    runner = gpu_check.Runner(tmp_path, {}, budget=60)
    code = ["-c", "import sys; sys.exit(len(sys.argv) - 1)"]  # exits with the number of arguments it got
    children = runner.run({"train_x": code, "train_y": code}, timeout=10)
    assert (children["train_x"].status, children["train_y"].status) == ("exit 1", "ok")
    assert gpu_check.stem("train", "meanflowql --eval-workers 4") == "train_meanflowql_eval-workers_4"
