"""Create a small *local* Minari stand-in for ``mujoco/invertedpendulum/medium-v0``: a balancing controller with
random steps mixed in.

Minari's own dataset cannot be downloaded here. This one has the same id, environment (``InvertedPendulum-v5``, eval
env the same, 1000 steps) and data layout, filled with episodes of a linear balancing controller
``a = clip(K . obs, -3, 3)`` (obs = cart position, pole angle, cart velocity, pole angular velocity) whose action is
replaced, with probability ``--random-prob`` at each step, by a uniform random action in [-3, 3]:

- the controller alone balances for all 1000 steps, uniform random actions drop the pole within about 6;
- at the default ``--random-prob 0.5`` an episode lasts about 20 steps, so behaviour cloning, which copies the random
  steps too, drops the pole early, while a critic can tell the controller's actions from the random ones.

Actions are in the env's units and span its whole action space [-3, 3], as a policy trained on the env would (the
offline scripts map them to [-1, 1]). ``ref_min_score`` 0 and
``ref_max_score`` 1000 are placeholders (the normalised score is the return / 10), not Minari's reference scores.

Example:
    MINARI_DATASETS_PATH=/tmp/minari python scripts/make_pendulum_dataset.py --num-episodes 300 --random-prob 0.5
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

DATASET_ID = "mujoco/invertedpendulum/medium-v0"
ENV_ID = "InvertedPendulum-v5"
GAINS = np.array([1.0, 10.0, 1.0, 1.0])  # on (x, theta, x_dot, theta_dot): push the cart under the falling pole


def controller_action(obs: np.ndarray) -> np.ndarray:
    """The balancing controller, clipped to the env's action bounds [-3, 3]."""
    return np.clip(GAINS @ obs, -3.0, 3.0)[None].astype(np.float32)


def rollout_episode(env: gym.Env, seed: int, episode_id: int, random_prob: float, rng: np.random.Generator):
    """One episode, until the pole falls (terminated) or 1000 steps (truncated), as an ``EpisodeBuffer``."""
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        if rng.random() < random_prob:
            action = rng.uniform(-3.0, 3.0, 1).astype(np.float32)
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
        observations=np.stack(observations),
        actions=np.stack(actions),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
    )


def make_dataset(
    num_episodes: int = 300, random_prob: float = 0.5, seed: int = 0, overwrite: bool = False
) -> minari.MinariDataset:
    """Write ``num_episodes`` episodes as Minari ``mujoco/invertedpendulum/medium-v0`` under ``$MINARI_DATASETS_PATH``.
    Raises ``FileExistsError`` if it exists and ``overwrite`` is False."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if not 0.0 <= random_prob <= 1.0:
        raise ValueError(f"random_prob must be in [0, 1], got {random_prob}")
    if os.path.exists(get_dataset_path(DATASET_ID)):
        if not overwrite:
            raise FileExistsError(f"{DATASET_ID} already exists at {get_dataset_path(DATASET_ID)}; pass --overwrite")
        minari.delete_dataset(DATASET_ID)
    env = gym.make(ENV_ID)
    rng = np.random.default_rng(seed)
    episodes = [rollout_episode(env, seed + i, i, random_prob, rng) for i in range(num_episodes)]
    algo = f"balancing controller K={GAINS.tolist()} + random steps (p={random_prob})"
    dataset = minari.create_dataset_from_buffers(
        dataset_id=DATASET_ID,
        buffer=episodes,
        env=env,
        eval_env=ENV_ID,
        algorithm_name=f"LOCAL STAND-IN ({algo}), not Minari's data",
        author="meanflow-rl (scripts/make_pendulum_dataset.py)",
        author_email="n/a (locally generated)",
        code_permalink="meanflow-rl: scripts/make_pendulum_dataset.py",
        ref_min_score=0.0,
        ref_max_score=1000.0,
        description=(
            f"Local stand-in for {DATASET_ID}: {num_episodes} episodes of a {algo} in {ENV_ID} (seed {seed}). "
            "ref_min_score=0 and ref_max_score=1000 are placeholders, not Minari's reference scores."
        ),
    )
    env.close()
    return dataset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-episodes", type=int, default=300)
    p.add_argument("--random-prob", type=float, default=0.5, help="probability of a uniform random step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="delete and recreate an existing dataset")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        ds = make_dataset(args.num_episodes, args.random_prob, args.seed, args.overwrite)
    except (ValueError, FileExistsError) as e:
        p.exit(1, f"error: {e}\n")
    returns = [ep.rewards.sum() for ep in ds.iterate_episodes()]
    print(
        f"wrote {DATASET_ID} -> {get_dataset_path(DATASET_ID)} in {time.time() - t0:.1f}s: {ds.total_episodes} "
        f"episodes, {ds.total_steps} steps, return {np.mean(returns):.1f} +- {np.std(returns):.1f} (random-prob "
        f"{args.random_prob}, seed {args.seed})"
    )


if __name__ == "__main__":
    main()
