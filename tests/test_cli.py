"""The four scripts' shared run plumbing: argument checks, checkpoint errors, resume semantics, run directories,
Ctrl-C and the sps measurement."""

import dataclasses
import inspect
import json
import os
import re
import runpy
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, import_algo, read_jsonl, run_main, run_script

ALGOS = ("meanflowql", "ofql", "mvp", "som")
mfql = import_algo("meanflowql")
TINY = dict(actor_hidden_dim=16, actor_depth=1, critic_hidden_dim=16, critic_layers=1, batch_size=8, cuda=False)


def script(algo: str) -> str:
    return str(ROOT / "algos" / f"{algo}.py")


SHARED_BLOCKS = {"data layer": ALGOS[:3], "replay buffer": ALGOS[:2], "run plumbing": ALGOS}  # -> the files holding it


@pytest.mark.parametrize("block", sorted(SHARED_BLOCKS))
def test_the_shared_blocks_are_the_same_in_every_script_that_holds_them(block):
    """Duplication across the scripts is by design: a fix in one copy must reach the others."""
    pattern = re.compile(rf"^# --- shared {block}.*?^# --- end of the shared {block} ---$", re.S | re.M)
    copies = [pattern.search((ROOT / "algos" / f"{a}.py").read_text()) for a in SHARED_BLOCKS[block]]
    assert all(copies) and len({c.group(0) for c in copies}) == 1


@pytest.mark.parametrize("algo", ALGOS)
def test_every_flag_has_its_help_text_on_its_line(algo):
    """tyro takes a flag's help from the comment on the flag's line: a flag without one, or one that the formatter
    wrapped over several lines, shows no help in --help."""
    module = import_algo(algo)
    lines = inspect.getsource(module.Args).splitlines()
    for f in dataclasses.fields(module.Args):
        (line,) = [line for line in lines if line.startswith(f"    {f.name}: ")]
        assert re.search(r"\S  # \S", line), line


@pytest.mark.parametrize("algo", ALGOS)
def test_bad_arguments_fail_at_once_with_every_problem_named(algo, tmp_path, monkeypatch, capsys):
    steps = "--total-timesteps" if algo == "som" else "--offline-steps"
    rate = "--ema-rho" if algo == "ofql" else "--tau"
    monkeypatch.chdir(tmp_path)
    proc = run_main(script(algo), ["--batch-size", "0", "--discount", "1.5", "--exp-name", "a/b", steps, "-3", rate,
                                   "nan"], monkeypatch, capsys)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    for text in ("--batch-size must be >= 1 (got 0)", "--discount must be in (0, 1] (got 1.5)", f"{steps} must be >= 1",
                 "--exp-name must be one path component", f"{rate} must be a finite number"):  # fmt: skip
        assert text in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("algo", ALGOS)
