"""The one-command GPU check (`bash benchmark.sh gpu`): on a CUDA machine, in under 8 minutes,

1. train  each script for a few hundred steps on CUDA with --save-model, eager and --compile, then --resume each run
          for 100 more: offline on the project's bandit (scripts/bandit.py, generated here; MVP with --horizon 1), SOM
          online on InvertedPendulum-v5; checks that both parts ran and evaluated where they should (eager MeanFlowQL
          evaluates twice per part, with --eval-workers 4). Alongside: one compiled scripts/speed.py step per script
          (which also fills Inductor's cache for step 4). --compile on CUDA needs a C compiler and the Python headers
          (Triton builds its launchers): checked first, a failed row with the fix when either is missing;
2. cudagraphs  per compiled run (train, resume, speed step): whether its step ran as CUDA graphs, read from its
          TORCH_LOGS=perf_hints,cudagraphs output ("skipped: <Inductor's reason>" where it skipped them);
3. eval   one evaluation of 50 AntMaze-large episodes (200 steps each) with MeanFlowQL's policy, sequentially and
          vectorised (scripts/speed.py --eval);
4. speed  updates/s and ms per action, eager and --compile, for each script (scripts/speed.py, each script's own
          matmul precision: TF32 on CUDA);
5. share  the aggregate updates/s of 1, 4 and 8 MeanFlowQL processes training at once on the one GPU (eager; their
          timing windows start together; 1 process: step 4's eager MeanFlowQL row).

Writes OUT/{train,cudagraphs,speed,eval,share}.csv and each child's output to OUT/<part>_<run>.log (OUT: results/gpu),
and prints them with the GPU, torch and CUDA versions. Every child has a timeout, and none runs past --budget seconds
from the start (one still running then is killed, one not started is a failed row). Exits 1 when a row failed, after
one line per failed row: `FAILED <part> <run>: <why> (see <its log>)`. Needs nothing beyond requirements.txt; fails at
once, with a message, where CUDA is missing.

--cpu-smoke runs every part at toy sizes on the CPU, for tests/test_gpu_check.py only (its numbers mean nothing), with
fewer and shorter children: OFQL's pair compiled alone, without its eager one, through torch.compile's cheap path
(TORCH_COMPILE_OVERRIDE_BACKENDS: TorchDynamo's graphs run eagerly, where Inductor on a CPU takes minutes), the other
scripts' pairs eager, 10 steps and 5 more resumed, and MeanFlowQL's eager speed row alone (tests/test_speed.py runs the
others). GPU_CHECK_FAIL=<part>_<run> (a log's name, e.g. share_2_1) gives that child an
unknown flag, so that it fails: the tests' failing child.
"""

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("meanflowql", "ofql", "mvp", "som")
BANDIT = "meanflow-rl/bandit/two-hills-v0"
SMOKE_COMPILED = ("ofql",)  # --cpu-smoke's compiled pair: TorchDynamo captures OFQL's step in seconds on a CPU
WORKERS = "meanflowql --eval-workers 4"  # the eager MeanFlowQL pair: two evaluations in 4 forked processes each
TIMEOUTS = {"data": 120, "train": 300, "speed": 150, "eval": 180, "share": 90}  # per child (train: resume too), seconds
SPEED_KEYS = ("algo", "device", "mode", "batch", "updates_per_s", "ms_per_action", "precision")
EVAL_KEYS = ("algo", "device", "mode", "episodes", "steps", "seconds", "speedup", "precision")
TINY = {  # --cpu-smoke: toy networks
    "meanflowql": "--actor-hidden-dim 16 --actor-depth 1 --critic-hidden-dim 16 --critic-layers 2",
    "ofql": "--hidden-dim 16 --num-layers 2 --eval-candidates 4",
    "mvp": "--actor-hidden-dim 16 --actor-layers 2 --critic-hidden-dim 16 --critic-layers 2 --num-samples 4",
    "som": "--hidden-dims 16 16 --critic-hidden-dims 16 16 --num-mc-samples 4 --num-samples 4",
}


