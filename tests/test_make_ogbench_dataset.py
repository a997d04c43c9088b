"""Tests for scripts/make_ogbench_dataset.py: generate tiny cube-double play and pointmaze-medium navigate datasets with
OGBench's oracles and read them back through the unchanged `ogbench.make_env_and_datasets` path (singletask reward
relabelling included)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest

pytest.importorskip("ogbench")
pytest.importorskip("mujoco")

import ogbench  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_ogbench_dataset.py"
DATASET = "cube-double-play-v0"
SINGLETASK = "cube-double-play-singletask-task2-v0"
N_TRAIN, N_VAL, STEPS = 2, 1, 60  # STEPS rows per episode -> STEPS - 1 transitions after loading
NUM_CUBES, OBS_DIM, QPOS_CUBE_START = 2, 37, 14
MAZE_DATASET, MAZE_SINGLETASK = "pointmaze-medium-navigate-v0", "pointmaze-medium-navigate-singletask-v0"
MAZE_STEPS = 300


def run_script(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def gen_args(out_dir: Path, seed: int = 0, steps: int = STEPS, name: str = SINGLETASK) -> list[str]:
    return [
        "--env-name", name, "--num-episodes", str(N_TRAIN), "--num-val-episodes", str(N_VAL),
        "--max-episode-steps", str(steps), "--seed", str(seed), "--dataset-dir", str(out_dir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data_dirs(ogbench_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny dataset generated twice (same seed), for the determinism check: the session's (conftest, by its
    dataset's name) and one by the singletask name here."""
    out_dir = tmp_path_factory.mktemp("ogb_b")
    proc = run_script(*gen_args(out_dir))
    assert "Wrote" in proc.stdout and "steps/s" in proc.stdout
    return ogbench_dir, out_dir


@pytest.fixture(scope="module")
def loaded(data_dirs: tuple[Path, Path]) -> tuple:
    return ogbench.make_env_and_datasets(SINGLETASK, dataset_dir=str(data_dirs[0]), add_info=True)


