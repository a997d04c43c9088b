"""Tests for scripts/make_minari_dataset.py: tiny local Minari stand-ins for D4RL AntMaze / PointMaze."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import minari
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_minari_dataset.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("make_minari_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


mmd = _load_module()


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """Point Minari at a fresh root; Minari reads MINARI_DATASETS_PATH at call time (get_dataset_path)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


def _rowcol(env, xy):
    return tuple(int(v) for v in env.unwrapped.maze.cell_xy_to_rowcol(xy))


def test_antmaze_dataset(minari_root):
    dataset_id = "D4RL/antmaze/umaze-v1"
    mmd.make_dataset(dataset_id, num_episodes=2, max_episode_steps=50, seed=0)
    assert (minari_root / "D4RL" / "antmaze" / "umaze-v1" / "data" / "main_data.hdf5").exists()

    ds = minari.load_dataset(dataset_id)
    assert ds.total_episodes == 2 and ds.total_steps == 100
    assert ds.storage.metadata["algorithm_name"].startswith("LOCAL STAND-IN")
    assert ds.env_spec.id == "AntMaze_UMaze-v4" and ds.env_spec.max_episode_steps == 50
    assert ds.env_spec.kwargs["continuing_task"] and not ds.env_spec.kwargs["reset_target"]
    for ep in ds.iterate_episodes():
        obs = ep.observations
        assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
        assert obs["observation"].shape == (51, 27)
        assert obs["achieved_goal"].shape == (51, 2) and obs["desired_goal"].shape == (51, 2)
        assert ep.actions.shape == (50, 8) and ep.actions.dtype == np.float32
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert ep.rewards.shape == (50,) and set(np.unique(ep.rewards)) <= {0.0, 1.0}
        assert not ep.terminations.any()
        assert ep.truncations[-1] and not ep.truncations[:-1].any()
        # reset_target=False: the goal never moves; qpos in infos = torso xy + observation[:13]
        assert np.allclose(obs["desired_goal"], obs["desired_goal"][0])
        assert np.allclose(ep.infos["qpos"][:, :2], obs["achieved_goal"])
        assert ep.infos["success"].shape == (51,)
        # umaze (not diverse) collection map: fixed reset at row 3 col 1, goal at row 1 col 1
        env = ds.recover_environment()
        assert _rowcol(env, obs["achieved_goal"][0]) == (3, 1)
        assert _rowcol(env, obs["desired_goal"][0]) == (1, 1)
        env.close()
    # consecutive episodes differ (seeded per episode)
    assert not np.allclose(ds[0].actions, ds[1].actions)

    eval_env = ds.recover_environment(eval_env=True)
    assert eval_env.spec.max_episode_steps == 700
    o, _ = eval_env.reset(seed=0)
    assert o["observation"].shape == (27,)
    assert _rowcol(eval_env, o["achieved_goal"]) == (1, 3)  # fixed 'r' cell of the eval map
    assert _rowcol(eval_env, o["desired_goal"]) == (3, 3)  # fixed 'g' cell
    o, r, terminated, truncated, info = eval_env.step(eval_env.action_space.sample())
    assert "success" in info and not terminated
    eval_env.close()

    scores = minari.get_normalized_score(ds, np.array([0.0, 350.0, 700.0]))
    np.testing.assert_allclose(scores, [0.0, 0.5, 1.0])


def test_pointmaze_waypoint_dataset(minari_root):
    dataset_id = "D4RL/pointmaze/umaze-v2"
    mmd.make_dataset(dataset_id, num_episodes=2, max_episode_steps=150, seed=0, policy="waypoint")
    ds = minari.load_dataset(dataset_id)
    assert ds.total_episodes == 2 and ds.total_steps == 300
    assert ds.env_spec.id == "PointMaze_UMaze-v3" and ds.env_spec.kwargs["reset_target"]
    for ep in ds.iterate_episodes():
        assert ep.observations["observation"].shape == (151, 4)
        assert ep.observations["achieved_goal"].shape == (151, 2)
        assert ep.observations["desired_goal"].shape == (151, 2)
        assert ep.actions.shape == (150, 2) and np.all(np.abs(ep.actions) <= 1.0)
        np.testing.assert_allclose(ep.observations["observation"][:, :2], ep.observations["achieved_goal"])
    # the goal-seeking controller reaches several goals (reset_target=True moves the goal after each success);
    # random actions get 0-1 reward steps here
    assert sum(ep.rewards.sum() for ep in ds.iterate_episodes()) >= 2

    eval_env = ds.recover_environment(eval_env=True)
    assert eval_env.spec.max_episode_steps == 300 and not eval_env.spec.kwargs["reset_target"]
    o, _ = eval_env.reset(seed=0)
    assert o["observation"].shape == (4,)
    assert _rowcol(eval_env, o["desired_goal"]) == (1, 1)
    eval_env.close()
    np.testing.assert_allclose(minari.get_normalized_score(ds, np.array([150.0])), [0.5])


