"""The one-command GPU check (`bash benchmark.sh gpu`): on a CUDA machine, in about 8 minutes,

1. train  each script for a few hundred steps on CUDA with --save-model, then --resume it for 100 more: offline on the
          project's bandit (scripts/bandit.py, generated here; MVP with --horizon 1), SOM online on
          InvertedPendulum-v5; checks that both parts ran and the resumed run evaluated at its last step;
2. speed  updates/s and ms per action, eager and --compile, for each script (scripts/speed.py);
3. eval   one evaluation of 50 AntMaze-large episodes (200 steps each) with MeanFlowQL's policy, sequentially and
          vectorised (scripts/speed.py --eval);
4. share  the aggregate updates/s of 1, 4 and 8 MeanFlowQL processes training at once on the one GPU (eager; their
          timing windows start together).

Writes OUT/{train,speed,eval,share}.csv (OUT: results/gpu) and prints them with the GPU, torch and CUDA versions.
Needs nothing beyond requirements.txt; fails at once, with a message, where CUDA is missing. --cpu-smoke runs every
step at toy sizes on the CPU: for tests/test_gpu_check.py only, its numbers mean nothing.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("meanflowql", "ofql", "mvp", "som")
BANDIT = "meanflow-rl/bandit/two-hills-v0"


def run(commands: dict[str, list[str]], env: dict, out: Path, part: str) -> dict[str, tuple[int, float]]:
    """`python command` for each name, all at once (the GPU has room), each with its output in OUT/{part}_{name}.log;
    their exit codes and wall times."""
    procs, done = {}, {}
    for name, cmd in commands.items():
        log = open(out / f"{part}_{name}.log", "w")
        proc = subprocess.Popen([sys.executable, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        procs[name] = (proc, time.perf_counter())
    while len(done) < len(procs):
        for name, (proc, start) in procs.items():
            if name not in done and proc.poll() is not None:
                done[name] = (proc.returncode, round(time.perf_counter() - start, 1))
        time.sleep(0.2)
    return done


def train_and_resume(out: Path, device: str, smoke: bool, env: dict) -> list[dict]:
    """Step 1: the four scripts trained side by side, then resumed side by side."""
    steps, extra = (20, 10) if smoke else (300, 100)
    tiny = {  # --cpu-smoke: toy networks
        "meanflowql": "--actor-hidden-dim 16 --actor-depth 1 --critic-hidden-dim 16 --critic-layers 2",
        "ofql": "--hidden-dim 16 --num-layers 2 --eval-candidates 4",
        "mvp": "--actor-hidden-dim 16 --actor-layers 2 --critic-hidden-dim 16 --critic-layers 2 --num-samples 4",
        "som": "--hidden-dims 16 16 --critic-hidden-dims 16 16 --num-mc-samples 4 --num-samples 4",
    }
    train, length = {}, {}
    for algo in ALGOS:
        if algo == "som":
            flags = ["--env-id", "InvertedPendulum-v5", "--learning-starts", str(steps // 2), "--eval-episodes", "5"]
            length[algo] = "--total-timesteps"
        else:
            flags = ["--env-id", BANDIT, "--eval-episodes", "50", "--online-steps", "0"]
            flags += ["--horizon", "1"] if algo == "mvp" else []
            length[algo] = "--offline-steps"
        flags += [length[algo], str(steps), "--eval-interval", str(steps), "--log-interval", str(steps // 2)]
        flags += [
            "--save-model",
            "--output-dir",
            str(out / "runs" / algo),
            "--cuda" if device == "cuda" else "--no-cuda",
        ]
        train[algo] = [f"algos/{algo}.py", *flags, *(tiny[algo].split() if smoke else [])]
    rows = [
        {"algo": a, "part": "train", "exit_code": rc, "seconds": s}
        for a, (rc, s) in run(train, env, out, "train").items()
    ]
    ckpts = {algo: sorted((out / "runs" / algo).glob("*/model.pt"))[-1:] for algo in ALGOS}
    resume = {
        a: [f"algos/{a}.py", "--resume", str(c[0]), length[a], str(steps + extra), "--eval-interval", str(extra)]
        for a, c in ckpts.items()
        if c
    }
    for algo, (rc, seconds) in run(resume, env, out, "resume").items():
        evals = [json.loads(line) for line in open(ckpts[algo][0].parent / "eval.jsonl")]
        last = evals[-1] if evals else {}
        ok = rc == 0 and last.get("step") == steps + extra  # the resumed part ran to its end and evaluated there
        rows.append(
            {
                "algo": algo,
                "part": "resume",
                "exit_code": rc if ok else f"{rc} (last eval {last})",
                "seconds": seconds,
                "final_return": last.get("episodic_return"),
            }
        )
    return rows + [{"algo": a, "part": "resume", "exit_code": "no model.pt"} for a, c in ckpts.items() if not c]


def speed_rows(device: str, seconds: float, smoke: bool, extra: list[str]) -> list[dict]:
    """Step 2 (and 4's per-process rows): scripts/speed.py's CSV rows."""
    keys = ("algo", "device", "mode", "batch", "updates_per_s", "ms_per_action")
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/speed.py",
            *extra,
            "--device",
            device,
            "--seconds",
            str(seconds),
            *(["--batch-size", "8"] if smoke else []),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        return [{"algo": extra[0], "mode": " ".join(extra[1:]), "error": proc.stderr.strip().splitlines()[-1]}]
    return [dict(zip(keys, line.split(","))) for line in proc.stdout.strip().splitlines()[-1:]]


def share(device: str, seconds: float, smoke: bool) -> list[dict]:
    """Step 4: N MeanFlowQL speed processes whose timing windows start together (after every one has started)."""
    rows = []
    for n in (1, 2) if smoke else (1, 4, 8):
        start_at = time.time() + (4 if smoke else 40)  # imports, CUDA context and warm-up of all N before it
        cmd = [
            "scripts/speed.py",
            "meanflowql",
            "--device",
            device,
            "--seconds",
            str(seconds),
            "--start-at",
            str(start_at),
            *(["--batch-size", "8"] if smoke else []),
        ]
        procs = [
            subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(n)
        ]
        rates = [float(p.communicate()[0].strip().splitlines()[-1].split(",")[4]) for p in procs]
        rows.append(
            {
                "processes": n,
                "total_updates_per_s": round(sum(rates), 1),
                "per_process": " ".join(f"{r:.1f}" for r in rates),
            }
        )
    return rows


def write(out: Path, name: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{name} ({out / name}.csv)\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window of each speed measurement")
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
    if not (data / "meanflow-rl" / "bandit").exists():
        bandit = [str(ROOT / "scripts" / "bandit.py"), "--num-episodes", "200" if smoke else "2000"]
        if run({"bandit": bandit}, env, out, "data")["bandit"][0] != 0:
            sys.exit(f"error: the bandit dataset could not be written; see {out / 'data_bandit.log'}")
    write(out, "train", train_and_resume(out, device, smoke, env))

    modes = [[]] if smoke else [[], ["--compile"]]  # compiling on a CPU takes minutes: the smoke test skips it
    write(
        out,
        "speed",
        [row for algo in ALGOS for mode in modes for row in speed_rows(device, seconds, smoke, [algo, *mode])],
    )

    sizes = "--eval-episodes 4 --eval-steps 10 --batch-size 8" if smoke else "--eval-episodes 50 --eval-steps 200"
    workers = ["0", "2" if smoke else "8"]
    cmd = ["scripts/speed.py", "meanflowql", "--eval", "--device", device, *sizes.split(), "--eval-workers", *workers]
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT)
    keys = ("algo", "device", "mode", "episodes", "steps", "seconds", "speedup")
    rows = [dict(zip(keys, line.split(","))) for line in proc.stdout.strip().splitlines()]
    write(out, "eval", rows or [{"error": proc.stderr.strip().splitlines()[-1]}])

    write(out, "share", share(device, seconds, smoke))


if __name__ == "__main__":
    main()
