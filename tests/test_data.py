"""The offline scripts' shared data layer: the real datasets' semantics (AntMaze goals, action bounds), the checks made
at load time, and the errors for missing or broken datasets."""

import json
import time

import gymnasium as gym
import minari
import numpy as np
import pytest
from conftest import ROOT, import_algo, import_script, run_main
from minari.data_collector import EpisodeBuffer

mfql = import_algo("meanflowql")
mmd = import_script("make_minari_dataset")
LARGE_EVAL_GOAL = np.array([14.0, -12.0])  # centre of the 'g' cell (7, 9) of Minari's antmaze-large eval map


def write_minari(dataset_id: str, episodes: list[dict], env: gym.Env, eval_env: gym.Env | None = None) -> None:
    """A Minari dataset from explicit episodes (observations with T+1 rows; actions, rewards with T)."""
    buffers = []
    for i, ep in enumerate(episodes):
        steps = len(ep["rewards"])
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = True
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=ep["observations"],
                actions=ep["actions"],
                rewards=np.asarray(ep["rewards"], dtype=np.float64),
                terminations=np.zeros(steps, dtype=bool),
                truncations=truncations,
                infos={},
            )
        )
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=eval_env, algorithm_name="test")


@pytest.fixture
def antmaze_two_goals(tmp_path, monkeypatch) -> dict:
    """D4RL/antmaze/large-play-v1 as Minari collects it (continuing task, a new goal per episode, sparse reward for that
    goal within 0.45): two episodes over the same ant states, one reaching its goal and one not."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    steps, rng = 30, np.random.default_rng(0)
    xy = np.linspace([-18.0, 12.0], LARGE_EVAL_GOAL, steps + 1)  # the torso path, ending at the eval goal
    ant = rng.normal(size=(steps + 1, 27))
    goals = [LARGE_EVAL_GOAL + [0.3, 0.0], np.array([-18.0, -12.0])]
    episodes = []
    for goal in goals:
        rewards = (np.linalg.norm(xy[1:] - goal, axis=-1) <= 0.45).astype(np.float64)  # reward for s' (maze_v4.py)
        obs = {"observation": ant, "achieved_goal": xy, "desired_goal": np.tile(goal, (steps + 1, 1))}
        episodes.append({"observations": obs, "actions": rng.uniform(-1, 1, (steps, 8)), "rewards": rewards})
    assert episodes[0]["rewards"].sum() > 0 and episodes[1]["rewards"].sum() == 0
    env, eval_env = mmd.make_envs("D4RL/antmaze/large-play-v1", max_episode_steps=steps)
    write_minari("D4RL/antmaze/large-play-v1", episodes, env, eval_env)
    return {"xy": xy, "goals": goals, "steps": steps}


def test_antmaze_rewards_are_a_function_of_the_observation(antmaze_two_goals):
    task = mfql.load_dataset("D4RL/antmaze/large-play-v1", "", "observe", 1.0, -1.0)
    obs, rewards = task.data["observations"], task.data["rewards"]
    reward_of = {}
    for o, r in zip(obs, rewards):  # identical observations must carry identical rewards
        assert reward_of.setdefault(o.tobytes(), r) == r
    # layout: torso xy (2), Minari's observation (27), the episode's goal (2)
    steps = antmaze_two_goals["steps"]
    assert obs.shape == (2 * steps, 31) and np.allclose(obs[:steps, :2], antmaze_two_goals["xy"][:-1])
    for i, goal in enumerate(antmaze_two_goals["goals"]):
        assert np.allclose(obs[i * steps : (i + 1) * steps, 29:], goal)
    assert rewards.min() == -1.0 and rewards.max() == 0.0  # r - 1
    env = task.make_env()  # the eval goal is in the observation too
    o, _ = env.reset(seed=0)
    assert np.allclose(task.flatten_obs(o)[29:], env.unwrapped.goal)
    assert np.linalg.norm(env.unwrapped.goal - LARGE_EVAL_GOAL) > 0  # Minari's per-reset goal noise
    env.close()


def test_antmaze_relabel_rewards_reaching_the_eval_goal_as_d4rl(antmaze_two_goals):
    task = mfql.load_dataset("D4RL/antmaze/large-play-v1", "", "relabel", 1.0, 0.0)
    steps, xy = antmaze_two_goals["steps"], antmaze_two_goals["xy"]
    assert task.data["observations"].shape == (2 * steps, 29)  # D4RL's layout, no goal
    reached = (np.linalg.norm(xy[1:] - LARGE_EVAL_GOAL, axis=-1) <= 0.5).astype(np.float32)
    assert reached.sum() > 0
    for i in range(2):  # both episodes: the same states, so the same rewards and terminals
        rows = slice(i * steps, (i + 1) * steps)
        assert np.array_equal(task.data["rewards"][rows], reached)
        assert np.array_equal(task.data["masks"][rows], 1 - reached)
        assert np.all(task.data["dones"][rows] >= reached)
    assert np.allclose(task.normalized_score(np.array([0.0, 1.0])), [0.0, 100.0])
    env = task.make_env()  # the eval env: that goal, exactly, and an episode that ends there
    o, _ = env.reset(seed=0)
    assert np.allclose(env.unwrapped.goal, LARGE_EVAL_GOAL) and task.flatten_obs(o).shape == (29,)
    o, reward, terminated, _, info = env.step(np.zeros(8, dtype=np.float32))
    assert (reward, terminated, info["success"]) == (0.0, False, False)
    ant = env.unwrapped.ant_env
    qpos = ant.data.qpos.copy()
    qpos[:2] = LARGE_EVAL_GOAL + [0.2, 0.2]  # within D4RL's 0.5 but outside gymnasium-robotics' 0.45
    ant.set_state(qpos, ant.data.qvel)
    o, reward, terminated, _, info = env.step(np.zeros(8, dtype=np.float32))
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    env.close()


def test_umaze_is_evaluated_in_the_maze_of_its_data(minari_root, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    task = mfql.load_dataset("D4RL/antmaze/umaze-v1", "", "observe", 1.0, 0.0)
    assert "rotated by 180 degrees" in capsys.readouterr().out
    ds = minari.load_dataset("D4RL/antmaze/umaze-v1")
    data_env, eval_env = ds.recover_environment(), task.make_env()
    walls = [[[c == 1 for c in row] for row in e.unwrapped.maze.maze_map] for e in (data_env, eval_env)]
    assert walls[0] == walls[1]  # Minari's own eval map has the middle wall's gap on the other side (issue #304)
    o, _ = eval_env.reset(seed=0)
    cell = lambda xy: tuple(int(v) for v in eval_env.unwrapped.maze.cell_xy_to_rowcol(xy))  # noqa: E731
    assert cell(o["achieved_goal"]) == (3, 1) and cell(o["desired_goal"]) == (1, 1)  # around the U, as in the data
    data_env.close()
    eval_env.close()


def pendulum(tmp_path, monkeypatch, actions: np.ndarray, obs_dim: int = 4, rewards: np.ndarray | None = None) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    steps = len(actions)
    obs = np.random.default_rng(0).normal(size=(steps + 1, obs_dim)) * 0.1
    rewards = np.ones(steps) if rewards is None else rewards
    write_minari("mujoco/invertedpendulum/medium-v0", [{"observations": obs, "actions": actions, "rewards": rewards}],
                 gym.make("InvertedPendulum-v5"))  # fmt: skip


def test_actions_map_from_the_env_bounds_and_out_of_bounds_ones_are_reported(tmp_path, monkeypatch, capsys):
    actions = np.array([[-3.0], [-1.5], [0.0], [1.5], [3.0], [3.5], [-4.0]], dtype=np.float32)  # InvertedPendulum: +-3
    pendulum(tmp_path, monkeypatch, actions)
    task = mfql.load_dataset("mujoco/invertedpendulum/medium-v0", "", "observe", 1.0, 0.0)
    assert np.allclose(task.data["actions"][:, 0], [-1, -0.5, 0, 0.5, 1, 1, -1], atol=1e-4)
    assert "2 of 7 actions lie outside the env's bounds [-3, 3]" in capsys.readouterr().out
    assert np.allclose(task.env_action(np.array([-1.0, 0.25, 1.0])), [-3.0, 0.75, 3.0])


def test_nan_and_shape_mismatches_are_refused_at_load(tmp_path, monkeypatch):
    rewards = np.ones(10)
    rewards[7] = np.nan
    pendulum(tmp_path / "nan", monkeypatch, np.zeros((10, 1), np.float32), rewards=rewards)
    with pytest.raises(mfql.DatasetError, match=r"1 of 10 transitions have NaN/inf rewards \(first at index 7\)"):
        mfql.load_dataset("mujoco/invertedpendulum/medium-v0", "", "observe", 1.0, 0.0)
    pendulum(tmp_path / "shape", monkeypatch, np.zeros((10, 1), np.float32), obs_dim=5)
    with pytest.raises(mfql.DatasetError, match=r"observations have shape \(5,\) per step, but its env .* has \(4,\)"):
        mfql.load_dataset("mujoco/invertedpendulum/medium-v0", "", "observe", 1.0, 0.0)


def test_a_missing_dataset_stops_before_compute_with_one_line_pointing_to_the_readme(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import ogbench.utils

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 (read at import)
    monkeypatch.setattr(ogbench.utils, "DATASET_URL", "http://127.0.0.1:9")  # no server there: refused at once
    assert "\n## Datasets\n" in (ROOT / "README.md").read_text()
    cases = {"kitchen-mixed": "Minari dataset 'D4RL/kitchen/mixed-v2'",
             "cube-double-play-singletask-task2-v0": "OGBench dataset 'cube-double-play-v0'"}  # fmt: skip
    for env_id, looked_for in cases.items():
        start, args = time.time(), dict(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "runs"), cuda=False)
        with pytest.raises(mfql.DatasetError) as e:
            mfql.main(mfql.Args(env_id=env_id, **args))
        message = str(e.value)
        assert message.startswith(looked_for) and f"is not in {tmp_path} (" in message and "\n" not in message
        assert "could not be downloaded" in message and "README.md, section 'Datasets'" in message
        assert time.time() - start < 10 and not list(tmp_path.rglob("*.jsonl"))  # no retries, no run


def test_ogbench_errors_are_distinct_and_the_validation_split_is_kept(ogbench_dir, tmp_path):
    name = "cube-double-play-singletask-task2-v0"
    task = mfql.load_dataset(name, str(ogbench_dir), "observe", 1.0, 0.0)
    assert task.val_data is not None and task.val_data["observations"].shape[1] == task.data["observations"].shape[1]
    with pytest.raises(mfql.DatasetError, match="not an OGBench singletask task"):
        mfql.load_dataset("cube-double-play-singletask-task9-v0", str(ogbench_dir), "observe", 1.0, 0.0)
    for suffix in (".npz", "-val.npz"):  # observations with a column missing
        arrays = dict(np.load(ogbench_dir / f"cube-double-play-v0{suffix}"))
        arrays["observations"] = arrays["observations"][:, :-1]
        np.savez(tmp_path / f"cube-double-play-v0{suffix}", **arrays)
    with pytest.raises(mfql.DatasetError, match=r"observations have shape \(36,\) per step, but its env .* \(37,\)"):
        mfql.load_dataset(name, str(tmp_path), "observe", 1.0, 0.0)


def test_mvp_refuses_a_horizon_longer_than_every_episode(minari_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    flags = ["--env-id", "antmaze-umaze", "--horizon", "60", "--no-cuda"]
    proc = run_main(ROOT / "algos/mvp.py", flags, monkeypatch, capsys)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "every episode of 'D4RL/antmaze/umaze-v1' is shorter than --horizon 60" in proc.stderr


def test_validation_losses_leave_the_training_run_unchanged(ogbench_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = dict(env_id="cube-double-play-singletask-task2-v0", dataset_dir=str(ogbench_dir), offline_steps=6,
                log_interval=2, eval_episodes=0, batch_size=8, actor_hidden_dim=16, actor_depth=1, critic_hidden_dim=16,
                critic_layers=1, cuda=False)  # fmt: skip
    load = mfql.load_dataset

    def without_validation(*a: object) -> object:
        task = load(*a)
        task.val_data = None
        return task

    rows = []
    for name, loader in (("val", load), ("noval", without_validation)):
        monkeypatch.setattr(mfql, "load_dataset", loader)
        mfql.main(mfql.Args(**args, exp_name=name))
        (run_dir,) = (tmp_path / "runs").glob(f"*__{name}__*")
        rows.append([json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()])
    assert "val/critic_loss" in rows[0][0] and "val/critic_loss" not in rows[1][0]
    for with_val, without in zip(*rows):
        assert all(with_val[k] == without[k] for k in mfql.METRICS)