def test_waypoint_random_steps():
    env, _ = mmd.make_envs("D4RL/pointmaze/umaze-v2", max_episode_steps=10)
    obs, _ = env.reset(seed=0)
    controller = mmd.WaypointPolicy(env, noise=0.0, rng=np.random.default_rng(0))(obs)
    mixed = mmd.WaypointPolicy(env, noise=0.0, rng=np.random.default_rng(0), random_prob=0.5)
    actions = np.stack([mixed(obs) for _ in range(2000)])
    assert np.all(np.abs(actions) <= 1.0)
    from_controller = np.all(actions == controller, axis=1)
    assert 0.45 < from_controller.mean() < 0.55  # the rest are uniform random, never equal to the controller's
    assert np.abs(actions[~from_controller].mean(0)).max() < 0.05 and actions[~from_controller].std(0).min() > 0.55
    env.close()
    with pytest.raises(ValueError, match="random_prob must be in"):
        mmd.make_dataset("D4RL/pointmaze/umaze-v2", 1, 5, policy="waypoint", random_prob=1.5)
    with pytest.raises(ValueError, match="random already"):
        mmd.make_dataset("D4RL/pointmaze/umaze-v2", 1, 5, random_prob=0.5)


def test_pointmaze_random_and_overwrite(minari_root):
    dataset_id = "D4RL/pointmaze/medium-dense-v2"
    ds = mmd.make_dataset(dataset_id, num_episodes=1, max_episode_steps=20, seed=3)
    actions = ds[0].actions.copy()
    rewards = ds[0].rewards.copy()
    assert ds.env_spec.id == "PointMaze_MediumDense-v3"
    assert np.all((rewards > 0) & (rewards <= 1))  # dense reward exp(-distance)
    with pytest.raises(FileExistsError, match="overwrite"):
        mmd.make_dataset(dataset_id, num_episodes=1, max_episode_steps=20, seed=3)
    ds2 = mmd.make_dataset(dataset_id, num_episodes=1, max_episode_steps=20, seed=3, overwrite=True)
    np.testing.assert_array_equal(ds2[0].actions, actions)  # deterministic given the seed
    np.testing.assert_array_equal(minari.load_dataset(dataset_id)[0].rewards, rewards)


def test_antmaze_play_episodes_each_have_their_own_goal(minari_root):
    """As Minari's AntMaze data: a new random goal per episode (the play maps have no goal cells), constant within it,
    and rewards for that goal."""
    ds = mmd.make_dataset("D4RL/antmaze/large-play-v1", num_episodes=4, max_episode_steps=20, seed=0)
    goals = []
    for ep in ds.iterate_episodes():
        goal = ep.observations["desired_goal"]
        assert np.allclose(goal, goal[0]) and np.allclose(ep.infos["goal"], goal)
        distance = np.linalg.norm(ep.observations["achieved_goal"][1:] - goal[0], axis=-1)
        assert np.array_equal(ep.rewards, (distance <= 0.45).astype(np.float64))
        goals.append(goal[0])
    env = ds.recover_environment()
    cells = {_rowcol(env, g) for g in goals}
    env.close()
    assert len(cells) > 1  # 4 episodes, goals in more than one cell


def test_antmaze_large_eval_env_map():
    env, eval_env = mmd.make_envs("D4RL/antmaze/large-diverse-v1", max_episode_steps=10)
    assert env.spec.id == "AntMaze_Large_Diverse_GR-v4" and env.spec.max_episode_steps == 10
    assert eval_env.spec.max_episode_steps == 1000
    o, _ = eval_env.reset(seed=1)
    assert _rowcol(eval_env, o["achieved_goal"]) == (1, 1)
    assert _rowcol(eval_env, o["desired_goal"]) == (7, 9)
    env.close()
    eval_env.close()


def test_unknown_id_and_bad_policy(minari_root):
    with pytest.raises(ValueError, match="Supported ids") as exc:
        mmd.make_dataset("D4RL/antmaze/giant-stitch-v0", num_episodes=1, max_episode_steps=5)
    assert "D4RL/antmaze/large-play-v1" in str(exc.value) and "D4RL/pointmaze/umaze-v2" in str(exc.value)
    with pytest.raises(ValueError, match="PointMaze"):
        mmd.make_dataset("D4RL/antmaze/umaze-v1", num_episodes=1, max_episode_steps=5, policy="waypoint")


def test_cli(minari_root, capsys):
    args = ["--dataset-id", "D4RL/antmaze/medium-play-v1", "--num-episodes", "1", "--max-episode-steps", "5"]
    mmd.main(args)
    out = capsys.readouterr().out
    assert "wrote D4RL/antmaze/medium-play-v1" in out and "steps=5" in out
    with pytest.raises(SystemExit) as exc:  # exists, no --overwrite
        mmd.main(args)
    assert exc.value.code == 1
    mmd.main([*args, "--overwrite", "--seed", "1"])
    with pytest.raises(SystemExit) as exc:
        mmd.main(["--dataset-id", "nope"])
    assert exc.value.code == 2