def stem(part: str, run: str) -> str:
    """The log's name of a run: train + 'meanflowql --eval-workers 4' -> train_meanflowql_eval-workers_4."""
    return "_".join([part, *run.replace("--", "").split()])


@dataclass
class Child:
    """A finished child process: status "ok", "exit N", "timed out after N s" or "not run: ...", and its log."""

    status: str
    seconds: float
    log: Path

    def lines(self, prefix: str) -> list[str]:
        """The lines of its output that start with prefix (scripts/speed.py's CSV rows)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line.strip() for line in text.splitlines() if line.startswith(prefix)]


class Runner:
    """Runs `python ...` children from the repository root, each with its output in OUT/<name>.log, a timeout, and
    none past the check's deadline."""

    def __init__(self, out: Path, env: dict[str, str], budget: float) -> None:
        self.out, self.env, self.deadline = out, env, time.monotonic() + budget

    def run(
        self,
        commands: dict[str, list[str]],
        timeout: float,
        env: dict[str, str] | None = None,
        then: Callable[[str, Child], dict[str, list[str]]] | None = None,
    ) -> dict[str, Child]:
        """All commands at once (name: a log's name, see stem()); each is killed, with its process group, after
        `timeout` seconds or at the deadline. then(name, child), called as each child ends, may return more
        commands: they start at once, under the same rules."""
        pending, running, done = dict(commands), {}, {}
        try:
            while pending or running:
                for name, cmd in pending.items():
                    log, limit = self.out / f"{name}.log", min(timeout, self.deadline - time.monotonic())
                    if limit <= 0:
                        done[name] = Child("not run: the check's --budget was spent", 0.0, log)
                        continue
                    if name == os.environ.get("GPU_CHECK_FAIL"):
                        cmd = [*cmd, "--made-to-fail-by-GPU_CHECK_FAIL"]
                    with open(log, "w") as f:
                        proc = subprocess.Popen(
                            [sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**self.env, **(env or {})}, start_new_session=True,
                        )  # fmt: skip
                    running[name] = (proc, time.monotonic(), limit, log)
                pending = {}
                time.sleep(0.2)
                for name, (proc, start, limit, log) in list(running.items()):
                    seconds = round(time.monotonic() - start, 1)
                    if proc.poll() is not None:
                        done[name] = Child("ok" if proc.returncode == 0 else f"exit {proc.returncode}", seconds, log)
                    elif seconds > limit:
                        kill(proc)
                        why = "" if limit == timeout else " (the end of --budget)"
                        done[name] = Child(f"timed out after {limit:.0f} s{why}", seconds, log)
                    else:
                        continue
                    del running[name]
                    pending |= then(name, done[name]) if then else {}
        finally:  # e.g. Ctrl-C: no child outlives the check
            for proc, *_ in running.values():
                kill(proc)
        return done


def kill(proc: subprocess.Popen) -> None:
    """Kill a child and its process group (its evaluation workers, Inductor's compile workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def toolchain_problem() -> str | None:
    """What Triton, which builds Inductor's CUDA kernel launchers, would miss: a C compiler ($CC, else cc, gcc or
    clang) and this Python's headers; None when both are there."""
    cc = os.environ.get("CC")
    missing = []
    if not (shutil.which(cc) if cc else any(shutil.which(c) for c in ("cc", "gcc", "clang"))):
        missing.append(f"a C compiler (no {'$CC=' + cc if cc else 'cc, gcc or clang'} on PATH)")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        missing.append(f"the Python headers (no {headers})")
    if not missing:
        return None
    return (
        f"--compile on CUDA needs {' and '.join(missing)}; install them, e.g. `apt install build-essential "
        f"python3-dev` (python{sys.version_info.major}.{sys.version_info.minor}-dev for this Python)"
    )


