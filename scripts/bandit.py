"""A one-step contextual bandit with two narrow reward hills, and its Minari dataset meanflow-rl/bandit/two-hills-v0.

The test of the papers' core claim: an expressive one-step policy steered by Q picks, in each state, the better of
several modes in the data, where behaviour cloning averages them or copies both.

- Observation ``s ~ U(-1, 1)`` (shape (1,)); action ``a`` in [-1, 1]^2; one step, then the episode terminates.
- Reward ``h_A(s) k(a - c_A) + h_B(s) k(a - c_B)`` with hills at ``c_A = (0.5, 0.5)`` and ``c_B = (-0.5, -0.5)``,
  ``k(d) = exp(-|d|^2 / (2 * 0.1^2))`` (narrow: the midpoint between them earns ~0), heights
  ``h_A = 0.75 + 0.25 tanh(4 s)`` and ``h_B = 0.75 - 0.25 tanh(4 s)``: hill A is the better one for s > 0, B for s < 0.
- Data: in every state the behaviour policy picks either hill with probability 1/2, whatever s is, and acts at its
  centre plus N(0, 0.05^2) noise per dimension. Its mean return is 0.75 * 0.8 = 0.6; the optimum (the better hill's
  centre) earns E max(h_A, h_B) ~ 0.95. ``ref_min_score`` 0 and ``ref_max_score`` = that optimum, so the normalised
  score is the percentage of the optimum (the data's mean is about 63).

The env's entry point is ``bandit:TwoHillBandit``, so the scripts that recover it from the dataset need this folder
on the import path: ``PYTHONPATH=scripts python algos/ofql.py --env-id meanflow-rl/bandit/two-hills-v0``.

Example:
    MINARI_DATASETS_PATH=/tmp/minari python scripts/bandit.py --num-episodes 10000
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

DATASET_ID = "meanflow-rl/bandit/two-hills-v0"
ENV_ID = "TwoHillBandit-v0"
CENTERS = np.array([[0.5, 0.5], [-0.5, -0.5]], dtype=np.float32)  # hills A and B
WIDTH = 0.1  # reward hill std
DATA_NOISE = 0.05  # behaviour noise std around the chosen centre


def heights(s: np.ndarray) -> np.ndarray:
    """[..., 1] states -> [..., 2] hill heights (h_A, h_B)."""
    x = 0.25 * np.tanh(4.0 * s)
    return np.concatenate([0.75 + x, 0.75 - x], axis=-1)


def reward(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """r(s, a) for [..., 1] states and [..., 2] actions (clipped to the action box)."""
    d2 = ((np.clip(a, -1, 1)[..., None, :] - CENTERS) ** 2).sum(-1)
    return (heights(s) * np.exp(-d2 / (2 * WIDTH**2))).sum(-1)


def optimal_return() -> float:
    """E_s max_a r(s, a), by quadrature over s ~ U(-1, 1) (the best action is the better hill's centre)."""
    s = np.linspace(-1, 1, 200_001)[:, None]
    return float(reward(s[None], CENTERS[:, None, :]).max(0).mean())


class TwoHillBandit(gym.Env):
    """One step: observe s, act, receive r(s, a), terminate."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.s = np.zeros(1, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.s = self.np_random.uniform(-1, 1, 1).astype(np.float32)
        return self.s.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.s.copy(), float(reward(self.s, np.asarray(action, np.float32))), True, False, {}


def make_env() -> gym.Env:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="bandit:TwoHillBandit")  # it terminates after one step: no time limit
    return gym.make(ENV_ID)


def make_dataset(num_episodes: int = 10_000, seed: int = 0, overwrite: bool = False) -> minari.MinariDataset:
    """Write ``num_episodes`` one-step episodes as Minari ``meanflow-rl/bandit/two-hills-v0`` under
    ``$MINARI_DATASETS_PATH``. Raises ``FileExistsError`` if it exists and ``overwrite`` is False."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if os.path.exists(get_dataset_path(DATASET_ID)):
        if not overwrite:
            raise FileExistsError(f"{DATASET_ID} already exists at {get_dataset_path(DATASET_ID)}; pass --overwrite")
        minari.delete_dataset(DATASET_ID)
    env, rng, episodes = make_env(), np.random.default_rng(seed), []
    for i in range(num_episodes):
        obs, _ = env.reset(seed=seed + i)
        action = (CENTERS[rng.integers(2)] + DATA_NOISE * rng.standard_normal(2)).astype(np.float32)
        next_obs, r, terminated, truncated, _ = env.step(action)
        episodes.append(
            EpisodeBuffer(
                id=i,
                seed=seed + i,
                observations=np.stack([obs, next_obs]),
                actions=action[None],
                rewards=np.array([r]),
                terminations=np.array([terminated]),
                truncations=np.array([truncated]),
            )
        )
    dataset = minari.create_dataset_from_buffers(
        dataset_id=DATASET_ID,
        buffer=episodes,
        env=env,
        eval_env=env.spec,
        algorithm_name=f"either hill's centre with probability 1/2, plus N(0, {DATA_NOISE}^2) noise",
        author="meanflow-rl (scripts/bandit.py)",
        author_email="n/a (locally generated)",
        code_permalink="meanflow-rl: scripts/bandit.py",
        ref_min_score=0.0,
        ref_max_score=optimal_return(),
        description=f"{num_episodes} one-step episodes of the two-hill contextual bandit (seed {seed}); "
        "ref_max_score is the optimal policy's expected return.",
    )
    env.close()
    return dataset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-episodes", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="delete and recreate an existing dataset")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        ds = make_dataset(args.num_episodes, args.seed, args.overwrite)
    except (ValueError, FileExistsError) as e:
        p.exit(1, f"error: {e}\n")
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    print(
        f"wrote {DATASET_ID} -> {get_dataset_path(DATASET_ID)} in {time.time() - t0:.1f}s: {ds.total_episodes} "
        f"episodes, data return {returns.mean():.3f} (optimum {optimal_return():.3f}, seed {args.seed})"
    )


if __name__ == "__main__":
    main()
