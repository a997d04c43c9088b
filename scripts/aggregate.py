"""Reports of benchmark.sh: a learning sweep's eval.jsonl files -> tables and curves; speed rows -> speed.csv.

    python scripts/aggregate.py learn results   # the sweep benchmark.sh wrote: learn_jobs.tsv, learn_sweep.txt
    python scripts/speed.py ofql --device cpu | python scripts/aggregate.py speed results

`learn` writes, next to learn_jobs.tsv:
  learn_runs.csv    one row per job: status (ok / failed / missing), exit code, log (relative to the sweep's directory),
                    final and best metric, final return, return averaged over the evaluations, wall time
  learn.csv         one row per (task, algorithm): final and best metric and final return, mean and std over the seeds
                    that finished; the final metric's interquartile mean with a 95% stratified-bootstrap confidence
                    interval (the rliable protocol, Agarwal et al. 2021); and the final and mean return minus BC's,
                    paired by seed (see paired_vs_bc)
  learn.md          the same as a markdown table, naming every failed or missing run
  learn_<task>.png  learning curves, mean ± std over seeds (only when matplotlib is installed)
The metric is the success rate where the environment reports success (OGBench tasks), else the episodic return.
"final" is a run's last evaluation; "best" is its best evaluation, which selects on the evaluation episodes themselves
and is therefore optimistic. Exits with status 1 when a job failed or is missing.

`speed` copies the rows of scripts/speed.py from stdin to stdout and to speed.csv, adding the machine description.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats

ALGO_LABELS = {
    "meanflowql": "MeanFlowQL",
    "ofql": "OFQL",
    "mvp": "MVP",
    "bc": "BC (OFQL, η = 0, one candidate)",
    "som": "SOM",
}
SPEED_COLUMNS = ["algo", "device", "mode", "batch", "updates_per_s", "ms_per_action", "precision"]


def machine() -> dict[str, str]:
    """CPU model, logical cores, torch version and GPU name of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = models[0] if models else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__, "gpu": gpu}


def speed(out: Path) -> None:
    import torch

    desc = {**machine(), "threads": str(torch.get_num_threads())}  # speed.py inherits this process's environment
    print("# " + " | ".join(f"{k} {v}" for k, v in desc.items()))
    print(",".join(SPEED_COLUMNS), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "speed.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPEED_COLUMNS + list(desc))
        for line in sys.stdin:
            print(line, end="", flush=True)
            fields = line.strip().split(",")
            if len(fields) == len(SPEED_COLUMNS):
                writer.writerow(fields + list(desc.values()))
                f.flush()  # rows survive a later measurement that fails
    print(f"wrote {path}")


@dataclass
class Run:
    name: str
    algo: str
    task: str
    seed: int
    kind: str  # offline (x axis: gradient steps) or online (environment steps)
    dir: Path
    status: str = "missing"  # ok, failed (nonzero exit), or missing (not run, running, or interrupted)
    exit_code: int | None = None
    wall_s: float | None = None
    metric: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, metric) of every evaluation
    returns: list[tuple[int, float]] = field(default_factory=list)  # (step, episodic return) of every evaluation

    @property
    def log(self) -> Path:
        return self.dir / "train.log"

    @property
    def final(self) -> float:
        return self.curve[-1][1] if self.curve else math.nan

    @property
    def best(self) -> float:
        return max(v for _, v in self.curve) if self.curve else math.nan

    @property
    def final_return(self) -> float:
        return self.returns[-1][1] if self.returns else math.nan

    @property
    def mean_return(self) -> float:
        """The return averaged over every evaluation: the area under the learning curve, which also counts speed."""
        return sum(v for _, v in self.returns) / len(self.returns) if self.returns else math.nan


