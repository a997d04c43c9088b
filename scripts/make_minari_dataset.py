"""Create a small *local* Minari stand-in for a D4RL AntMaze / PointMaze dataset.

The real Minari D4RL datasets cannot be downloaded here, so tests and offline quick starts use a dataset that has the
same id, environment specs and data layout, filled with random (or, for PointMaze, noisy waypoint-controller) rollouts.
It is written with ``minari.create_dataset_from_buffers`` (no jax / ``minari[create]`` needed) into
``$MINARI_DATASETS_PATH`` (read by Minari at call time; default ``~/.minari/datasets``).

What matches the real datasets:
- dict observations ``observation`` / ``achieved_goal`` / ``desired_goal`` (AntMaze 27/2/2, PointMaze 4/2/2), T+1 per
  episode; infos ``success``, ``qpos``, ``qvel``, ``goal`` as in the Minari generation scripts;
- the collection env (``AntMaze_*-v4`` with ``continuing_task=True, reset_target=False``; ``PointMaze_*-v3`` with
  ``continuing_task=True, reset_target=True``; umaze AntMaze uses the fixed goal/reset map of the real umaze data).
  So, as in the real AntMaze data, every episode starts with a reset that draws a new goal (any empty cell of the
  play/umaze-diverse maps, a ``c`` cell of the diverse maps, the ``g`` cell of umaze; plus +-1 m of noise), keeps it
  for the whole episode, and its sparse rewards (1 within 0.45 of the goal) are for that goal;
- the eval env (``dataset.recover_environment(eval_env=True)``) with the fixed-start/goal maps of
  Farama-Foundation/minari-dataset-generation-scripts (``EVAL_ENV_MAPS``) and the registered episode limit.

What does NOT match: the behaviour policy (random, not SB3-ant + waypoints), episode boundaries (only truncation at
``--max-episode-steps``; the real data have other lengths), and the reference scores. ``ref_min_score`` and
``ref_max_score`` are placeholders: 0 and the eval env's ``max_episode_steps``, so ``minari.get_normalized_score`` gives
the fraction of eval steps spent within the goal radius (sparse reward 1 per step). Numbers from a stand-in are not
D4RL scores.

Example:
    MINARI_DATASETS_PATH=/tmp/minari python scripts/make_minari_dataset.py \\
        --dataset-id D4RL/antmaze/umaze-v1 --num-episodes 10 --max-episode-steps 1000 --seed 0 --overwrite
    MINARI_DATASETS_PATH=/tmp/minari python scripts/make_minari_dataset.py \\
        --dataset-id D4RL/pointmaze/umaze-v2 --policy waypoint --num-episodes 20 --max-episode-steps 300
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import gymnasium_robotics
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.storage import get_dataset_path

gym.register_envs(gymnasium_robotics)

R, G = "r", "g"
GOAL_RADIUS = 0.45  # gymnasium_robotics maze: sparse reward / success threshold

# Eval maps from Farama-Foundation/minari-dataset-generation-scripts:
#   scripts/D4RL/antmaze/create_antmaze_dataset.py (EVAL_ENV_MAPS: fixed reset 'r' and goal 'g')
#   scripts/pointmaze/create_pointmaze_dataset.py   (EVAL_ENV_MAPS: fixed goal 'g', random reset among free cells)
ANTMAZE_EVAL_MAPS: dict[str, list[list[Any]]] = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, 0, 0, R, 1],
        [1, 0, 1, 1, 1],
        [1, 0, 0, G, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, R, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, G, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, G, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
# Collection map of D4RL/antmaze/umaze (not umaze-diverse): fixed goal top-left, fixed reset bottom-left.
ANTMAZE_UMAZE_COLLECTION_MAP: list[list[Any]] = [
    [1, 1, 1, 1, 1],
    [1, G, 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, R, 0, 0, 1],
    [1, 1, 1, 1, 1],
]
POINTMAZE_EVAL_MAPS: dict[str, list[list[Any]]] = {
    "open": [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 0, 0, G, 0, 0, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ],
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, G, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    # medium/large: the AntMaze eval maps without the fixed reset cell (same goal cell)
    "medium": [[0 if c == R else c for c in row] for row in ANTMAZE_EVAL_MAPS["medium"]],
    "large": [[0 if c == R else c for c in row] for row in ANTMAZE_EVAL_MAPS["large"]],
}


@dataclass(frozen=True)
class DatasetConfig:
    """How to (re)create the environments of one Minari dataset id."""

    family: str  # "antmaze" | "pointmaze"
    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # collection env kwargs
    eval_kwargs: dict[str, Any] = field(default_factory=dict)  # eval env kwargs (registered max_episode_steps)


def _build_table() -> dict[str, DatasetConfig]:
    table: dict[str, DatasetConfig] = {}
    antmaze = {
        "umaze": "AntMaze_UMaze-v4",
        "umaze-diverse": "AntMaze_UMaze-v4",
        "medium-play": "AntMaze_Medium-v4",
        "medium-diverse": "AntMaze_Medium_Diverse_GR-v4",
        "large-play": "AntMaze_Large-v4",
        "large-diverse": "AntMaze_Large_Diverse_GR-v4",
    }
    for version in ("v1", "v2"):  # v1: current docs; v2: generation scripts' main branch (same envs)
        for name, env_id in antmaze.items():
            size = name.split("-")[0]
            kwargs: dict[str, Any] = {"continuing_task": True, "reset_target": False}
            if name == "umaze":
                kwargs["maze_map"] = ANTMAZE_UMAZE_COLLECTION_MAP
            eval_kwargs = {"continuing_task": True, "reset_target": False, "maze_map": ANTMAZE_EVAL_MAPS[size]}
            table[f"D4RL/antmaze/{name}-{version}"] = DatasetConfig("antmaze", env_id, kwargs, eval_kwargs)
    for size in ("open", "umaze", "medium", "large"):
        for dense in (False, True):
            env_id = f"PointMaze_{'UMaze' if size == 'umaze' else size.capitalize()}{'Dense' if dense else ''}-v3"
            kwargs = {"continuing_task": True, "reset_target": True}
            eval_kwargs = {"continuing_task": True, "reset_target": False, "maze_map": POINTMAZE_EVAL_MAPS[size]}
            table[f"D4RL/pointmaze/{size}{'-dense' if dense else ''}-v2"] = DatasetConfig(
                "pointmaze", env_id, kwargs, eval_kwargs
            )
    return table


DATASETS: dict[str, DatasetConfig] = _build_table()
POLICIES = ("random", "waypoint")


def get_config(dataset_id: str) -> DatasetConfig:
    """Look up the env table entry of a Minari dataset id; raise a ValueError listing the supported ids."""
    if dataset_id not in DATASETS:
        supported = "\n  ".join(DATASETS)
        raise ValueError(f"Unsupported dataset id {dataset_id!r}. Supported ids:\n  {supported}")
    return DATASETS[dataset_id]


def _make(env_id: str, **kwargs: Any) -> gym.Env:
    with warnings.catch_warnings():  # "AntMaze_*-v4 is out of date": v4 is what the Minari D4RL datasets use
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        return gym.make(env_id, **kwargs)


def make_envs(dataset_id: str, max_episode_steps: int) -> tuple[gym.Env, gym.Env]:
    """Build the collection env (truncating at ``max_episode_steps``) and the eval env of ``dataset_id``."""
    cfg = get_config(dataset_id)
    env = _make(cfg.env_id, max_episode_steps=max_episode_steps, **copy.deepcopy(cfg.env_kwargs))
    eval_env = _make(cfg.env_id, **copy.deepcopy(cfg.eval_kwargs))
    return env, eval_env


class WaypointPolicy:
    """Noisy PD controller that follows BFS cell waypoints to ``desired_goal`` (PointMaze only).

    A light re-implementation of the idea in the Minari PointMaze generation script (P gain 10, D gain -1, Gaussian
    action noise), re-planning whenever the goal changes. With probability ``random_prob`` a step takes a uniform
    random action instead: suboptimal data, on which behaviour cloning copies the random steps and Q-learning need not.
    """

    def __init__(
        self,
        env: gym.Env,
        noise: float,
        rng: np.random.Generator,
        random_prob: float = 0.0,
        kp: float = 10.0,
        kd: float = 1.0,
    ):
        self.maze = env.unwrapped.maze
        self.free = np.array([[c != 1 for c in row] for row in self.maze.maze_map], dtype=bool)
        self.noise, self.rng, self.random_prob, self.kp, self.kd = noise, rng, random_prob, kp, kd
        self._next: dict[tuple[int, int], dict[tuple[int, int], tuple[int, int]]] = {}

    def _next_cells(self, goal: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
        if goal not in self._next:  # BFS from the goal cell: parent pointers lead towards it
            nxt: dict[tuple[int, int], tuple[int, int]] = {goal: goal}
            queue = deque([goal])
            while queue:
                r, c = queue.popleft()
                for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                    if self.free[nr, nc] and (nr, nc) not in nxt:
                        nxt[(nr, nc)] = (r, c)
                        queue.append((nr, nc))
            self._next[goal] = nxt
        return self._next[goal]

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.random_prob > 0 and self.rng.random() < self.random_prob:
            return self.rng.uniform(-1.0, 1.0, 2)
        pos, vel, goal = obs["achieved_goal"], obs["observation"][2:4], obs["desired_goal"]
        goal_cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(goal))
        cell = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(pos))
        nxt = self._next_cells(goal_cell).get(cell, goal_cell)
        target = goal if nxt == goal_cell else self.maze.cell_rowcol_to_xy(np.array(nxt))
        action = self.kp * (target - pos) - self.kd * vel + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0)


def _state_info(family: str, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """qpos/qvel/goal as stored by the Minari generation scripts."""
    o = obs["observation"]
    if family == "antmaze":
        return {"qpos": np.concatenate([obs["achieved_goal"], o[:13]]), "qvel": o[13:], "goal": obs["desired_goal"]}
    return {"qpos": o[:2], "qvel": o[2:], "goal": obs["desired_goal"]}


def rollout_episode(
    env: gym.Env, family: str, policy: Any, seed: int, episode_id: int, action_rng: np.random.Generator
) -> EpisodeBuffer:
    """Roll out one episode until termination or truncation and pack it into an ``EpisodeBuffer``."""
    obs, info = env.reset(seed=seed)
    obs_lists: dict[str, list[np.ndarray]] = {k: [v] for k, v in obs.items()}
    info_lists: dict[str, list[Any]] = {"success": [info["success"]]}
    for k, v in _state_info(family, obs).items():
        info_lists[k] = [v]
    acts, rews, terms, truncs = [], [], [], []
    low, high = env.action_space.low, env.action_space.high
    while True:
        if policy == "random":
            action = action_rng.uniform(low, high).astype(env.action_space.dtype)
        else:
            action = np.asarray(policy(obs), dtype=env.action_space.dtype)
        obs, reward, terminated, truncated, info = env.step(action)
        for k, v in obs.items():
            obs_lists[k].append(v)
        info_lists["success"].append(info["success"])
        for k, v in _state_info(family, obs).items():
            info_lists[k].append(v)
        acts.append(action)
        rews.append(float(reward))
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        if terminated or truncated:
            break
    return EpisodeBuffer(
        id=episode_id,
        seed=seed,
        observations={k: np.stack(v) for k, v in obs_lists.items()},
        actions=np.stack(acts),
        rewards=np.asarray(rews, dtype=np.float64),
        terminations=np.asarray(terms, dtype=bool),
        truncations=np.asarray(truncs, dtype=bool),
        infos={k: np.stack(v) if k != "success" else np.asarray(v, dtype=bool) for k, v in info_lists.items()},
    )


def dataset_exists(dataset_id: str) -> bool:
    """Whether ``dataset_id`` exists under the current Minari root (``$MINARI_DATASETS_PATH`` at call time)."""
    return os.path.exists(get_dataset_path(dataset_id))


def make_dataset(
    dataset_id: str = "D4RL/antmaze/umaze-v1",
    num_episodes: int = 10,
    max_episode_steps: int = 1000,
    seed: int = 0,
    policy: str = "random",
    action_noise: float = 0.5,
    random_prob: float = 0.0,
    overwrite: bool = False,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> minari.MinariDataset:
    """Roll out ``num_episodes`` episodes of ``max_episode_steps`` steps and write them as Minari ``dataset_id``.

    ``ref_min_score``/``ref_max_score`` default to 0 and the eval env's ``max_episode_steps`` (placeholders, see the
    module docstring). Raises ``FileExistsError`` if the dataset exists and ``overwrite`` is False.
    """
    cfg = get_config(dataset_id)
    if policy not in POLICIES:
        raise ValueError(f"Unknown policy {policy!r}; choose from {POLICIES}")
    if policy == "waypoint" and cfg.family != "pointmaze":
        raise ValueError("--policy waypoint is only implemented for PointMaze (AntMaze needs a learned ant policy)")
    if num_episodes < 1 or max_episode_steps < 1:
        raise ValueError("num_episodes and max_episode_steps must be >= 1")
    if not 0.0 <= random_prob <= 1.0:
        raise ValueError(f"random_prob must be in [0, 1], got {random_prob}")
    if random_prob > 0 and policy != "waypoint":
        raise ValueError("random_prob mixes random steps into --policy waypoint; --policy random is random already")
    if dataset_exists(dataset_id):
        if not overwrite:
            raise FileExistsError(
                f"Minari dataset {dataset_id!r} already exists at {get_dataset_path(dataset_id)}; "
                "pass --overwrite (overwrite=True) to delete and recreate it"
            )
        minari.delete_dataset(dataset_id)

    env, eval_env = make_envs(dataset_id, max_episode_steps)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    behaviour = "random" if policy == "random" else WaypointPolicy(env, action_noise, rng, random_prob)
    episodes = [rollout_episode(env, cfg.family, behaviour, seed + i, i, rng) for i in range(num_episodes)]

    eval_steps = eval_env.spec.max_episode_steps
    ref_min = 0.0 if ref_min_score is None else float(ref_min_score)
    ref_max = float(eval_steps) if ref_max_score is None else float(ref_max_score)
    algo = "random" if policy == "random" else f"waypoint-PD+noise{action_noise}"
    if random_prob > 0:
        algo += f"+random{random_prob}"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=episodes,
            env=env,
            eval_env=eval_env,
            algorithm_name=f"LOCAL STAND-IN ({algo} policy), not the real D4RL data",
            author="meanflow-rl (scripts/make_minari_dataset.py)",
            author_email="n/a (locally generated)",
            code_permalink="meanflow-rl: scripts/make_minari_dataset.py",
            ref_min_score=ref_min,
            ref_max_score=ref_max,
            description=(
                f"Local stand-in for {dataset_id}: {num_episodes} episodes x up to {max_episode_steps} steps of "
                f"{algo} actions in {cfg.env_id} (seed {seed}). Same env/eval-env specs and observation layout as the "
                f"real dataset; ref_min_score={ref_min}, ref_max_score={ref_max} are placeholders "
                "(default: 0 and the eval max_episode_steps), not D4RL reference scores."
            ),
            requirements=["gymnasium-robotics>=1.4"],
        )
    env.close()
    eval_env.close()
    return dataset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-id", default="D4RL/antmaze/umaze-v1", help="Minari id (see --list)")
    p.add_argument("--num-episodes", type=int, default=10)
    p.add_argument("--max-episode-steps", type=int, default=1000, help="collection episodes are truncated here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", choices=POLICIES, default="random", help="waypoint: noisy PD controller, PointMaze only")
    p.add_argument("--action-noise", type=float, default=0.5, help="Gaussian action noise std for --policy waypoint")
    p.add_argument(
        "--random-prob", type=float, default=0.0, help="--policy waypoint: probability of a uniform random step instead"
    )
    p.add_argument("--ref-min-score", type=float, default=None, help="default 0 (placeholder)")
    p.add_argument("--ref-max-score", type=float, default=None, help="default: eval env max_episode_steps")
    p.add_argument("--overwrite", action="store_true", help="delete and recreate an existing dataset")
    p.add_argument("--list", action="store_true", help="print the supported dataset ids and exit")
    args = p.parse_args(argv)
    if args.list:
        for k, cfg in DATASETS.items():
            print(f"{k:36s} -> {cfg.env_id}")
        return

    try:
        cfg = get_config(args.dataset_id)
    except ValueError as e:
        p.error(str(e))
    if args.policy == "waypoint" and cfg.family != "pointmaze":
        p.error("--policy waypoint is only implemented for PointMaze datasets")
    if dataset_exists(args.dataset_id) and not args.overwrite:
        p.exit(1, f"error: {args.dataset_id} already exists at {get_dataset_path(args.dataset_id)}; use --overwrite\n")

    t0 = time.time()
    ds = make_dataset(
        args.dataset_id,
        num_episodes=args.num_episodes,
        max_episode_steps=args.max_episode_steps,
        seed=args.seed,
        policy=args.policy,
        action_noise=args.action_noise,
        random_prob=args.random_prob,
        overwrite=args.overwrite,
        ref_min_score=args.ref_min_score,
        ref_max_score=args.ref_max_score,
    )
    meta = ds.storage.metadata
    eval_env = ds.recover_environment(eval_env=True)
    eval_spec = eval_env.spec
    eval_env.close()
    print(
        f"wrote {args.dataset_id} -> {get_dataset_path(args.dataset_id)} in {time.time() - t0:.1f}s\n"
        f"  episodes={ds.total_episodes} steps={ds.total_steps} policy={args.policy} seed={args.seed}\n"
        f"  env={ds.env_spec.id} { ({k: v for k, v in ds.env_spec.kwargs.items() if k != 'maze_map'}) } "
        f"max_episode_steps={ds.env_spec.max_episode_steps}\n"
        f"  eval_env={eval_spec.id} max_episode_steps={eval_spec.max_episode_steps} "
        f"{ ({k: v for k, v in eval_spec.kwargs.items() if k != 'maze_map'}) }\n"
        f"  obs={ds.observation_space}\n  act={ds.action_space}\n"
        f"  ref_min_score={meta['ref_min_score']} ref_max_score={meta['ref_max_score']} (placeholders)"
    )


if __name__ == "__main__":
    main()