def test_wrong_checkpoints_are_refused_before_any_data_is_loaded(algo, tmp_path, monkeypatch, capsys):
    module = import_algo(algo)
    other = "ofql" if algo == "meanflowql" else "meanflowql"
    torch.save({"algo": other, "args": {}}, tmp_path / "other.pt")
    torch.save({"step": 3}, tmp_path / "old.pt")
    cases = {
        "missing.pt": "no such file",
        "old.pt": f"is not a checkpoint of algos/{algo}.py",
        "other.pt": f"is a checkpoint of algos/{other}.py, not of algos/{algo}.py",
    }
    for name, message in cases.items():
        with pytest.raises(module.UsageError, match=re.escape(message)):
            module.read_checkpoint(str(tmp_path / name))
    monkeypatch.chdir(tmp_path)
    proc = run_main(
        script(algo), ["--resume", str(tmp_path / "other.pt"), "--env-id", "NoSuchEnv-v0"], monkeypatch, capsys
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "is a checkpoint of" in proc.stderr


@pytest.fixture(scope="module")
def finished_run(minari_root, tmp_path_factory) -> dict:
    """A tiny MeanFlowQL run of 20 offline steps with a checkpoint every 10, and a copy of the step-10 checkpoint."""
    cwd = tmp_path_factory.mktemp("run")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "cuda"]
    proc = run_script([script("meanflowql"), "--env-id", "antmaze-umaze", "--offline-steps", "20", "--eval-interval",
                       "10", "--log-interval", "5", "--eval-episodes", "0", "--save-model", "--no-cuda", *flags],
                      cwd=cwd, env={"MINARI_DATASETS_PATH": str(minari_root)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (cwd / "runs").iterdir()
    return {"cwd": cwd, "run_dir": run_dir, "env": {"MINARI_DATASETS_PATH": str(minari_root)}}


def test_run_names_are_unique_and_sortable(finished_run, tmp_path):
    assert re.fullmatch(r"antmaze-umaze__meanflowql__1__\d{8}-\d{6}", finished_run["run_dir"].name)
    dirs = [
        mfql.make_run_dir(mfql.Args(output_dir=str(tmp_path / "out"), env_id="D4RL/antmaze/umaze-v1", exp_name="x"))
        for _ in range(3)
    ]
    assert len(set(dirs)) == 3 and all(os.path.isdir(d) for d in dirs)
    assert dirs[1] == dirs[0] + "-2" and dirs[2] == dirs[0] + "-3" and sorted(dirs) == dirs


def test_resume_restores_the_checkpoint_arguments_and_refuses_new_network_sizes(finished_run, tmp_path, monkeypatch,
                                                                                capsys):  # fmt: skip
    ckpt = finished_run["run_dir"] / "model.pt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", finished_run["env"]["MINARI_DATASETS_PATH"])
    common = dict(monkeypatch=monkeypatch, capsys=capsys)
    proc = run_main(script("meanflowql"), ["--resume", str(ckpt)], **common)  # finished: nothing to do
    assert proc.returncode == 0 and "the run finished at step 20 of 20; nothing to do" in proc.stdout
    before = {p.name: p.read_bytes() for p in finished_run["run_dir"].iterdir()}
    proc = run_main(script("meanflowql"), ["--resume", str(ckpt), "--critic-hidden-dim", "64"], **common)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--critic-hidden-dim 64 differs from the checkpoint's 16; a resumed run keeps it" in proc.stderr
    proc = run_main(script("meanflowql"), ["--resume", str(ckpt), "--env-id", "antmaze-medium-play"], **common)
    assert proc.returncode == 1 and "--env-id antmaze-medium-play differs from the checkpoint's" in proc.stderr
    assert before == {p.name: p.read_bytes() for p in finished_run["run_dir"].iterdir()}  # left alone

    with pytest.raises(mfql.UsageError, match="--seed 2 differs from the checkpoint's 1; a resumed run keeps it"):
        mfql.main(mfql.Args(resume=str(ckpt), seed=2))  # in-process: the arguments that differ from the defaults
    assert before == {p.name: p.read_bytes() for p in finished_run["run_dir"].iterdir()}

    # the network flags are not given again: they come from the checkpoint (tyro's default); a new step count applies
    # with a notice, and so does a flag given at its default value (--eval-interval, 10 in the checkpoint)
    with open(finished_run["run_dir"] / "train.jsonl", "a") as f:
        f.write('{"step": 25}\n')  # a row past the checkpoint, as from a run killed after its last checkpoint
    proc = run_main(script("meanflowql"), ["--resume", str(ckpt), "--offline-steps", "30", "--eval-interval",
                                           "100000"], **common)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "notice: resuming with --offline-steps 30 (the checkpoint had 20)" in proc.stdout
    assert [row["step"] for row in read_jsonl(finished_run["run_dir"] / "train.jsonl")] == [5, 10, 15, 20, 25, 30]
    config = json.loads((finished_run["run_dir"] / "config.json").read_text())
    assert (config["critic_hidden_dim"], config["offline_steps"], config["eval_interval"]) == (16, 30, 100000)


def test_an_older_checkpoint_of_a_run_that_went_further_is_refused(tmp_path):
    """Resuming model_10.pt of a run logged to step 20 would drop the newer rows and overwrite model.pt; resuming the
    run's model.pt drops only the rows logged after it (a run killed after its last checkpoint)."""
    log = "".join(json.dumps({"step": s}) + "\n" for s in (5, 10, 15, 20))
    (tmp_path / "train.jsonl").write_text(log)
    with pytest.raises(
        mfql.UsageError, match="is at step 10 and its run went on to step 20: to continue from it, copy"
    ):
        mfql.resume_run_dir(mfql.Args(resume=str(tmp_path / "model_10.pt")), 10)
    assert (tmp_path / "train.jsonl").read_text() == log  # left alone
    assert mfql.resume_run_dir(mfql.Args(resume=str(tmp_path / "model.pt")), 15) == str(tmp_path)
    assert [row["step"] for row in read_jsonl(tmp_path / "train.jsonl")] == [5, 10, 15]


def test_checkpoints_load_on_the_cpu_whatever_the_device(finished_run, monkeypatch):
    """torch.set_rng_state takes CPU byte tensors only: a checkpoint loaded with map_location=<the CUDA device> crashed
    resume on GPUs. The checkpoint must be read on the CPU, and the RNG states must reach set_rng_state as such."""
    seen = []
    load, set_rng_state = torch.load, torch.set_rng_state

    def recording_load(*a, **kw):
        seen.append(kw.get("map_location"))
        return load(*a, **kw)

    def checked_set_rng_state(state):
        assert state.device.type == "cpu" and state.dtype == torch.uint8
        set_rng_state(state)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(torch, "set_rng_state", checked_set_rng_state)
    ckpt = mfql.read_checkpoint(str(finished_run["run_dir"] / "model.pt"))
    assert seen == ["cpu"]
    mfql.restore_rng(ckpt["rng"], torch.device("cpu"))


CTRL_C_RUNS = {  # a long run with tiny networks, logging every 5 updates
    "meanflowql": ["--env-id", "antmaze-umaze", "--offline-steps", "100000", "--actor-hidden-dim", "16",
                   "--actor-depth", "1", "--critic-hidden-dim", "16", "--critic-layers", "1"],
    "ofql": ["--env-id", "antmaze-umaze", "--offline-steps", "100000", "--hidden-dim", "16", "--num-layers", "1"],
    "mvp": ["--env-id", "antmaze-umaze", "--offline-steps", "100000", "--actor-hidden-dim", "16", "--actor-layers", "1",
            "--critic-hidden-dim", "16", "--critic-layers", "1", "--num-samples", "2"],
    "som": ["--env-id", "InvertedPendulum-v5", "--total-timesteps", "100000", "--learning-starts", "10",
            "--hidden-dims", "16", "--critic-hidden-dims", "16", "--num-mc-samples", "2", "--num-samples", "2"],
}  # fmt: skip


@pytest.mark.parametrize("algo", ALGOS)
def test_ctrl_c_stops_cleanly_with_a_last_checkpoint(algo, minari_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MINARI_DATASETS_PATH": str(minari_root)}
    proc = subprocess.Popen(
        [sys.executable, script(algo), *CTRL_C_RUNS[algo], "--batch-size", "8", "--log-interval", "5",
         "--eval-interval", "100000", "--save-model", "--no-cuda"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if re.match(r"\[(offline )?(10|15|20)/", line):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert f"stopped by Ctrl-C: the run is in {os.path.join('runs', run_dir.name)}, its checkpoint is" in err
    assert "stopping after this step" in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "model.pt", "train.jsonl"]  # no model.pt.tmp
    assert torch.load(run_dir / "model.pt", weights_only=False)["step"] >= 10


def test_sps_leaves_out_the_first_update_and_evaluations(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(mfql.time, "time", lambda: clock[0])
    progress = mfql.Progress(100, 0)
    clock[0] += 30
    progress.step()  # the first update: compilation, left out
    for _ in range(10):
        clock[0] += 0.5
        progress.step()
    assert progress.log() == pytest.approx(2.0)
    clock[0] += 100  # an evaluation and a checkpoint
    progress.reset()
    for _ in range(4):
        clock[0] += 1
        progress.step()
    progress.step(updated=False)  # SOM's env steps before learning_starts move the bar, not the rate
    assert progress.log() == pytest.approx(1.0)
    progress.close("unused", None)


def test_som_with_no_evaluation_episodes_writes_no_nan(tmp_path, monkeypatch):
    som = import_algo("som")
    monkeypatch.chdir(tmp_path)
    som.main(som.Args(env_id="InvertedPendulum-v5", total_timesteps=40, learning_starts=20, eval_interval=20,
                      eval_episodes=0, log_interval=20, batch_size=8, num_mc_samples=2, num_samples=2,
                      hidden_dims=(8,), critic_hidden_dims=(8,), cuda=False))  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "eval.jsonl").exists()
    rows = read_jsonl(run_dir / "train.jsonl")
    assert [row["step"] for row in rows] == [20, 40]
    # the first update (step 20) makes no actor step (every --policy-delay 2 updates): no actor metrics, not zeros
    assert "critic_loss" in rows[0] and "actor_loss" not in rows[0] and rows[1]["actor_loss"] != 0


def test_resume_refuses_every_flag_that_shapes_the_networks():
    shaped = {
        "meanflowql": {"actor_hidden_dim", "actor_depth", "actor_mlp_ratio", "critic_hidden_dim", "critic_layers"},
        "ofql": {"hidden_dim", "num_layers", "time_emb_dim", "shared_time_mlp", "normalize_obs"},
        "mvp": {"horizon", "time_embedding", "actor_hidden_dim", "actor_layers", "critic_layers", "num_critics"},
        "som": {"hidden_dims", "critic_hidden_dims"},
    }
    for algo, names in shaped.items():
        module = import_algo(algo)
        for name in names | {"env_id", "seed", "compile"}:
            assert any(part in name for part in module.FIXED_ON_RESUME.split()), (algo, name)
        ckpt = {"args": dataclasses.asdict(module.Args(batch_size=7))}
        resumed, _ = module.resume(module.Args(batch_size=9, resume="x.pt"), ckpt)  # merged by parse_cli
        assert resumed.batch_size == 9 and resumed.resume == "x.pt"  # any other flag applies


def test_progress_gives_the_interrupt_handler_back():
    before = signal.getsignal(signal.SIGINT)
    progress = mfql.Progress(10, 0)
    assert signal.getsignal(signal.SIGINT) == progress.interrupt
    progress.close("unused", None)
    assert signal.getsignal(signal.SIGINT) is before  # e.g. a notebook's own handler


@pytest.mark.parametrize("path", [*(f"algos/{a}.py" for a in ALGOS), "scripts/speed.py"])
def test_openmp_threads_sleep_while_they_wait(path, monkeypatch):
    """OMP_WAIT_POLICY is read when torch loads OpenMP: the default PASSIVE must be set before torch is imported
    (with one of two cores held by another job, MeanFlowQL's update ran 2.2x faster with it: results/README.md)."""
    source = (ROOT / path).read_text()
    assert source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")') < source.index("\nimport torch\n")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # the file, run from the top without it, sets it
    runpy.run_path(str(ROOT / path), run_name="x")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("algo", ALGOS[:3])
def test_a_resume_with_fewer_online_steps_left_still_has_room_for_the_checkpoints_buffer(algo):
    """Capacity = offline data + --online-steps; a checkpoint may hold more online rows (a raised --offline-steps with
    a lowered --online-steps), and each of them must come back before the run adds its own."""
    data = {k: torch.arange(4.0).reshape(4, 1).numpy() for k in ("observations", "actions", "rewards", "masks")}
    data.update(next_observations=data["observations"], dones=data["rewards"] * 0)
    buffer = import_algo(algo).ReplayBuffer(data, capacity=4 + 1, device=torch.device("cpu"))
    saved = {k: torch.full((3, 1), 9.0) for k in buffer.data}  # 3 online rows, where only 1 was reserved
    buffer.restore_online_part(saved)
    buffer.add(**{k: torch.full((1,), 7.0).numpy() for k in buffer.data})  # the resumed run's own online step
    assert buffer.size == 8 and buffer.data["rewards"][:8, 0].tolist() == [0, 1, 2, 3, 9, 9, 9, 7]
    assert {k: v.tolist() for k, v in buffer.online_part().items()} == {k: [[9.0]] * 3 + [[7.0]] for k in buffer.data}