def read_run(row: dict[str, str]) -> Run:
    run = Run(row["name"], row["algo"], row["task"], int(row["seed"]), row["kind"], Path(row["dir"]))
    if (run.dir / "exit_code").exists():
        run.exit_code = int((run.dir / "exit_code").read_text())
    if (run.dir / "wall_s").exists():
        run.wall_s = float((run.dir / "wall_s").read_text())
    if (run.dir / "DONE").exists():
        run.status = "ok"
        rows = [json.loads(x) for p in sorted(run.dir.glob("runs/*/eval.jsonl")) for x in p.read_text().splitlines()]
        run.metric = "success_rate" if any("success_rate" in r for r in rows) else "episodic_return"
        run.curve = sorted((r["step"], float(r[run.metric])) for r in rows if run.metric in r)
        run.returns = sorted((r["step"], float(r["episodic_return"])) for r in rows if "episodic_return" in r)
    elif run.exit_code:
        run.status = "failed"
    return run


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def decimals(value: float) -> int:
    """1 decimal for values of 10 and more (returns of hundreds, success in %), 3 below (a bandit's returns near 1)."""
    return 1 if math.isnan(value) or abs(value) >= 10 else 3


def fmt(mean: float, std: float, metric: str) -> str:
    """Success rates in percent, returns as they are; '—' when nothing finished."""
    if math.isnan(mean):
        return "—"
    scale = 100 if metric == "success_rate" else 1
    d = decimals(mean * scale)
    return f"{mean * scale:.{d}f}" + ("" if math.isnan(std) else f" ± {std * scale:.{d}f}")


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (rliable's IQM, scipy's trim_mean at 0.25)."""
    return float(scipy.stats.trim_mean(values, 0.25))


def stratified_bootstrap_ci(
    strata: list[list[float]], statistic=iqm, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile confidence interval of `statistic` over the pooled runs, resampling the runs of each stratum (task)
    with replacement, independently (rliable's stratified bootstrap). One stratum: the plain bootstrap over seeds."""
    rng = np.random.default_rng(seed)
    strata = [np.asarray(s, dtype=float) for s in strata if len(s)]
    if not strata:
        return math.nan, math.nan
    stats = [statistic(np.concatenate([rng.choice(s, len(s)) for s in strata])) for _ in range(reps)]
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def paired_vs_bc(runs: list[Run], bc_runs: list[Run], prefix: str) -> dict[str, float | int]:
    """`prefix` (final_return or mean_return) minus BC's on the same task, paired by seed: a seed's runs share the
    dataset and the evaluation starts (env seeds seed + 10_000 + i), so the difference removes the spread of the
    starts. Returns the mean and std of the differences, how many seeds are better, of how many pairs, and the
    one-sided sign-test p-value P(at least that many better | each seed equally likely better or worse), ties
    dropped."""
    bc = {r.seed: getattr(r, prefix) for r in bc_runs if r.status == "ok"}
    diffs = [getattr(r, prefix) - bc[r.seed] for r in runs if r.status == "ok" and r.seed in bc]
    diffs = [d for d in diffs if not math.isnan(d)]
    mean, std = mean_std(diffs)
    better, untied = sum(d > 0 for d in diffs), sum(d != 0 for d in diffs)
    p = sum(math.comb(untied, k) for k in range(better, untied + 1)) / 2**untied if untied else math.nan
    keys = ("mean", "std", "better", "pairs", "p")
    return {f"{prefix}_vs_bc_{k}": v for k, v in zip(keys, (mean, std, better, len(diffs), p))}


def fmt_vs_bc(s: dict[str, object], prefix: str) -> str:
    mean, std, better, pairs, p = (s[f"{prefix}_vs_bc_{k}"] for k in ("mean", "std", "better", "pairs", "p"))
    if not pairs:
        return "—"
    d = decimals(max(abs(mean), 0 if math.isnan(std) else std))
    test = "all tied" if math.isnan(p) else f"p {p:.2f}"  # no untied pair: the sign test has nothing to count
    return f"{mean:+.{d}f}" + ("" if math.isnan(std) else f" ± {std:.{d}f}") + f" ({better}/{pairs}, {test})"


