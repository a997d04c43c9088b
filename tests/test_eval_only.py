"""--eval-only --resume CHECKPOINT evaluates a trained policy without training, from the checkpoint alone (no episode
of the dataset is read), and reproduces the run's own evaluation of it; --save-every-eval keeps each checkpoint."""

import json
import shutil

import h5py
import pytest
from conftest import ROOT, import_algo, read_jsonl, run_cli, run_main

TINY = {  # toy networks and schedules; offline on the AntMaze stand-in, SOM online
    "meanflowql": "--actor-hidden-dim 16 --actor-depth 1 --critic-hidden-dim 16 --critic-layers 2 --offline-steps 20",
    "ofql": "--hidden-dim 16 --num-layers 2 --eval-candidates 4 --offline-steps 20",
    "mvp": "--actor-hidden-dim 16 --actor-layers 2 --critic-hidden-dim 16 --critic-layers 2 --num-samples 4 "
    "--offline-steps 20 --online-steps 0",
    "som": "--env-id InvertedPendulum-v5 --hidden-dims 16 16 --critic-hidden-dims 16 16 --num-mc-samples 4 "
    "--num-samples 4 --total-timesteps 20 --learning-starts 10",
}


@pytest.mark.parametrize("algo", sorted(TINY))
def test_eval_only_reproduces_the_runs_evaluations_from_the_checkpoint_alone(algo, minari_root, tmp_path, monkeypatch):
    """In-process, through the command line's parsing (parse_cli, which reads the checkpoint's arguments)."""
    root = tmp_path / "minari"  # a copy of the dataset whose episodes are then emptied: only its metadata is left
    shutil.copytree(minari_root, root)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.chdir(tmp_path)
    module = import_algo(algo)
    flags = ["--env-id", "antmaze-umaze"] * (algo != "som") + TINY[algo].split()
    flags += ["--eval-interval", "10", "--eval-episodes", "3", "--batch-size", "8", "--no-cuda", "--save-model"]
    run_cli(module, [*flags, "--save-every-eval"], monkeypatch)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.glob("model*.pt")} == {"model.pt", "model_10.pt", "model_20.pt"}
    evals = {row["step"]: row for row in read_jsonl(run_dir / "eval.jsonl")}
    for data_file in root.rglob("main_data.hdf5"):
        h5py.File(data_file, "w").close()
    for ckpt, step in (("model.pt", 20), ("model_10.pt", 10)):
        run_cli(module, ["--eval-only", "--resume", str(run_dir / ckpt)], monkeypatch)
        summary = json.loads((run_dir / ckpt.replace(".pt", "_eval.json")).read_text())
        assert summary["eval_episodes"] == 3 and summary["checkpoint"] == str(run_dir / ckpt)
        assert {k: summary[k] for k in evals[step]} == evals[step]  # the same episodes, the same policy noise
    assert sorted(evals) == [10, 20] and len(read_jsonl(run_dir / "eval.jsonl")) == 2  # eval-only logs nothing


def test_eval_only_and_save_every_eval_refuse_what_they_cannot_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--eval-only", "--save-every-eval", "--eval-episodes", "0"]
    proc = run_main(ROOT / "algos/ofql.py", flags, monkeypatch, capsys)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--eval-only evaluates a checkpoint: give it with --resume PATH/model.pt" in proc.stderr
    assert "--save-every-eval keeps the checkpoints of --save-model: give both" in proc.stderr
    assert "--eval-only needs --eval-episodes >= 1" in proc.stderr
