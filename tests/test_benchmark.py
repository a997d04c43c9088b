"""benchmark.sh learn on its --tiny smoke-test setting (every task, with bc and one other algorithm per offline task and
SOM on one env; 2-episode datasets of 60 steps, tiny networks, 20 offline steps, 200 SOM steps, 1 seed, 2 workers): the
reports, a failed job reported and then rerun while finished jobs are skipped,
and the Slurm arrays; plus the machine description that benchmark.sh speed adds to speed.csv."""

import csv
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, import_script

TINY_ALGO = {  # --tiny runs bc and this algorithm on each offline task (every offline script on two tasks)
    "cube-single-play-singletask-v0": "meanflowql",
    "pointmaze-medium-navigate-singletask-v0": "mvp",
    "pointmaze-umaze": "ofql",
    "pointmaze-umaze-mixed": "ofql",
    "invertedpendulum-mixed": "meanflowql",
    "bandit-two-hills": "mvp",
}
OFFLINE_TASKS = list(TINY_ALGO)
ONLINE_TASKS = ["InvertedPendulum-v5"]  # --tiny: SOM on the first online task alone
PAIRS = [(task, algo) for task in OFFLINE_TASKS for algo in (TINY_ALGO[task], "bc")] + [(ONLINE_TASKS[0], "som")]
JOBS = len(PAIRS)
BAD_JOB = "mvp__pointmaze-medium-navigate-singletask-v0__s1"  # gets a flag mvp.py rejects in the first sweep
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def bench(*args: str, out: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    if path is not None:
        env["PATH"] = path
    cmd = ["bash", str(ROOT / "benchmark.sh"), args[0], "--out", str(out), *args[1:]]
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict:
    """The tiny sweep with one job given a bad flag, then the same sweep without it."""
    out = tmp_path_factory.mktemp("bench")
    first = bench("learn", "--tiny", "--workers", "2", "--job-args", f"{BAD_JOB}:--no-such-flag", out=out)
    after_first = {
        "done": max(p.stat().st_mtime for p in out.glob("runs/*/exit_code")),
        "log": (out / "runs" / BAD_JOB / "train.log").read_text(),
        "runs": read_csv(out / "learn_runs.csv"),
        "md": (out / "learn.md").read_text(),
    }
    second = bench("learn", "--tiny", "--workers", "2", out=out)
    return {"out": out, "first": first, "after_first": after_first, "second": second}


def test_failed_job_is_reported(sweeps) -> None:
    first, after = sweeps["first"], sweeps["after_first"]
    assert first.returncode == 1, first.stdout + first.stderr  # a failed job fails the sweep, after the reports
    log = sweeps["out"] / "runs" / BAD_JOB / "train.log"
    assert f"FAILED  {BAD_JOB}: exit 2, log {log}" in first.stdout  # by the job, then in the summary
    assert f"[learn] {JOBS - 1} ok, 1 failed, 0 missing of {JOBS} jobs" in first.stdout
    assert "no-such-flag" in after["log"]  # the script's own error is in the log
    (bad,) = [r for r in after["runs"] if r["status"] != "ok"]
    assert (bad["algo"], bad["task"], bad["exit_code"], bad["status"]) == ("mvp", OFFLINE_TASKS[1], "2", "failed")
    (row,) = [line for line in after["md"].splitlines() if "failed" in line]
    assert (
        row == f"| {OFFLINE_TASKS[1]} | MVP | — | — | — | — | — | — | — | 0/1 "
        f"| s1 failed (exit 2, runs/{BAD_JOB}/train.log) |"
    )


def test_second_sweep_reruns_the_failed_job_and_skips_the_rest(sweeps) -> None:
    out, second = sweeps["out"], sweeps["second"]
    assert second.returncode == 0, second.stdout + second.stderr
    assert f": 1 to run, {JOBS - 1} finished before (skipped)" in second.stdout
    assert [line.split()[2] for line in second.stdout.splitlines() if line.startswith("[learn] done")] == [BAD_JOB]
    for run_dir in (out / "runs").iterdir():
        (eval_file,) = run_dir.glob("runs/*/eval.jsonl")
        rerun = eval_file.stat().st_mtime > sweeps["after_first"]["done"]
        assert rerun == (run_dir.name == BAD_JOB)  # the finished jobs were not redone
    assert f"[learn] {JOBS} ok, 0 failed, 0 missing of {JOBS} jobs" in second.stdout


def test_reports_have_a_row_per_algorithm_and_task(sweeps) -> None:
    out, second = sweeps["out"], sweeps["second"]
    rows = read_csv(out / "learn.csv")
    assert [(r["task"], r["algo"]) for r in rows] == PAIRS
    for r in rows:
        online = r["algo"] == "som"
        returns = online or "pendulum" in r["task"] or "bandit" in r["task"]
        assert r["metric"] == ("episodic_return" if returns else "success_rate")
        assert (r["seeds_ok"], r["seeds"], r["final_step"]) == ("1", "1", "200" if online else "20")
        assert r["final_mean"] != "" and r["final_std"] == "" and r["notes"] == ""  # one seed: no std
        assert r["final_return_mean"] != ""
        if r["metric"] == "success_rate":
            assert 0 <= float(r["final_mean"]) <= float(r["best_mean"]) <= 1
        paired = "1" if r["algo"] not in ("bc", "som") else "0"  # one seed, paired with BC's on the same task
        assert r["final_return_vs_bc_pairs"] == r["mean_return_vs_bc_pairs"] == paired
    md = (out / "learn.md").read_text()
    assert "bash benchmark.sh learn --seeds 1 --steps 20 --online-steps 200 --episodes 2" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(PAIRS) and all(line.endswith("| 1/1 |  |") for line in table)
    assert "| pointmaze-medium-navigate-singletask-v0 | BC (OFQL, η = 0, one candidate) | success (%) |" in md
    bc_command = (out / "runs" / "bc__cube-single-play-singletask-v0__s1" / "DONE").read_text()
    assert "algos/ofql.py" in bc_command and bc_command.endswith("--eta 0 --eval-candidates 1 --exp-name bc ")
    # pointmaze-umaze-mixed: the UMaze env on its own stand-in, half of whose steps are uniform random actions
    mixed_job = (out / "runs" / "ofql__pointmaze-umaze-mixed__s1" / "job.sh").read_text()
    assert f"export MINARI_DATASETS_PATH={out}/data/minari-random0.5-2x60\n" in mixed_job
    assert "--env-id pointmaze-umaze --seed 1" in mixed_job
    (metadata,) = (out / "data" / "minari-random0.5-2x60").glob("**/metadata.json")
    assert "waypoint-PD+noise0.5+random0.5 policy" in metadata.read_text()
    pendulum_job = (out / "runs" / "bc__invertedpendulum-mixed__s1" / "job.sh").read_text()
    assert f"export MINARI_DATASETS_PATH={out}/data/minari-pendulum-random0.5-2\n" in pendulum_job
    assert "--env-id mujoco/invertedpendulum/medium-v0 --seed 1" in pendulum_job
    # the bandit: the project's env module on the import path, MVP without chunks (one-step episodes)
    bandit_job = (out / "runs" / "mvp__bandit-two-hills__s1" / "job.sh").read_text()
    assert f"export MINARI_DATASETS_PATH={out}/data/minari-bandit-200; export PYTHONPATH={ROOT}/scripts" in bandit_job
    assert "--env-id meanflow-rl/bandit/two-hills-v0 --seed 1" in bandit_job and "--horizon 1" in bandit_job
    plots = sorted(p.name for p in out.glob("learn_*.png"))
    if HAS_MATPLOTLIB:
        assert plots == sorted(f"learn_{task}.png" for task in OFFLINE_TASKS + ONLINE_TASKS)
    else:
        assert plots == [] and "matplotlib is not installed" in second.stdout


def test_paired_comparison_with_bc_by_seed() -> None:
    aggregate = import_script("aggregate")

    def run(algo: str, seed: int, returns: list[float], status: str = "ok"):
        r = aggregate.Run(f"{algo}__s{seed}", algo, "task", seed, "offline", Path("."), status)
        r.returns = list(enumerate(returns))
        return r

    bc = [run("bc", 1, [0, 10]), run("bc", 2, [0, 30]), run("bc", 3, [0, 20]), run("bc", 5, [0, 0], "failed")]
    runs = [run("ofql", s, [0, r]) for s, r in [(1, 14), (2, 30), (3, 28), (4, 99), (5, 99)]]
    final = aggregate.paired_vs_bc(runs, bc, "final_return")
    # seeds 1-3 pair (4 has no BC run, 5's failed); differences 4, 0 (a tie) and 8: 2 of 2 untied better, p = 1/4
    assert final == {
        "final_return_vs_bc_mean": 4.0,
        "final_return_vs_bc_std": 4.0,
        "final_return_vs_bc_better": 2,
        "final_return_vs_bc_pairs": 3,
        "final_return_vs_bc_p": 0.25,
    }
    worse = aggregate.paired_vs_bc([run("ofql", 1, [0, 5]), run("ofql", 2, [0, 40])], bc, "mean_return")
    assert (worse["mean_return_vs_bc_mean"], worse["mean_return_vs_bc_better"]) == (1.25, 1)  # -2.5 and +5
    assert worse["mean_return_vs_bc_p"] == 0.75  # P(at least 1 of 2 better)
    assert aggregate.fmt_vs_bc(final, "final_return") == "+4.000 ± 4.000 (2/3, p 0.25)"
    tied = aggregate.paired_vs_bc([run("ofql", 1, [0, 10]), run("ofql", 2, [0, 30])], bc, "final_return")
    assert aggregate.fmt_vs_bc(tied, "final_return") == "+0.000 ± 0.000 (0/2, all tied)"  # e.g. 0% success in both


def test_slurm_writes_arrays_and_submits_only_when_asked(tmp_path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/sbatch_calls\necho 42\n')
    (fake / "sbatch").chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    out = tmp_path / "out"
    out.mkdir()

    proc = bench("learn", "--tiny", "--slurm", "--sbatch", "--partition=gpu --gres=gpu:1", out=out, path=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "sbatch_calls").exists() and "not submitted" in proc.stdout
    for sweep, n in [("datasets", len(OFFLINE_TASKS)), ("offline", JOBS - 1), ("online", 1)]:
        script = (out / "slurm" / f"{sweep}.sbatch").read_text()
        assert f"#SBATCH --array=0-{n - 1}\n" in script and "#SBATCH --partition=gpu\n#SBATCH --gres=gpu:1\n" in script
        assert script.count("job.sh" if sweep != "datasets" else "make_") == n
    assert not list(out.glob("runs/*/runs")) and not list(out.glob("data/*/*.npz"))  # nothing ran

    # An array task runs its script: the first dataset job generates its dataset.
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_CPUS_PER_TASK": "1"}
    task = subprocess.run(["bash", str(out / "slurm" / "datasets.sbatch")], env=env, capture_output=True, text=True)
    assert task.returncode == 0, task.stderr
    assert [p.name for p in out.glob("data/*/*.npz")] != []

    proc = bench("learn", "--tiny", "--slurm", "--submit", out=out, path=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = (tmp_path / "sbatch_calls").read_text().splitlines()
    assert calls == [
        f"--parsable {out}/slurm/datasets.sbatch",  # the other five datasets are still missing
        f"--parsable --dependency=afterok:42 {out}/slurm/offline.sbatch",
        f"--parsable {out}/slurm/online.sbatch",
    ]
    assert "#SBATCH --array=0-4\n" in (out / "slurm" / "datasets.sbatch").read_text()


def test_bad_options_are_refused(tmp_path) -> None:
    for args, message in [
        (["--seeds", "0"], "--seeds must be a positive integer"),
        (["--submit"], "--submit needs --slurm"),
        (["--only", "nothing-matches"], "matches no job"),
        (["--job-args", "no-colon"], "GLOB:FLAGS"),
        (["--steps"], "--steps needs a value"),
    ]:
        proc = bench("learn", *args, out=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_speed_csv_has_the_machine_description(tmp_path, monkeypatch, capsys) -> None:
    """In-process: speed.py's row, piped into aggregate.py speed as benchmark.sh speed does."""
    monkeypatch.setattr(sys, "argv", ["speed.py", "ofql", "--device", "cpu", "--batch-size", "8", "--seconds", "0.2"])
    import_script("speed").main()
    row = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO(row))
    import_script("aggregate").speed(tmp_path)
    assert row.strip() in capsys.readouterr().out  # the rows are passed through as they come
    (written,) = read_csv(tmp_path / "speed.csv")
    assert list(written) == ["algo", "device", "mode", "batch", "updates_per_s", "ms_per_action", "precision",
                             "cpu", "cores", "torch", "gpu", "threads"]  # fmt: skip
    assert written["algo"] == "ofql" and float(written["updates_per_s"]) > 0
    assert written["cores"] == str(os.cpu_count()) and written["torch"] == __import__("torch").__version__
    assert written["cpu"] and written["gpu"]


def test_iqm_and_stratified_bootstrap_against_hand_computed_values():
    aggregate = import_script("aggregate")
    assert aggregate.iqm(np.arange(1, 9)) == 4.5  # the mean of 3, 4, 5, 6
    assert aggregate.iqm(np.array([0.0, 0.0, 0.0, 100.0])) == 0.0  # one value trimmed from each end
    # seeds 0 and 1: bootstrap means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1]
    assert aggregate.stratified_bootstrap_ci([[0.0, 1.0]], statistic=np.mean) == (0.0, 1.0)
    # one run per stratum: every stratified resample is [0, 1] itself (a pooled bootstrap would vary)
    assert aggregate.stratified_bootstrap_ci([[0.0], [1.0]], statistic=np.mean) == (0.5, 0.5)
    low, high = aggregate.stratified_bootstrap_ci([[2.0, 2.0], [4.0, 4.0, 4.0]])  # IQM of [2, 2, 4, 4, 4]: 10/3
    assert low == pytest.approx(10 / 3) and high == pytest.approx(10 / 3)
    assert all(np.isnan(aggregate.stratified_bootstrap_ci([[]])))  # nothing finished
