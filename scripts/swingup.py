"""A swing-up task from suboptimal data: Minari dataset meanflow-rl/pendulum/swingup-mixed-v0 on ``Pendulum-v1``.

A classic-control task where the good policy is known, tried the way a new user would: learn the swing-up of
gymnasium's ``Pendulum-v1`` (200-step episodes, reward ``-(theta^2 + 0.1 theta_dot^2 + 0.001 u^2)``, torque in
[-2, 2]) from data in which a good controller's action is replaced, with probability ``--random-prob`` (default 0.7)
at each step, by a uniform random torque.

- The controller: energy pumping ``u = 2 sign(theta_dot)`` while the energy ``0.5 theta_dot^2 + 15 cos(theta)`` is
  below the upright's (15) and ``-2 sign(theta_dot)`` above it, then a PD law ``u = -(12 theta + 2.5 theta_dot)``
  once ``cos(theta) > 0.85``. Alone it returns about -135 per episode (a good policy; SAC-level returns are about
  -150); uniform random torques return about -1200.
- At the default ``--random-prob 0.7`` the data's episodes return about -750: behaviour cloning copies the random
  70%, while a critic can tell which torques swing the pendulum up and hold it there.

``Pendulum-v1`` is gymnasium's own env, so no module needs to be on the import path. ``ref_min_score`` is the random
policy's mean return and ``ref_max_score`` the controller's (measured on 100 episodes when the dataset is written),
so the normalised score is 0 for random and 100 for the controller.

Example:
    MINARI_DATASETS_PATH=/tmp/minari python scripts/swingup.py --num-episodes 100
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.storage import get_dataset_path

DATASET_ID = "meanflow-rl/pendulum/swingup-mixed-v0"
ENV_ID = "Pendulum-v1"
MAX_TORQUE = 2.0


def controller_action(obs: np.ndarray) -> np.ndarray:
    """The swing-up controller on (cos theta, sin theta, theta_dot): energy pumping, then PD near the top."""
    cos, sin, theta_dot = (float(x) for x in obs)
    if cos > 0.85:
        u = -(12.0 * np.arctan2(sin, cos) + 2.5 * theta_dot)
    else:
        direction = 1.0 if 0.5 * theta_dot**2 + 15.0 * cos < 15.0 else -1.0  # pump energy in, or out
        u = MAX_TORQUE * direction * (1.0 if theta_dot >= 0 else -1.0)
    return np.clip([u], -MAX_TORQUE, MAX_TORQUE).astype(np.float32)


def rollout_episode(env: gym.Env, seed: int, episode_id: int, random_prob: float, rng: np.random.Generator):
    """One 200-step episode (truncated by the env's time limit) as an ``EpisodeBuffer``."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        if rng.random() < random_prob:
            action = rng.uniform(-MAX_TORQUE, MAX_TORQUE, 1).astype(np.float32)
        else:
            action = controller_action(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated))
        if terminated or truncated:
            break
    return EpisodeBuffer(
        id=episode_id,
        seed=seed,
        observations=np.stack(observations).astype(np.float32),
        actions=np.stack(actions),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
    )


def mean_return(random_prob: float, num_episodes: int = 100, seed: int = 10_000) -> float:
    """Mean return of the mixed policy on ``num_episodes`` fresh starts (0: the controller, 1: uniform random)."""
    env, rng = gym.make(ENV_ID), np.random.default_rng(seed)
    returns = [rollout_episode(env, seed + i, i, random_prob, rng).rewards.sum() for i in range(num_episodes)]
    env.close()
    return float(np.mean(returns))


def make_dataset(
    num_episodes: int = 100, random_prob: float = 0.7, seed: int = 0, overwrite: bool = False
) -> minari.MinariDataset:
    """Write ``num_episodes`` episodes as Minari ``meanflow-rl/pendulum/swingup-mixed-v0`` under
    ``$MINARI_DATASETS_PATH``. Raises ``FileExistsError`` if it exists and ``overwrite`` is False."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if not 0.0 <= random_prob <= 1.0:
        raise ValueError(f"random_prob must be in [0, 1], got {random_prob}")
    if os.path.exists(get_dataset_path(DATASET_ID)):
        if not overwrite:
            raise FileExistsError(f"{DATASET_ID} already exists at {get_dataset_path(DATASET_ID)}; pass --overwrite")
        minari.delete_dataset(DATASET_ID)
    env, rng = gym.make(ENV_ID), np.random.default_rng(seed)
    episodes = [rollout_episode(env, seed + i, i, random_prob, rng) for i in range(num_episodes)]
    algo = f"swing-up controller (energy pumping, PD near the top) + uniform random steps (p={random_prob})"
    dataset = minari.create_dataset_from_buffers(
        dataset_id=DATASET_ID,
        buffer=episodes,
        env=env,
        eval_env=ENV_ID,
        algorithm_name=algo,
        author="meanflow-rl (scripts/swingup.py)",
        author_email="n/a (locally generated)",
        code_permalink="meanflow-rl: scripts/swingup.py",
        ref_min_score=mean_return(1.0),
        ref_max_score=mean_return(0.0),
        description=f"{num_episodes} episodes of a {algo} in {ENV_ID} (seed {seed}). ref_min_score: the uniform "
        "random policy's mean return; ref_max_score: the controller's (100 episodes each).",
    )
    env.close()
    return dataset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-episodes", type=int, default=100)
    p.add_argument("--random-prob", type=float, default=0.7, help="probability of a uniform random step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="delete and recreate an existing dataset")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        ds = make_dataset(args.num_episodes, args.random_prob, args.seed, args.overwrite)
    except (ValueError, FileExistsError) as e:
        p.exit(1, f"error: {e}\n")
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    meta = ds.storage.metadata
    print(
        f"wrote {DATASET_ID} -> {get_dataset_path(DATASET_ID)} in {time.time() - t0:.1f}s: {ds.total_episodes} "
        f"episodes, {ds.total_steps} steps, data return {returns.mean():.1f} +- {returns.std():.1f} (controller "
        f"{meta['ref_max_score']:.1f}, random {meta['ref_min_score']:.1f}; random-prob {args.random_prob}, seed "
        f"{args.seed})"
    )


if __name__ == "__main__":
    main()
