"""End-to-end tests of algos/meanflowql.py on tiny local datasets: smoke runs, resume, bad input."""

import json
import math
import shutil
from pathlib import Path

import torch
from conftest import ROOT, import_algo, read_jsonl, run_cli, run_main, run_script

mfql = import_algo("meanflowql")
SCRIPT = str(ROOT / "algos" / "meanflowql.py")
TINY = ["--actor-hidden-dim", "32", "--actor-depth", "1", "--critic-hidden-dim", "32", "--critic-layers", "2",
        "--batch-size", "16", "--log-interval", "10", "--eval-episodes", "1"]  # fmt: skip


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir


def check_run_dir(run_dir: Path, total_steps: int, eval_keys: set[str]) -> None:
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "train.jsonl", "eval.jsonl", "model.pt"}
    train = read_jsonl(run_dir / "train.jsonl")
    assert [r["step"] for r in train] == list(range(10, total_steps + 1, 10))
    assert {r["phase"] for r in train} == {"offline", "online"}
    for row in train:
        assert all(math.isfinite(row[k]) for k in (*mfql.METRICS, "alpha", "actor_lr", "sps")), row
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert evals[-1]["step"] == total_steps and set(evals[-1]) == {"step", *eval_keys}
    checkpoint = torch.load(run_dir / "model.pt", weights_only=False)
    assert checkpoint["agent"]["step"] == total_steps
    assert len(checkpoint["online_buffer"]["rewards"]) == 20  # the online transitions travel with the checkpoint


def test_smoke_minari_antmaze_offline_to_online(minari_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    monkeypatch.chdir(tmp_path)
    args = ["--env-id", "antmaze-umaze", "--offline-steps", "30", "--online-steps", "20", "--eval-interval", "25",
            "--save-model", *TINY]  # fmt: skip
    run_cli(mfql, args, monkeypatch)
    stdout = capsys.readouterr().out
    assert "D4RL/antmaze/umaze-v1" in stdout and "[online 50/50]" in stdout
    run_dir = only_run_dir(tmp_path)
    check_run_dir(run_dir, 50, {"episodic_return", "episodic_length", "success_rate", "normalized_score"})
    assert [r["step"] for r in read_jsonl(run_dir / "eval.jsonl")] == [25, 50]


def test_smoke_ogbench_cube_double_with_offline_wandb(ogbench_dir, tmp_path):
    args = [SCRIPT, "--env-id", "cube-double-play-singletask-task2-v0", "--dataset-dir", str(ogbench_dir),
            "--offline-steps", "20", "--online-steps", "20", "--eval-interval", "40", "--save-model", "--track",
            *TINY]  # fmt: skip
    proc = run_script(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    check_run_dir(run_dir, 40, {"episodic_return", "episodic_length", "success_rate"})
    for row in read_jsonl(run_dir / "train.jsonl"):  # the losses on OGBench's validation split, as FQL logs them
        assert all(math.isfinite(row[f"val/{k}"]) for k in mfql.METRICS), row
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["alpha"], config["time_steps"], config["discount"]) == (120.0, 50, 0.995)  # paper Table 7
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb offline run missing"


def test_resume_reproduces_an_uninterrupted_run(minari_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    save = mfql.save_checkpoint

    def save_and_keep(path, step, *rest, **state):  # model.pt is overwritten at every evaluation: keep each one
        save(path, step, *rest, **state)
        shutil.copy(path, f"{path}.{step}")

    monkeypatch.setattr(mfql, "save_checkpoint", save_and_keep)
    common = dict(env_id="antmaze-umaze", offline_steps=30, eval_interval=15, eval_episodes=1, log_interval=5,
                  batch_size=16, save_model=True, actor_hidden_dim=32, actor_depth=1, critic_hidden_dim=32,
                  critic_layers=2, alpha_interval=4, alpha_warmup_ratio=0.0)  # fmt: skip
    mfql.main(mfql.Args(exp_name="straight", **common))
    straight = only_run_dir(tmp_path)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "model.pt.15", resumed / "model.pt")
    mfql.main(mfql.Args(exp_name="straight", resume=str(resumed / "model.pt"), **common))

    a = torch.load(straight / "model.pt", weights_only=False)["agent"]
    b = torch.load(resumed / "model.pt", weights_only=False)["agent"]
    assert a["step"] == b["step"] == 30
    for name in ("actor", "critic", "critic_target"):
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), f"{name}.{key} differs after resume"
    assert torch.equal(a["loss_window"], b["loss_window"]) and torch.equal(a["alpha"], b["alpha"])
    assert read_jsonl(straight / "eval.jsonl")[-1] == read_jsonl(resumed / "eval.jsonl")[-1]
    assert [r["step"] for r in read_jsonl(resumed / "train.jsonl")] == [20, 25, 30]


def test_unknown_env_id_lists_the_aliases(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    proc = run_main(SCRIPT, ["--env-id", "antmaze-gigantic"], monkeypatch, capsys)
    assert proc.returncode != 0
    assert "unknown --env-id 'antmaze-gigantic'" in proc.stderr and "antmaze-large-diverse" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_minari_dataset_says_where_and_how(tmp_path):
    proc = run_script([SCRIPT, "--env-id", "antmaze-large"], cwd=tmp_path, env={"MINARI_DATASETS_PATH": str(tmp_path)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for text in ("D4RL/antmaze/large-play-v1", str(tmp_path), "README.md, section 'Datasets'"):
        assert text in proc.stderr


def test_missing_ogbench_dataset_says_where_and_how(tmp_path):
    proc = run_script(
        [SCRIPT, "--env-id", "cube-single-play-singletask-v0", "--dataset-dir", str(tmp_path)], cwd=tmp_path
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    for text in ("cube-single-play-v0", str(tmp_path), "README.md, section 'Datasets'"):
        assert text in proc.stderr
