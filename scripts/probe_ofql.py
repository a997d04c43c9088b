"""Probe OFQL on any offline dataset the scripts read: train in-process and, every --every steps, measure what the
returns alone do not show. Used for results/README.md ("OFQL on suboptimal data", issue 27).

Every --every steps it prints:
  acting      return of OFQL's acting (Agent.act: --eval-candidates, softmax(Q * temperature), EMA or online policy)
  one_ema     return of the EMA (target) policy's one-step actions, one candidate
  one_pi      return of the online policy's one-step actions, one candidate
  q_data      the critic's min-Q on dataset (s, a); mc: the data's own discounted return-to-go at those rows (the
              value of the behaviour policy, which Q should exceed once it learns a better policy's value)
  q_pi/q_d    Q of the online policy's one-step actions over Q of the dataset actions, on the same states
  ident       mean |a - e| of the EMA policy's one-step map (0: the identity map a = e, its near-initial state)
  q_loss      the actor's normalised Q term, as logged
  act C:T     with --act C:T (repeatable): the return of acting with C candidates of the EMA policy and softmax
              temperature T by the target critics' min-Q (T 1e9: argmax)

Example (the dataset must exist, see scripts/swingup.py):
    MINARI_DATASETS_PATH=/tmp/minari python scripts/probe_ofql.py meanflow-rl/pendulum/swingup-mixed-v0 4000 \
        --every 1000 hidden_dim=128 num_layers=2
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

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


def parse_overrides(ofql, items: list[str]) -> dict:
    types = {f.name: str(f.type) for f in dataclasses.fields(ofql.Args)}
    kw = {}
    for item in items:
        name, value = item.split("=", 1)
        kind = types[name]
        kw[name] = (
            None if value == "None"
            else value == "True" if "bool" in kind
            else int(value) if "int" in kind and "." not in value
            else float(value) if "float" in kind or "int" in kind
            else value
        )  # fmt: skip
    return kw


def returns_to_go(data: dict, discount: float) -> np.ndarray:
    """Discounted return-to-go of every row, restarting at each episode end (done) and cut at truncations."""
    rtg, running = np.zeros(len(data["rewards"])), 0.0
    for i in range(len(rtg) - 1, -1, -1):
        if data["dones"][i]:
            running = 0.0
        running = data["rewards"][i] + discount * running
        rtg[i] = running
    return rtg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env_id")
    p.add_argument("steps", type=int)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per measurement")
    p.add_argument("--act", action="append", default=[], help="extra acting rule C:T (candidates:temperature)")
    p.add_argument("overrides", nargs="*", help="ofql.Args fields as name=value, e.g. eta=0 lr_schedule=constant")
    a = p.parse_intermixed_args(argv)
    ofql = load_ofql()
    torch.set_num_threads(1)
    dataset_id = ofql.resolve_dataset_id(a.env_id)
    args = ofql.Args(env_id=a.env_id, offline_steps=a.steps, seed=a.seed, **parse_overrides(ofql, a.overrides))
    args = ofql.resolve_args(args, dataset_id)
    ofql.seed_everything(dataclasses.replace(args, cuda=False))
    scale, bias = ofql.default_reward_transform(ofql.dataset_family(dataset_id))
    scale = scale if args.reward_scale is None else args.reward_scale
    bias = bias if args.reward_bias is None else args.reward_bias
    task = ofql.load_dataset(dataset_id, args.dataset_dir, args.antmaze_goal, scale, bias)
    data = task.data
    rtg = returns_to_go(data, args.discount)
    mean, std = data["observations"].mean(0), data["observations"].std(0)
    std[std < 1e-6] = 1.0
    for k in ("observations", "next_observations"):
        data[k] = (data[k] - mean) / std
    buffer = ofql.ReplayBuffer(data, len(data["rewards"]), "cpu")
    obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
    agent = ofql.Agent(obs_dim, action_dim, args, torch.device("cpu"))
    envs = ofql.make_eval_envs(task.make_env, a.episodes, 0)
    rows = np.random.default_rng(0).choice(len(rtg), min(2000, len(rtg)), replace=False)
    probe_obs, probe_act = torch.as_tensor(data["observations"][rows]), torch.as_tensor(data["actions"][rows])

    def run(act) -> float:
        def env_act(o):
            o = torch.as_tensor((task.flatten_obs(o) - mean) / std, dtype=torch.float32).reshape(-1, obs_dim)
            return task.env_action(act(o).numpy())

        return float(ofql.evaluate(env_act, envs, a.episodes, a.seed, torch.device("cpu"))["episodic_return"].mean())

    def one_step(policy):
        return lambda o: ofql.one_step_action(policy, o, torch.randn(len(o), action_dim)).clamp(-1, 1)

    print(
        f"{dataset_id}: eta {args.eta}, max_q_samples {args.max_q_samples}, temperature {args.eval_temperature}; "
        f"data return-to-go (discounted) mean {rtg[rows].mean():.1f}",
        flush=True,
    )
    t0, q_loss_sum, n = time.time(), 0.0, 0
    for step in range(1, a.steps + 1):
        metrics = agent.update(buffer.sample(args.batch_size))
        q_loss_sum, n = q_loss_sum + float(metrics[4]), n + 1
        if step % a.every:
            continue
        with torch.no_grad():
            acting = run(agent.act)
            one_ema, one_pi = run(one_step(agent.policy_target)), run(one_step(agent.policy))
            e = torch.randn(len(probe_obs), action_dim)
            ident = (ofql.one_step_action(agent.policy_target, probe_obs, e) - e).abs().mean().item()
            q_d = agent.critic(probe_obs, probe_act).min(0).values
            a_pi = one_step(agent.policy)(probe_obs)
            q_pi = agent.critic(probe_obs, a_pi).min(0).values
            extra = ""
            for rule in a.act:
                c, temp = rule.split(":")
                act = lambda o, c=int(c), temp=float(temp): ofql.sample_action(  # noqa: E731
                    agent.policy_target, agent.critic_target, o, action_dim, c, temp
                )
                extra += f" act{rule} {run(act):8.1f}"
        print(
            f"{step:6d} {time.time() - t0:5.0f}s acting {acting:8.1f} one_ema {one_ema:8.1f} one_pi {one_pi:8.1f} "
            f"q_data {q_d.mean():8.2f} mc {rtg[rows].mean():8.2f} q_pi-q_d {(q_pi - q_d).mean():7.3f} "
            f"ident {ident:.3f} q_loss {q_loss_sum / n:.3f}{extra}",
            flush=True,
        )
        q_loss_sum, n = 0.0, 0
    envs.close()


if __name__ == "__main__":
    main()