def load_module():
    spec = importlib.util.spec_from_file_location("make_ogbench_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_name_mapping() -> None:
    mod = load_module()  # importing must not generate anything
    parse = mod.parse_env_name
    assert parse("cube-double-play-singletask-task2-v0") == ("cube-double-play-v0", "cube-double-v0", "play")
    assert parse("cube-single-play-singletask-v0") == ("cube-single-play-v0", "cube-single-v0", "play")
    assert parse("puzzle-3x3-noisy-v0") == ("puzzle-3x3-noisy-v0", "puzzle-3x3-v0", "noisy")
    assert parse("scene-play-v0")[1] == "scene-v0"
    expected = ("pointmaze-medium-navigate-v0", "pointmaze-medium-v0", "navigate")
    assert parse("pointmaze-medium-navigate-singletask-v0") == parse("pointmaze-medium-navigate-v0") == expected
    assert parse("pointmaze-large-navigate-singletask-task3-v0")[1] == "pointmaze-large-v0"
    unsupported = ["antmaze-large-navigate-v0", "visual-cube-single-play-v0", "cube-single-v0"]
    for bad in unsupported + ["pointmaze-medium-play-v0", "cube-single-navigate-v0", "pointmaze-medium-stitch-v0"]:
        with pytest.raises(ValueError):
            parse(bad)


def test_raw_files_match_ogbench_format(data_dirs: tuple[Path, Path]) -> None:
    for name, n_eps in [(f"{DATASET}.npz", N_TRAIN), (f"{DATASET}-val.npz", N_VAL)]:
        with np.load(data_dirs[0] / name) as f:
            assert sorted(f.files) == ["actions", "observations", "qpos", "qvel", "terminals"]  # no button_states
            n = n_eps * STEPS
            assert f["observations"].shape == (n, OBS_DIM) and f["observations"].dtype == np.float32
            assert f["actions"].shape == (n, 5) and f["actions"].dtype == np.float32
            assert f["terminals"].dtype == bool
            assert f["qpos"].shape == (n, QPOS_CUBE_START + 7 * NUM_CUBES) and f["qpos"].dtype == np.float32
            assert f["qvel"].shape[0] == n and f["qvel"].dtype == np.float32
            # terminals: 1 exactly at the last row of each episode
            np.testing.assert_array_equal(np.flatnonzero(f["terminals"]), np.arange(1, n_eps + 1) * STEPS - 1)
            assert np.isfinite(f["observations"]).all() and np.isfinite(f["qpos"]).all()


def test_loaded_datasets(loaded: tuple) -> None:
    env, train, val = loaded
    assert env.observation_space.shape == (OBS_DIM,) and env.action_space.shape == (5,)
    for ds, n_eps in [(train, N_TRAIN), (val, N_VAL)]:
        n = n_eps * (STEPS - 1)
        assert ds["observations"].shape == (n, OBS_DIM) and ds["next_observations"].shape == (n, OBS_DIM)
        assert ds["actions"].shape == (n, 5)
        assert ds["rewards"].shape == (n,) and ds["masks"].shape == (n,)
        assert np.abs(ds["actions"]).max() <= 1.0
        ends = np.flatnonzero(ds["terminals"])
        np.testing.assert_array_equal(ends, np.arange(1, n_eps + 1) * (STEPS - 1) - 1)
        within = np.setdiff1d(np.arange(n - 1), ends)  # next_obs[t] == obs[t + 1] inside an episode
        np.testing.assert_array_equal(ds["next_observations"][within], ds["observations"][within + 1])


def test_singletask_rewards_and_masks(loaded: tuple) -> None:
    env, train, val = loaded
    goal_xyzs = env.unwrapped.task_infos[1]["goal_xyzs"]  # task2
    assert goal_xyzs.shape == (NUM_CUBES, 3)
    for ds in (train, val):
        r, m = ds["rewards"], ds["masks"]
        assert (r <= 0).all() and (r >= -NUM_CUBES).all() and (r == np.round(r)).all()
        assert set(np.unique(m)) <= {0.0, 1.0}
        np.testing.assert_array_equal(m == 0, r == 0)
        # Independent recomputation: -(number of cubes farther than 4 cm from their task2 goal), from the stored qpos.
        cubes = np.stack([ds["qpos"][:, QPOS_CUBE_START + 7 * i : QPOS_CUBE_START + 7 * i + 3] for i in range(2)], 1)
        expected = -(np.linalg.norm(cubes - goal_xyzs, axis=-1) > 0.04).sum(-1)
        np.testing.assert_array_equal(r, expected.astype(np.float32))


def test_oracle_moves_the_arm(loaded: tuple) -> None:
    _, train, _ = loaded
    acts = train["actions"]
    assert (np.abs(acts) > 1e-3).any(axis=1).mean() > 0.5  # mostly non-zero actions
    assert (acts[:, :3].std(axis=0) > 0.05).all()  # xyz commands vary
    assert (train["qpos"][:, :6].std(axis=0) > 1e-3).any()  # arm joints actually moved
    assert np.abs(train["next_observations"] - train["observations"]).max() > 1e-2


def test_seeded_generation_is_deterministic(data_dirs: tuple[Path, Path]) -> None:
    for name in (f"{DATASET}.npz", f"{DATASET}-val.npz"):
        with np.load(data_dirs[0] / name) as a, np.load(data_dirs[1] / name) as b:
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_refuses_to_overwrite(data_dirs: tuple[Path, Path]) -> None:
    proc = run_script(*gen_args(data_dirs[0]), check=False)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr


@pytest.fixture(scope="module")
def maze_loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out_dir = tmp_path_factory.mktemp("ogb_maze")
    run_script(*gen_args(out_dir, steps=MAZE_STEPS, name=MAZE_SINGLETASK))
    with np.load(out_dir / f"{MAZE_DATASET}.npz") as f:
        assert sorted(f.files) == ["actions", "observations", "qpos", "qvel", "terminals"]
        assert f["observations"].shape == (N_TRAIN * MAZE_STEPS, 2) and f["observations"].dtype == np.float32
    return ogbench.make_env_and_datasets(MAZE_SINGLETASK, dataset_dir=str(out_dir), add_info=True)


def test_pointmaze_dataset_loads_with_singletask_rewards(maze_loaded: tuple) -> None:
    env, train, val = maze_loaded
    assert env.observation_space.shape == (2,) and env.action_space.shape == (2,)
    maze = env.unwrapped
    goal_xy = np.array(maze.ij_to_xy(maze.task_infos[0]["goal_ij"]))  # the default task is task1
    for ds, n_eps in [(train, N_TRAIN), (val, N_VAL)]:
        n = n_eps * (MAZE_STEPS - 1)
        assert ds["observations"].shape == ds["next_observations"].shape == (n, 2) and ds["actions"].shape == (n, 2)
        assert np.abs(ds["actions"]).max() <= 1.0
        np.testing.assert_array_equal(ds["observations"], ds["qpos"])  # the point's observation is its position
        # Independent recomputation of the locomotion relabelling: success within 1.0 of task1's (un-jittered) goal.
        success = np.linalg.norm(ds["qpos"] - goal_xy, axis=-1) <= 1.0
        np.testing.assert_array_equal(ds["rewards"], success.astype(np.float32) - 1)
        np.testing.assert_array_equal(ds["masks"], 1 - success.astype(np.float32))


def test_pointmaze_oracle_navigates(maze_loaded: tuple) -> None:
    _, train, _ = maze_loaded
    # A noise-only policy stays within a cell or two in 300 steps; the oracle runs along the corridors.
    cells = np.floor((train["observations"] + 6.0) / 4.0).astype(int)  # maze unit 4, cell (0, 0) centred at (-4, -4)
    for ep in np.split(cells, N_TRAIN):
        assert len({tuple(c) for c in ep}) >= 5
    # In-process: the oracle reaches its goals, and a new goal is drawn each time.
    mod = load_module()
    np.random.seed(0)
    env = SuccessLog(gymnasium.make("pointmaze-medium-v0", terminate_at_goal=False, max_episode_steps=400))
    env.reset(seed=0)
    free, vertices = mod.maze_cells(env.unwrapped.maze_map)
    assert len(free) == 26 and len(vertices) == 21  # pointmaze-medium: 26 free cells, 5 of them straight hallway
    for _ in range(3):
        mod.collect_navigate_episode(env, free, vertices, noise=0.5)
    assert len(env.goals) >= 3  # goals reached over 3 x 400 steps
    assert all(np.linalg.norm(xy - goal) <= 1.0 for xy, goal in env.goals)
    assert len({tuple(goal) for _, goal in env.goals}) == len(env.goals)  # each success draws a new (jittered) goal


class SuccessLog(gymnasium.Wrapper):
    """Records (position, goal) at every step where the maze reports success."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.goals: list[tuple[np.ndarray, np.ndarray]] = []

    def step(self, action: np.ndarray) -> tuple:
        out = self.env.step(action)
        if out[-1]["success"]:
            self.goals.append((self.env.unwrapped.get_xy(), np.array(self.env.unwrapped.cur_goal_xy)))
        return out