def summarise(runs: list[Run], bc_runs: list[Run], out: Path) -> dict[str, object]:
    """One (task, algorithm) group; bc_runs is the BC group of the same task (empty for BC itself and SOM)."""
    ok = [r for r in runs if r.status == "ok" and r.curve]
    final, best = mean_std([r.final for r in ok]), mean_std([r.best for r in ok])
    final_iqm = iqm(np.array([r.final for r in ok])) if ok else math.nan
    final_ci = stratified_bootstrap_ci([[r.final for r in ok]])
    final_return = mean_std([r.final_return for r in ok if not math.isnan(r.final_return)])
    notes = [f"s{r.seed} failed (exit {r.exit_code}, {r.log.relative_to(out)})" for r in runs if r.status == "failed"]
    notes += [f"s{r.seed} missing (not finished)" for r in runs if r.status == "missing"]
    notes += [f"s{r.seed} has no evaluation" for r in runs if r.status == "ok" and not r.curve]
    return {
        "task": runs[0].task,
        "algo": runs[0].algo,
        "metric": ok[0].metric if ok else "",
        "seeds_ok": len(ok),
        "seeds": len(runs),
        "final_mean": final[0],
        "final_std": final[1],
        "final_iqm": final_iqm,
        "final_iqm_ci_low": final_ci[0],
        "final_iqm_ci_high": final_ci[1],
        "best_mean": best[0],
        "best_std": best[1],
        "final_return_mean": final_return[0],
        "final_return_std": final_return[1],
        **paired_vs_bc(runs, bc_runs, "final_return"),
        **paired_vs_bc(runs, bc_runs, "mean_return"),
        "final_step": ok[0].curve[-1][0] if ok else "",
        "notes": "; ".join(notes),
    }


def fmt_iqm(s: dict[str, object]) -> str:
    if math.isnan(s["final_iqm"]):
        return "—"
    scale = 100 if s["metric"] == "success_rate" else 1
    values = (s["final_iqm"], s["final_iqm_ci_low"], s["final_iqm_ci_high"])
    d = decimals(values[0] * scale)
    return "{0:.{3}f} [{1:.{3}f}, {2:.{3}f}]".format(*(v * scale for v in values), d)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows
        )