def cudagraph_status(child: Child) -> str:
    """Whether a compiled run replayed its step as CUDA graphs, from its TORCH_LOGS=perf_hints,cudagraphs output."""
    if child.status != "ok":
        return f"unknown: the run failed ({child.status})"
    lines = child.log.read_text(errors="replace").splitlines()
    skipped = [line.strip() for line in lines if "skipping cudagraph" in line]
    if skipped:
        return f"skipped: {skipped[0]}"
    return "ran" if any("Recording cudagraph tree" in line for line in lines) else "not seen: no cudagraphs log line"


def result_rows(child: Child, prefix: str, keys: tuple[str, ...], expected: int) -> list[dict]:
    """A scripts/speed.py child's CSV rows; a failed child, or one that printed fewer than `expected` rows, adds a
    row with the reason."""
    rows = [{**dict(zip(keys, line.split(","))), "status": "ok"} for line in child.lines(prefix)]
    status = child.status
    if status == "ok" and len(rows) < expected:
        status = f"printed {len(rows)} of {expected} result rows"
    return rows + ([] if status == "ok" else [{"status": status}])


def length_flag(algo: str) -> str:
    return "--total-timesteps" if algo == "som" else "--offline-steps"


def train_runs(device: str, smoke: bool, steps: int) -> dict[str, list[str]]:
    """Step 1's training runs: name (e.g. 'ofql --compile') -> the script's flags."""
    runs = {}
    for algo in ALGOS:
        if algo == "som":
            flags = ["--env-id", "InvertedPendulum-v5", "--learning-starts", str(steps // 2), "--eval-episodes", "5"]
        else:
            flags = ["--env-id", BANDIT, "--eval-episodes", "50", "--online-steps", "0"]
            flags += ["--horizon", "1"] if algo == "mvp" else []
        flags += [length_flag(algo), str(steps), "--log-interval", str(steps // 2), "--save-model"]
        flags += ["--cuda" if device == "cuda" else "--no-cuda", *(TINY[algo].split() if smoke else [])]
        if algo == "meanflowql":
            runs[WORKERS] = [*flags, "--eval-interval", str(steps // 2), "--eval-workers", "4"]
        elif not (smoke and algo in SMOKE_COMPILED):  # --cpu-smoke: OFQL's compiled pair alone
            runs[algo] = [*flags, "--eval-interval", str(steps)]
        if not smoke or algo in SMOKE_COMPILED:
            runs[f"{algo} --compile"] = [*flags, "--eval-interval", str(steps), "--compile"]
    return runs


def evaluations(run_dir: Path) -> list[dict]:
    """The eval.jsonl rows of the one run under run_dir (--output-dir)."""
    files = sorted(run_dir.glob("*/eval.jsonl"))
    return [json.loads(line) for line in open(files[-1])] if files else []


def train_and_resume(runner: Runner, device: str, smoke: bool, compile_ok: bool) -> tuple[list[dict], list[dict]]:
    """Steps 1 and 2: the training runs side by side (with the compiled speed steps), each resumed as soon as it
    ends; the train.csv and cudagraphs.csv rows."""
    steps, extra = (10, 5) if smoke else (300, 100)
    runs, rows = train_runs(device, smoke, steps), []
    if not compile_ok:
        rows = [{"part": "train", "run": r, "status": "skipped: no C toolchain"} for r in runs if "--compile" in r]
        runs = {r: flags for r, flags in runs.items() if "--compile" not in r}
    run_dir = {run: runner.out / "runs" / stem("train", run) for run in runs}
    for path in run_dir.values():  # a rerun into the same OUT resumes its own checkpoints only
        shutil.rmtree(path, ignore_errors=True)
    commands = {
        stem("train", r): [f"algos/{r.split()[0]}.py", *f, "--output-dir", str(run_dir[r])] for r, f in runs.items()
    }
    if device == "cuda" and compile_ok:  # one compiled step per script, at speed.py's sizes (fills Inductor's cache)
        commands |= {stem("step", a): ["scripts/speed.py", a, "--compile", "--seconds", "0.5"] for a in ALGOS}
    # the CUDA-graph report reads the compiled runs' logs; Inductor's compile workers are shared among the children
    env = {
        "TORCH_LOGS": "perf_hints,cudagraphs",
        "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // 8)),
    }
    if smoke:
        env["TORCH_COMPILE_OVERRIDE_BACKENDS"] = ">=0:eager"

    def resume(name: str, child: Child) -> dict[str, list[str]]:
        """A training run's resumed run, started as soon as it ended (if it left a checkpoint)."""
        run = next((r for r in runs if stem("train", r) == name), None)
        ckpts = sorted(run_dir[run].glob("*/model.pt")) if run else []
        if not ckpts:
            return {}
        algo = run.split()[0]
        cmd = [f"algos/{algo}.py", "--resume", str(ckpts[-1]), length_flag(algo), str(steps + extra)]
        return {stem("resume", run): [*cmd, "--eval-interval", str(extra)]}

    children = runner.run(commands, TIMEOUTS["train"], env, then=resume)
    for run in runs:
        child, evals = children[stem("train", run)], evaluations(run_dir[run])
        evaluated = [e["step"] for e in evals if e["step"] <= steps]  # the resumed run appends its own after these
        expected = [steps // 2, steps] if run == WORKERS else [steps]
        status = child.status
        if status == "ok" and evaluated != expected:
            status = f"evaluated at steps {evaluated}, not {expected}"
        rows.append({"part": "train", "run": run, "status": status, "seconds": child.seconds, "log": child.log.name})
    for run in runs:
        child, last = children.get(stem("resume", run)), (evaluations(run_dir[run]) or [{}])[-1]
        if child is None:
            rows.append({"part": "resume", "run": run, "status": "not run: the training run left no model.pt"})
            continue
        status = child.status
        if status == "ok" and last.get("step") != steps + extra:  # the resumed part ran to its end and evaluated there
            status = f"its last evaluation is {last}, not at step {steps + extra}"
        row = {"part": "resume", "run": run, "status": status, "seconds": child.seconds}
        rows.append({**row, "final_return": last.get("episodic_return"), "log": child.log.name})

    compiled = [(stem("train", f"{a} --compile"), stem("resume", f"{a} --compile"), stem("step", a)) for a in ALGOS]
    names = [name for names in compiled for name in names if name in children]
    return rows, [{"run": name, "cudagraphs": cudagraph_status(children[name])} for name in names]  # run: its log


def speed_rows(runner: Runner, device: str, seconds: float, smoke: bool, compile_ok: bool) -> list[dict]:
    """Step 4: scripts/speed.py's rows, one measurement after the other."""
    size = ["--device", device, "--seconds", str(seconds), *(["--batch-size", "8"] if smoke else [])]
    runs = {"meanflowql": ["meanflowql"]} if smoke else {algo: [algo] for algo in ALGOS}
    if not smoke and compile_ok:
        runs |= {f"{algo} --compile": [algo, "--compile"] for algo in ALGOS}
    rows = []
    for run, args in runs.items():
        name = stem("speed", run)
        child = runner.run({name: ["scripts/speed.py", *args, *size]}, TIMEOUTS["speed"])[name]
        row = result_rows(child, f"{args[0]},{device},", SPEED_KEYS, expected=1)[-1]
        rows.append({"part": "speed", "run": run, **row, "log": child.log.name})
    return rows


def eval_rows(runner: Runner, device: str, smoke: bool) -> list[dict]:
    """Step 3: an AntMaze evaluation, sequential and vectorised."""
    sizes = "--eval-episodes 4 --eval-steps 10 --batch-size 8" if smoke else "--eval-episodes 50 --eval-steps 200"
    workers = ["0", "2" if smoke else "8"]
    cmd = ["scripts/speed.py", "meanflowql", "--eval", "--device", device, *sizes.split(), "--eval-workers", *workers]
    child = runner.run({"eval_meanflowql": cmd}, TIMEOUTS["eval"])["eval_meanflowql"]
    rows = result_rows(child, f"meanflowql,{device},", EVAL_KEYS, expected=1 + len(workers))
    return [{"part": "eval", "run": "meanflowql", **row, "log": child.log.name} for row in rows]


def share_rows(runner: Runner, device: str, seconds: float, smoke: bool, speed: list[dict]) -> list[dict]:
    """Step 5: N MeanFlowQL speed processes whose timing windows start together (after every one has started)."""
    one = next((r for r in speed if r["run"] == "meanflowql" and r["status"] == "ok"), None)
    rows = [{"part": "share", "run": "1 process", "processes": 1, "status": "ok" if one else "not run: no speed row"}]
    if one:
        rows[0] |= {"total_updates_per_s": one["updates_per_s"], "per_process": one["updates_per_s"], "log": one["log"]}
    for n in (2,) if smoke else (4, 8):
        start_at = time.time() + (4 if smoke else 25)  # imports, CUDA context and warm-up of all N before it
        cmd = ["scripts/speed.py", "meanflowql", "--device", device, "--seconds", str(seconds), "--start-at"]
        cmd += [str(start_at), *(["--batch-size", "8"] if smoke else [])]
        children = runner.run({f"share_{n}_{i}": cmd for i in range(n)}, TIMEOUTS["share"])
        results = [(c, result_rows(c, f"meanflowql,{device},", SPEED_KEYS, expected=1)[-1]) for c in children.values()]
        failed = [(c, r) for c, r in results if r["status"] != "ok"]
        row = {"part": "share", "run": f"{n} processes", "processes": n}
        if failed:
            rows.append({**row, "status": failed[0][1]["status"], "log": failed[0][0].log.name})
            continue
        rates = [float(r["updates_per_s"]) for _, r in results]
        rows.append({**row, "status": "ok", "total_updates_per_s": round(sum(rates), 1),
                     "per_process": " ".join(f"{r:.1f}" for r in rates), "log": f"share_{n}_*.log"})  # fmt: skip
    return rows


def write(out: Path, name: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{name} ({out / name}.csv)\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window of each speed measurement")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds after which no child runs any more")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU, for the test only")
    opts = parser.parse_args()
    if not opts.cpu_smoke and not torch.cuda.is_available():
        sys.exit(
            "error: benchmark.sh gpu needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); on a CPU use benchmark.sh speed"
        )
    device, smoke, seconds = ("cpu", True, 0.5) if opts.cpu_smoke else ("cuda", False, opts.seconds)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (--cpu-smoke)"
    print(f"GPU {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores", flush=True)

    data = out / "data"
    env = {**os.environ, "MINARI_DATASETS_PATH": str(data), "PYTHONPATH": str(ROOT / "scripts")}
    env["WANDB_MODE"] = "offline"
    runner = Runner(out, env, opts.budget)
    if not (data / "meanflow-rl" / "bandit").exists():
        bandit = ["scripts/bandit.py", "--num-episodes", "200" if smoke else "2000"]
        if runner.run({"data_bandit": bandit}, TIMEOUTS["data"])["data_bandit"].status != "ok":
            sys.exit(f"error: the bandit dataset could not be written; see {out / 'data_bandit.log'}")

    problem = None if smoke else toolchain_problem()  # the smoke test's compiled pair runs no Inductor
    tables = {"train": [{"part": "compile", "run": "toolchain", "status": problem}] if problem else []}
    train, tables["cudagraphs"] = train_and_resume(runner, device, smoke, compile_ok=problem is None)
    tables["train"] += train
    write(out, "train", tables["train"])
    write(out, "cudagraphs", tables["cudagraphs"])
    tables["eval"] = eval_rows(runner, device, smoke)  # before speed and share, which the budget cuts first
    write(out, "eval", tables["eval"])
    tables["speed"] = speed_rows(runner, device, seconds, smoke, compile_ok=problem is None)
    write(out, "speed", tables["speed"])
    tables["share"] = share_rows(runner, device, seconds, smoke, tables["speed"])
    write(out, "share", tables["share"])

    failed = [r for rows in tables.values() for r in rows if r.get("status", "ok") != "ok"]
    failed = [r for r in failed if not r["status"].startswith("skipped")]
    for r in failed:
        print(f"FAILED {r['part']} {r['run']}: {r['status']}" + (f" (see {out / r['log']})" if "log" in r else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
