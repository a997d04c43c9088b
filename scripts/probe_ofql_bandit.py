"""Probe OFQL on the two-hill bandit (scripts/bandit.py): train in-process and, every few steps, measure what the
returns alone do not show. Used for results/README.md (two-hill bandit); the numbers there come from these commands.

Every --every steps it prints, on 201 evenly spaced states s in [-1, 1] (true rewards from bandit.reward):
  one_step   return of the EMA policy's one-step actions a = clip(e - u(e, 0, 1; s))
  euler10    return of 10 Euler steps of the same network's instantaneous velocity u(z, t, t; s) (flow-matching style)
  acting     return of OFQL's acting (--eval-candidates, softmax(Q * temperature))
  q_pi       the target critic's min-Q at the one-step actions (compare with their true return, one_step)
  argmax_q   the action maximising the critic at s = 0.8 (the data sit at (0.5, 0.5) and (-0.5, -0.5))
  better     fraction of one-step actions nearer the better hill; near: within 0.2 of a hill centre

Example (the dataset must exist, see scripts/bandit.py):
    MINARI_DATASETS_PATH=/tmp/minari python scripts/probe_ofql_bandit.py 10000 --every 2000 hidden_dim=128 eta=0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import bandit
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_ofql():
    if "ofql" in sys.modules:
        return sys.modules["ofql"]
    spec = importlib.util.spec_from_file_location("ofql", ROOT / "algos" / "ofql.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ofql"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", type=int)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="ofql.Args fields as name=value, e.g. eta=0 lr_schedule=constant")
    a = p.parse_intermixed_args(argv)
    ofql = load_ofql()
    torch.set_num_threads(1)
    types = {f.name: f.type for f in dataclasses.fields(ofql.Args)}
    kw = {}
    for item in a.overrides:
        name, value = item.split("=", 1)
        kind = str(types[name])
        kw[name] = (
            None if value == "None"
            else value == "True" if "bool" in kind
            else int(value) if "int" in kind and "." not in value
            else float(value) if "float" in kind or "int" in kind
            else value
        )  # fmt: skip
    args = ofql.Args(env_id=bandit.DATASET_ID, offline_steps=a.steps, seed=a.seed, **kw)
    args = ofql.resolve_args(args, bandit.DATASET_ID)
    torch.manual_seed(a.seed)
    data = ofql.load_dataset(bandit.DATASET_ID, "", "observe", 1.0, 0.0).data
    mean, std = data["observations"].mean(0), data["observations"].std(0)
    for k in ("observations", "next_observations"):
        data[k] = (data[k] - mean) / std
    buffer = ofql.ReplayBuffer(data, len(data["rewards"]), "cpu")
    agent = ofql.Agent(1, 2, args, torch.device("cpu"))
    states = np.linspace(-1, 1, 201, dtype=np.float32)[:, None]
    obs = torch.as_tensor((states - mean) / std)
    better = np.where(states[:, 0] > 0, 0, 1)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 41)] * 2, indexing="ij"), -1).reshape(-1, 2)
    print(f"eta {args.eta}; the data's mean return is 0.6, the optimum {bandit.optimal_return():.3f}")
    t0 = time.time()
    for step in range(1, a.steps + 1):
        agent.update(buffer.sample(args.batch_size))
        if step % a.every:
            continue
        with torch.no_grad():
            one_step = ofql.one_step_action(agent.policy_target, obs, torch.randn(len(obs), 2)).clamp(-1, 1)
            z = torch.randn(len(obs), 2)
            for k in range(10, 0, -1):
                t = torch.full((1, 1), k / 10)
                z = z - 0.1 * agent.policy_target(z, t, t, obs)
            acting = ofql.sample_action(
                agent.policy_target, agent.critic_target, obs, 2, args.eval_candidates, args.eval_temperature,
                args.eval_noise_scale,
            )  # fmt: skip
            q_grid = agent.critic_target(torch.full((len(grid), 1), float((0.8 - mean[0]) / std[0])), grid)
            argmax_q = grid[q_grid.min(0).values.argmax()].tolist()
            q_pi = agent.critic_target(obs, one_step).min(0).values.mean().item()
        a1 = one_step.numpy()
        dist = np.linalg.norm(a1[:, None] - bandit.CENTERS[None], axis=-1)
        print(
            f"{step:6d} {time.time() - t0:5.0f}s one_step {bandit.reward(states, a1).mean():.3f} "
            f"euler10 {bandit.reward(states, z.clamp(-1, 1).numpy()).mean():.3f} "
            f"acting {bandit.reward(states, acting.numpy()).mean():.3f} q_pi {q_pi:.3f} "
            f"argmax_q ({argmax_q[0]:.2f}, {argmax_q[1]:.2f}) "
            f"better {(dist.argmin(1) == better).mean():.2f} near {(dist.min(1) < 0.2).mean():.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