def markdown(summaries: list[dict[str, object]], command: str, plots: list[Path]) -> str:
    desc = machine()
    lines = [
        "# Learning results",
        "",
        f"Sweep: `{command}`  ",
        f"Report written on: {desc['cpu']}, {desc['cores']} cores, torch {desc['torch']}, GPU: {desc['gpu']}",
        "",
        "**final**: the last evaluation of each run; **best**: each run's best evaluation (selected on the evaluation",
        "episodes themselves, so optimistic); both as mean ± sample std over the seeds that finished. Success in %.",
        "**final IQM [95% CI]**: the interquartile mean of the final evaluations over the seeds, with a percentile",
        "bootstrap confidence interval over seeds (2000 resamples; the rliable protocol, Agarwal et al. 2021). With",
        "few seeds the interval is wide and coarse: read it as such.",
        "**final return**: the episodic return of the last evaluation (for success tasks it also tells how fast).",
        "**vs BC**: the final return, and the return averaged over every evaluation (the area under the curve),",
        "minus BC's for the same seed (same data and evaluation starts): mean ± std over the seeds, (seeds better than",
        "BC / pairs, one-sided sign-test p-value of that count).",
        "",
        "| task | algorithm | metric | final | final IQM [95% CI] | best | final return | final return vs BC "
        "| mean return vs BC | seeds | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        metric = {"success_rate": "success (%)", "episodic_return": "return"}.get(str(s["metric"]), "—")
        final = fmt(s["final_mean"], s["final_std"], s["metric"])
        final_iqm = fmt_iqm(s)
        best = fmt(s["best_mean"], s["best_std"], s["metric"])
        final_return = fmt(s["final_return_mean"], s["final_return_std"], "episodic_return")
        vs_bc = " | ".join(fmt_vs_bc(s, prefix) for prefix in ("final_return", "mean_return"))
        label = ALGO_LABELS.get(str(s["algo"]), s["algo"])
        lines.append(
            f"| {s['task']} | {label} | {metric} | {final} | {final_iqm} | {best} | {final_return} | {vs_bc} "
            f"| {s['seeds_ok']}/{s['seeds']} | {s['notes']} |"
        )
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def plot(groups: dict[tuple[str, str], list[Run]], out: Path) -> list[Path]:
    """One figure per task: mean ± std over the finished seeds at the steps they all evaluated."""
    for stale in out.glob("learn_*.png"):
        stale.unlink()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no learning-curve plots (pip install matplotlib)")
        return []
    paths = []
    for task in dict.fromkeys(task for task, _ in groups):
        fig, ax = plt.subplots(figsize=(6, 4))
        metric, kind = "", "offline"
        for (t, algo), runs in groups.items():
            curves = [dict(r.curve) for r in runs if t == task and r.status == "ok" and r.curve]
            if not curves:
                continue
            metric, kind = runs[0].metric, runs[0].kind
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            stats = [mean_std([c[s] for c in curves]) for s in steps]
            mean = [m for m, _ in stats]
            std = [0.0 if math.isnan(sd) else sd for _, sd in stats]
            ax.plot(steps, mean, marker=".", label=f"{ALGO_LABELS.get(algo, algo)} ({len(curves)} seeds)")
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("gradient steps" if kind == "offline" else "environment steps")
        if metric == "success_rate":
            ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(("success rate" if metric == "success_rate" else "episodic return") + " (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"learn_{task}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def learn(out: Path) -> int:
    with open(out / "learn_jobs.tsv", newline="") as f:
        runs = [read_run(row) for row in csv.DictReader(f, delimiter="\t")]
    command = (out / "learn_sweep.txt").read_text().strip()
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.algo), []).append(run)
    summaries = [
        summarise(g, groups.get((task, "bc"), []) if algo != "bc" else [], out) for (task, algo), g in groups.items()
    ]

    run_rows = [
        {"task": r.task, "algo": r.algo, "seed": r.seed, "status": r.status, "exit_code": r.exit_code,
         "log": r.log.relative_to(out), "metric": r.metric, "final": r.final, "best": r.best,
         "final_return": r.final_return, "mean_return": r.mean_return,
         "final_step": r.curve[-1][0] if r.curve else "", "evaluations": len(r.curve), "wall_s": r.wall_s}
        for r in runs
    ]  # fmt: skip
    write_csv(out / "learn_runs.csv", run_rows)
    write_csv(out / "learn.csv", summaries)
    plots = plot(groups, out)
    (out / "learn.md").write_text(markdown(summaries, command, plots))

    counts = {s: sum(r.status == s for r in runs) for s in ("ok", "failed", "missing")}
    print(f"[learn] {counts['ok']} ok, {counts['failed']} failed, {counts['missing']} missing of {len(runs)} jobs")
    for r in runs:
        if r.status == "failed":
            last = r.log.read_text().strip().splitlines()[-1:] if r.log.exists() else []
            print(f"  FAILED  {r.name}: exit {r.exit_code}, log {r.log}" + "".join(f"\n          {s}" for s in last))
        elif r.status == "missing":
            print(f"  MISSING {r.name}: not finished ({r.dir})")
    print(f"[learn] wrote {out / 'learn.md'}, learn.csv, learn_runs.csv" + (", learn_*.png" if plots else ""))
    return int(counts["ok"] < len(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="report", required=True)
    p_learn = sub.add_parser("learn", help="aggregate the eval.jsonl files of a benchmark.sh learn sweep")
    p_learn.add_argument("out", type=Path, help="the directory holding learn_jobs.tsv and learn_sweep.txt")
    p_speed = sub.add_parser("speed", help="speed rows on stdin -> OUT/speed.csv with the machine description")
    p_speed.add_argument("out", type=Path)
    opts = parser.parse_args()
    if opts.report == "speed":
        speed(opts.out)
    else:
        sys.exit(learn(opts.out.resolve()))


if __name__ == "__main__":
    main()
