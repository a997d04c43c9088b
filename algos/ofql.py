# OFQL: "One-Step Flow Q-Learning: Addressing the Diffusion Policy Bottleneck in Offline Reinforcement Learning"
# (Nguyen & Yoo, ICLR 2026; earlier titled "Revisiting Diffusion Q-Learning: From Iterative Denoising to One-Step
# Action Generation"). Paper: https://arxiv.org/abs/2508.13904
# Reference code: none published; its code-level details are reconstructed (each one a flag) from Diffusion-QL
# (https://github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL), CleanDiffuser's DQL pipelines
# (https://github.com/CleanDiffuserTeam/CleanDiffuser, pipelines/dql_d4rl_*.py) and MeanFlow
# (https://github.com/Gsunshine/py-meanflow).
#
# Time convention: t=0 is data, t=1 is noise, 0 <= r <= t <= 1. The policy network predicts the average velocity
# u(a_t, r, t; s) and acts in one call: a = clip(e - u(e, 0, 1; s)), e ~ N(0, I) (Eq. 12/16).
import copy
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, Optional

# torch's OpenMP threads sleep, not spin, while they wait: with the cores shared, spinning threads stall the run
# (results/README.md "Threads on a shared machine"). Read when torch loads; OMP_WAIT_POLICY=ACTIVE overrides it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

ALGO = "ofql"


@dataclass
class Args:
    # --- task, schedule, evaluation, outputs ---
    env_id: str = "antmaze-large-play"  # short alias (see ALIASES), a Minari dataset id or an OGBench singletask name
    dataset_dir: str = "~/.ogbench/data"  # where OGBench .npz files are looked for (Minari: $MINARI_DATASETS_PATH)
    antmaze_goal: Literal["observe", "relabel"] = "observe"  # goal in the obs, or D4RL-style (README "--env-id")
    offline_steps: Optional[int] = None  # gradient steps on the dataset; None = 2M for MuJoCo, 1M elsewhere (paper)
    online_steps: int = 0  # env steps of online fine-tuning after the offline phase, one update each (not in the paper)
    seed: int = 1  # RNG seed for python, numpy and torch
    eval_interval: int = 100_000  # evaluate every this many gradient steps and at the end (the paper reports the end)
    eval_episodes: int = 150  # episodes per evaluation (paper: 150 per seed, CleanDiffuser's 50 envs x 3); 0 = none
    eval_workers: int = 0  # 0: all episodes at once in this process, batched; N > 0: N processes, in waves of N
    eval_candidates: int = 50  # candidates per state, one drawn by softmax(min-Q * temp), online too; 1 = one-step
    eval_temperature: Optional[float] = None  # softmax temperature; None = CleanDiffuser's (EVAL_TEMPERATURES), or 10
    capture_video: bool = False  # first episode of each evaluation to run_dir/videos/ (needs moviepy; MUJOCO_GL=egl)
    log_interval: int = 5000  # write train.jsonl and print progress every this many gradient steps
    output_dir: str = "runs"  # runs go to {output_dir}/{env_id}__{exp_name}__{seed}__{YYYYmmdd-HHMMSS}/
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name; part of the run name
    save_model: bool = False  # write run_dir/model.pt at every evaluation and when stopped by Ctrl-C
    save_every_eval: bool = False  # with --save-model, also keep model_{step}.pt at every evaluation
    resume: Optional[str] = None  # a model.pt to resume from; the run continues in its directory, with its arguments
    eval_only: bool = False  # with --resume: only evaluate the checkpoint, into {checkpoint}_eval.json
    track: bool = False  # log to Weights & Biases (works with WANDB_MODE=offline)
    wandb_project_name: str = "meanflow-rl"  # W&B project
    wandb_entity: Optional[str] = None  # W&B entity (team); None = the default entity
    cuda: bool = True  # use CUDA when available
    compile: bool = False  # torch.compile the whole gradient step (on CUDA also captured in CUDA graphs)
    tf32: bool = True  # CUDA: TF32 matmuls (about 10 significant bits, much faster); --no-tf32 for full FP32
    torch_deterministic: bool = True  # set cudnn.deterministic

    # --- algorithm (None = the dataset family's default, FAMILY_DEFAULTS) ---
    eta: Optional[float] = None  # weight of the normalised Q term; None = MuJoCo 0.1, AntMaze 0.5, Kitchen 0.01, ...
    batch_size: int = 256  # transitions per gradient step
    discount: float = 0.99  # discount gamma (DQL)
    actor_lr: float = 3e-4  # Adam learning rate of the policy
    critic_lr: float = 3e-4  # Adam learning rate of the critics
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: both anneal to 0 over max(run, 1M) (DQL --lr_decay)
    grad_clip: Optional[float] = None  # global-norm clipping, policy and critics apart; None = off [reconstructed]
    flow_ratio: float = 0.5  # lambda = P(r = t): the share of plain flow-matching pairs in the FBC loss (Table 3)
    max_q_samples: Optional[int] = None  # a' per s'; > 1: max-Q backup; None = 10 AntMaze and non-paper data, else 1
    hidden_dim: int = 256  # width of the policy and critic MLPs
    num_layers: int = 3  # hidden layers of the policy and critic MLPs
    reward_scale: Optional[float] = None  # rewards (r + reward_bias) * reward_scale; None = 4 for AntMaze, else 1
    reward_bias: Optional[float] = None  # None = -0.5 for AntMaze (DQL's (r - 0.5) * 4), -1 PointMaze, else 0

    # --- rarely changed: reconstructed constants and ablation switches ---
    time_sampler: Literal["logit-normal", "uniform"] = "logit-normal"  # the two draws sorted into r <= t (App. M)
    time_mu: float = -0.4  # logit-normal mean
    time_sigma: float = 1.0  # logit-normal standard deviation
    adaptive_p: float = 0.0  # MeanFlow's adaptive weight 1 / (delta^2 + 0.01)^p on the FBC loss; 0 = plain L2
    time_emb_dim: int = 64  # size of the sinusoidal embeddings of t and r (and of their MLP outputs)
    time_emb_scale: float = 1.0  # t, r scaled before the embedding; DQL's x1000 makes du/dt, and the FBC loss, explode
    shared_time_mlp: bool = False  # one Linear-Mish-Linear branch for both t and r, not one each [reconstructed]
    ema_rho: float = 0.995  # EMA rate of the target policy, DQL's ema_decay [reconstructed]
    ema_every: Optional[int] = None  # EMA period K of the target policy; None = DQL's 5 scaled to the run (DQL_STEPS)
    ema_start: Optional[int] = None  # the target policy stays at its init until this step; None = DQL's 1000, scaled
    critic_tau: Optional[float] = 0.005  # target critics' Polyak rate, every step (DQL); None = the policy's EMA
    critic_layer_norm: Optional[bool] = None  # CleanDiffuser's LayerNorm critics; None = off in the paper's families
    q_normalizer: Literal["data", "policy"] = "data"  # E|Q| over dataset actions (Sec. 3.2) or a_pi (DQL's code)
    clip_in_actor_loss: bool = True  # clip the one-step action to [-1, 1] before Q in the actor loss [reconstructed]
    normalize_obs: bool = True  # z-score observations with dataset statistics (CleanDiffuser; DQL does not)
    eval_noise_scale: float = 1.0  # scale of the initial noise e when acting; 0.5 reproduces CleanDiffuser
    eval_ema: bool = True  # act with the target (EMA) policy as CleanDiffuser does; off = the online policy (DQL)


# ======================================================================================================================
# ALGO LOGIC: the paper's per-task values
# ======================================================================================================================
# eta: MuJoCo 0.1, AntMaze 0.5, Kitchen 0.01 [reconstructed: the paper tunes eta in {0.001, 0.01, 0.1, 0.3, 0.5}
# without reporting the values, and notes that Kitchen needs a small eta and AntMaze a large one]; 2M MuJoCo steps
DQL = dict(max_q_samples=1, critic_layer_norm=False)  # Diffusion-QL's critics, one-sample backup (ql_diffusion.py)
FAMILY_DEFAULTS: dict[str, dict] = {
    "mujoco": dict(DQL, eta=0.1, offline_steps=2_000_000),
    "antmaze": dict(DQL, eta=0.5, max_q_samples=10),
    "kitchen": dict(DQL, eta=0.01),
    "ogbench": dict(DQL, eta=0.01),  # reconstructed: OGBench's manipulation tasks need strong regularisation
    "adroit": dict(DQL, eta=0.1),  # reconstructed: Diffusion-QL's pen-human/cloned values (0.15, 0.1)
}
# Outside the paper's families the critic's reach is unknown, so eta is the paper's strong-regularisation value: on the
# two-hill bandit (results/README.md) eta 0.1 let the Q term pull the one-step map to where the critic extrapolates
# (the box corner) and the return collapsed below BC's, while 0.01 kept it on the data; on the PointMaze UMaze
# stand-in at 0.5 (AntMaze's value) one seed in three diverged (critic TD loss x10, policy falling below BC), while
# 0.01 held all three at BC's return (results/README.md "Longer OFQL and BC runs"). At that eta the target policy,
# which makes the TD target's next action, stays near behaviour cloning, so a one-sample backup learns the behaviour's
# value; outside the paper's families the backup is therefore DQL's max-Q over 10 samples, the best of the behaviour's
# own actions at s', and the critics CleanDiffuser's DQLCritic, with LayerNorm: on the swing-up Diffusion-QL's critics
# chose below-random actions with either backup, while on the pendulum stand-in (MuJoCo family) LayerNorm gave 148 and
# 128 where they gave 156 and 1000 (results/README.md "OFQL on suboptimal data: the critic's LayerNorm ...").
BASE_DEFAULTS = dict(eta=0.01, offline_steps=1_000_000, max_q_samples=10, eval_temperature=10.0, critic_layer_norm=True)
# CleanDiffuser's DQL softmax temperatures, first match on the dataset id wins [reconstructed]
EVAL_TEMPERATURES = (
    ("halfcheetah", 50.0),
    ("hopper/medium-expert", 8.0),
    ("hopper", 100.0),
    ("walker2d", 300.0),
    ("antmaze/medium-diverse", 5.0),
    ("antmaze", 10.0),
    ("kitchen", 3.0),
)


# DQL's schedules [reconstructed: Alg. 1 names an EMA period K and rate rho, not their values, and no LR schedule] are
# set for runs of 1M steps (DQL_STEPS); a shorter run scales the EMA's and keeps to the LR's first part:
# - the target policy's EMA: DQL's update_ema_every 5 and step_start_ema 1000 (agents/ql_diffusion.py) are 0.1% of a
#   1M-step run; at 4k steps the target policy, which makes every TD target's next action, would sit at its initial map
#   a ~ e (about random actions) for a quarter of the run, so the critic learns a random policy's value. None scales
#   both, (start, period) = (DQL's) x min(1, total steps / DQL_STEPS): DQL's own from 1M steps on, (4, 1) at 4k.
# - the cosine LR annealing (DQL --lr_decay, CleanDiffuser's CosineAnnealingLR) runs over max(total steps, DQL_STEPS):
#   annealed to 0 over a 4k- or 6k-step run, the swing-up's acting peaked at 2/3-3/4 of the run and fell back towards
#   the data's return in 2 seeds of 2, which held the controller's return at a constant LR; a run of 1M steps or more
#   anneals to 0 at its end, as DQL's (results/README.md "OFQL on suboptimal data").
DQL_STEPS = 1_000_000
DQL_EMA = dict(ema_start=1000, ema_every=5)


def resolve_args(args: Args, dataset_id: str) -> Args:
    """Fill None hyperparameters from FAMILY_DEFAULTS / EVAL_TEMPERATURES, else BASE_DEFAULTS; the EMA schedule from
    the run's length (DQL_EMA, DQL_STEPS)."""
    defaults = {**BASE_DEFAULTS, **FAMILY_DEFAULTS.get(dataset_family(dataset_id), {})}
    defaults["eval_temperature"] = next(
        (temp for key, temp in EVAL_TEMPERATURES if key in dataset_id), defaults["eval_temperature"]
    )
    args = Args(**{**asdict(args), **{k: v for k, v in defaults.items() if getattr(args, k) is None}})
    fraction = min(1.0, (args.offline_steps + args.online_steps) / DQL_STEPS)
    ema = {
        "ema_start": round(DQL_EMA["ema_start"] * fraction),
        "ema_every": max(1, round(DQL_EMA["ema_every"] * fraction)),
    }
    return Args(**{**asdict(args), **{k: v for k, v in ema.items() if getattr(args, k) is None}})


def default_reward_transform(family: str) -> tuple[float, float]:
    """(scale, bias) of rewards (r + bias) * scale: DQL's AntMaze (r - 0.5) * 4 (utils/data_sampler.py); PointMaze r - 1
    [reconstructed: with 0/1 rewards the actor's Q / mean|Q| amplifies the critic's noise early on; algos/README.md
    "OFQL"]."""
    return {"antmaze": (4.0, -0.5), "pointmaze": (1.0, -1.0)}.get(family, (1.0, 0.0))


# ======================================================================================================================
# ALGO LOGIC: networks, u_theta(a_t, r, t; s) and the twin critics (DQL's 3 x 256 Mish MLPs)
# ======================================================================================================================
class SinusoidalEmbedding(nn.Module):
    """DQL's SinusoidalPosEmb of `scale * x`: [sin(x f_k), cos(x f_k)], f_k = 10000^(-k / (dim/2 - 1))."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1)), persistent=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale * x * self.freqs  # [B, 1] -> [B, dim/2]
        return torch.cat([x.sin(), x.cos()], dim=-1)


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int) -> nn.Sequential:
    """num_layers x (Linear, Mish), then a linear head; PyTorch's default init as in DQL."""
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        layers += [nn.Linear(in_dim, hidden_dim), nn.Mish()]
        in_dim = hidden_dim
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class AverageVelocityNet(nn.Module):
    """u_theta(a_t, r, t; s): DQL's MLP on concat(a_t, s, emb(t), emb(r)), each time through the sinusoidal embedding
    and a Linear(E, 2E)-Mish-Linear(2E, E) branch (CleanDiffuser's DQLMlp); a [1, 1] time is broadcast."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        emb_dim: int = 64,
        emb_scale: float = 1.0,
        shared_time_mlp: bool = False,
    ):
        super().__init__()
        self.embed = SinusoidalEmbedding(emb_dim, emb_scale)
        self.t_mlp = mlp(emb_dim, 2 * emb_dim, 1, emb_dim)
        self.r_mlp = self.t_mlp if shared_time_mlp else mlp(emb_dim, 2 * emb_dim, 1, emb_dim)
        self.body = mlp(action_dim + obs_dim + 2 * emb_dim, hidden_dim, num_layers, action_dim)

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        batch = z.shape[0]
        emb_t = self.t_mlp(self.embed(t)).expand(batch, -1)
        emb_r = self.r_mlp(self.embed(r)).expand(batch, -1)
        return self.body(torch.cat([z, obs, emb_t, emb_r], dim=-1))


class TwinLinear(nn.Module):
    """Two independent linear layers in one batched matmul, [2, B, in] -> [2, B, out]; nn.Linear's default init."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(2, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(2, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinLayerNorm(nn.Module):
    """LayerNorm over the features with each critic's own gain and bias, [2, B, H] -> [2, B, H]."""

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 1, features))
        self.bias = nn.Parameter(torch.zeros(2, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class TwinCritic(nn.Module):
    """Q_1, Q_2: two independent MLPs s ⊕ a -> 3 x 256 Mish -> 1, evaluated together; returns [2, B]. layer_norm:
    CleanDiffuser's DQLCritic (cleandiffuser/utils), each hidden Linear followed by LayerNorm, the first activation
    Tanh; off: Diffusion-QL's (agents/ql_diffusion.py), Linear-Mish only."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden_dim: int = 256, num_layers: int = 3, layer_norm: bool = False
    ):
        super().__init__()
        dims = [obs_dim + action_dim] + [hidden_dim] * num_layers + [1]
        self.layers = nn.ModuleList(TwinLinear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(TwinLayerNorm(hidden_dim) for _ in range(num_layers)) if layer_norm else None

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1).expand(2, -1, -1)
        for i, layer in enumerate(self.layers[:-1]):
            x = layer(x)
            x = F.mish(x) if self.norms is None else (torch.tanh if i == 0 else F.mish)(self.norms[i](x))
        return self.layers[-1](x).squeeze(-1)


# ======================================================================================================================
# ALGO LOGIC: the one-step action and the FBC (MeanFlow) loss with one JVP (Eq. 12-16)
# ======================================================================================================================
def one_step_action(policy: Callable, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """a = e - u(e, r=0, t=1; s) (Eq. 12/16): one network call, differentiable, not clipped."""
    zero, one = noise.new_zeros(1, 1), noise.new_ones(1, 1)
    return noise - policy(noise, zero, one, obs)


def u_and_total_derivative(
    policy: Callable, obs: torch.Tensor, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u(z, r, t; s) and du/dt = v . d_z u + d_t u from one forward-mode JVP over (z, r, t) with tangents (v, 0, 1);
    the state gets no tangent (Eq. 14, App. O)."""
    return torch.func.jvp(
        lambda z_, r_, t_: policy(z_, r_, t_, obs), (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t))
    )


def sample_times(
    batch_size: int,
    flow_ratio: float,
    sampler: str = "logit-normal",
    mu: float = -0.4,
    sigma: float = 1.0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), each [B, 1], 0 <= r <= t <= 1 (py-meanflow's time_sampler.py): two independent draws (sigmoid(N(mu,
    sigma^2)) or U(0, 1)), t the larger and r the smaller, then r = t with probability flow_ratio (Table 3, App. M)."""
    if sampler == "logit-normal":
        draws = torch.sigmoid(mu + sigma * torch.randn(2, batch_size, 1, device=device))
    else:
        draws = torch.rand(2, batch_size, 1, device=device)
    t, r = draws.max(0).values, draws.min(0).values
    r = torch.where(torch.rand(batch_size, 1, device=device) < flow_ratio, t, r)
    return t, r


def fbc_loss(
    policy: Callable,
    obs: torch.Tensor,
    actions: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    adaptive_p: float = 0.0,
) -> torch.Tensor:
    """L_FBC = E ||u(a_t, r, t; s) - sg(u_tgt)||^2 with u_tgt = v - (t - r) du/dt (Eq. 13-15); mean over batch and
    action dims (DQL's BC loss). r = t gives plain flow matching, u_tgt = v."""
    z = (1 - t) * actions + t * noise  # a_t on the straight path from the data (t=0) to the noise (t=1)
    v = noise - actions  # conditional velocity, not a model estimate
    u, du_dt = u_and_total_derivative(policy, obs, z, r, t, v)
    u_tgt = (v - (t - r) * du_dt).detach()
    delta_sq = (u - u_tgt).pow(2).mean(dim=-1)
    weight = (delta_sq.detach() + 0.01).pow(-adaptive_p)  # MeanFlow's adaptive weight (norm_eps 0.01); 1 at p = 0
    return (weight * delta_sq).mean()


# ======================================================================================================================
# ALGO LOGIC: critic loss with the max-Q backup, actor loss (Eq. 6, 7, 17)
# ======================================================================================================================
METRICS = ("critic_loss", "q_data", "td_target", "fbc_loss", "q_loss", "actor_loss")


def max_q_backup(q_next: torch.Tensor) -> torch.Tensor:
    """[2, B, N] target-critic values of N next actions per next state -> [B]: the max over the samples for each
    critic, then the min of the two maxima (DQL's max-Q backup). N = 1 is the plain clipped double-Q target."""
    return q_next.max(dim=-1).values.min(dim=0).values


@torch.no_grad()
def td_target(
    policy_target: Callable, critic_target: nn.Module, batch: dict[str, torch.Tensor], discount: float, num_samples: int
) -> torch.Tensor:
    """y = r + gamma * mask * backup(Q'(s', a')), with a' = clip(e - u_theta'(e, 0, 1; s')) from the EMA policy
    (Eq. 6/17), num_samples a' per s'."""
    next_obs = batch["next_observations"].repeat_interleave(num_samples, dim=0)  # rows grouped per state
    noise = torch.randn(next_obs.shape[0], batch["actions"].shape[1], device=next_obs.device)
    next_actions = one_step_action(policy_target, next_obs, noise).clamp(-1, 1)
    q_next = critic_target(next_obs, next_actions).view(2, -1, num_samples)
    return batch["rewards"].squeeze(-1) + discount * batch["masks"].squeeze(-1) * max_q_backup(q_next)


def critic_loss(
    policy_target: nn.Module, critic: nn.Module, critic_target: nn.Module, batch: dict[str, torch.Tensor], args: Args
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i E (y - Q_i(s, a))^2 (Eq. 6/17, DQL's sum of the two MSEs) and its metrics."""
    y = td_target(policy_target, critic_target, batch, args.discount, args.max_q_samples)
    q = critic(batch["observations"], batch["actions"])
    loss = (q - y).pow(2).mean(dim=1).sum()
    return loss, torch.stack([loss, q.mean(), y.mean()]).detach()


def actor_loss(
    policy: nn.Module, critic: nn.Module, batch: dict[str, torch.Tensor], args: Args
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_FBC + eta * (-Q_1(s, a_pi).mean() / |Q_2(s, a)|.mean().detach()), the critics swapped at random (Eq. 7/17;
    alpha = eta / E|Q(s, a)| over dataset actions a as in Sec. 3.2, or over a_pi as in DQL's code); the Q gradient
    flows through the one-step action only (App. I)."""
    obs, actions = batch["observations"], batch["actions"]
    batch_size, device = actions.shape[0], actions.device
    t, r = sample_times(batch_size, args.flow_ratio, args.time_sampler, args.time_mu, args.time_sigma, device)
    noise = torch.randn(actions.shape, device=device)  # randn, not randn_like, which torch.compile's CSE merges
    fbc = fbc_loss(policy, obs, actions, noise, t, r, args.adaptive_p)

    a_pi = one_step_action(policy, obs, torch.randn(actions.shape, device=device))
    if args.clip_in_actor_loss:
        a_pi = a_pi.clamp(-1, 1)
    frozen = {k: p.detach() for k, p in critic.named_parameters()}  # no critic gradients from the actor loss
    q = torch.func.functional_call(critic, frozen, (obs, a_pi))
    q_norm = q if args.q_normalizer == "policy" else torch.func.functional_call(critic, frozen, (obs, actions))
    swap = torch.rand((), device=device) < 0.5
    q1, q2 = torch.where(swap, q[1], q[0]), torch.where(swap, q_norm[0], q_norm[1])
    q_loss = -q1.mean() / q2.abs().mean().detach()
    loss = fbc + args.eta * q_loss
    return loss, torch.stack([fbc, q_loss, loss]).detach()


# ======================================================================================================================
# ALGO LOGIC: one update is one iteration of Algorithm 1 (App. B); Agent.act for evaluation and online acting
# ======================================================================================================================
def lerp_(target: nn.Module, source: nn.Module, weight: float) -> None:
    """target <- target + weight * (source - target), parameter-wise."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), weight)


class Agent:
    """Policy, twin critics, their EMA targets, optimisers and LR schedules; `update` is one iteration of Alg. 1."""

    STATE = ("policy", "policy_target", "critic", "critic_target", "policy_opt", "critic_opt", "policy_sched",
             "critic_sched")  # fmt: skip
    """what a checkpoint holds, besides the step counter"""

    def __init__(self, obs_dim: int, action_dim: int, args: Args, device: torch.device):
        a = self.args = args
        self.action_dim = action_dim
        self.policy = AverageVelocityNet(
            obs_dim, action_dim, a.hidden_dim, a.num_layers, a.time_emb_dim, a.time_emb_scale, a.shared_time_mlp
        ).to(device)
        self.critic = TwinCritic(obs_dim, action_dim, a.hidden_dim, a.num_layers, a.critic_layer_norm).to(device)
        self.policy_target = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.policy_opt = adam(self.policy.parameters(), a.actor_lr, a, device)
        self.critic_opt = adam(self.critic.parameters(), a.critic_lr, a, device)
        self.policy_sched = torch.optim.lr_scheduler.LambdaLR(self.policy_opt, self.lr_factor)
        self.critic_sched = torch.optim.lr_scheduler.LambdaLR(self.critic_opt, self.lr_factor)
        self.step = 0
        self.train_step = compile_update(self.gradient_step, a, device)

    def lr_factor(self, step: int) -> float:
        """Cosine annealing to 0 over max(run, DQL_STEPS) steps (DQL --lr_decay, CleanDiffuser's CosineAnnealingLR)."""
        a = self.args
        if a.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(a.offline_steps + a.online_steps, DQL_STEPS))))

    def update(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Alg. 1 l. 1-5: the gradient step, then every K steps the EMA (theta' <- rho theta' + (1 - rho) theta, from
        step ema_start; phi' likewise with --critic-tau None). Returns the METRICS tensor (no host sync)."""
        a = self.args
        self.step += 1
        metrics = self.train_step(batch)
        self.policy_sched.step()
        self.critic_sched.step()
        if self.step % a.ema_every == 0:
            with torch.no_grad():
                if a.critic_tau is None:
                    lerp_(self.critic_target, self.critic, 1 - a.ema_rho)
                if self.step >= a.ema_start:
                    lerp_(self.policy_target, self.policy, 1 - a.ema_rho)
        return metrics

    def gradient_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The critic step on the EMA policy's target, the actor step against the updated critic, then DQL's per-step
        Polyak update phi' <- (1 - tau) phi' + tau phi (what --compile compiles)."""
        a = self.args
        loss, critic_metrics = critic_loss(self.policy_target, self.critic, self.critic_target, batch, a)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.critic.parameters(), a.grad_clip, foreach=True)
        self.critic_opt.step()

        loss, actor_metrics = actor_loss(self.policy, self.critic, batch, a)
        self.policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), a.grad_clip, foreach=True)
        self.policy_opt.step()
        if a.critic_tau is not None:
            with torch.no_grad():
                lerp_(self.critic_target, self.critic, a.critic_tau)
        return torch.cat([critic_metrics, actor_metrics])

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observations [n, obs_dim] -> actions [n, action_dim] in [-1, 1], for evaluation and online
        acting: sample_action with the EMA policy (--no-eval-ema: the online one) and the target critics."""
        a = self.args
        policy = self.policy_target if a.eval_ema else self.policy
        return sample_action(
            policy, self.critic_target, obs, self.action_dim, a.eval_candidates, a.eval_temperature, a.eval_noise_scale
        )

    def state_dict(self) -> dict:
        return {**{name: getattr(self, name).state_dict() for name in self.STATE}, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        for name in self.STATE:
            getattr(self, name).load_state_dict(state[name])
        self.step = state["step"]


# ======================================================================================================================
# ALGO LOGIC: acting as CleanDiffuser's DQL evaluation: N one-step candidates, one drawn by softmax over min-Q
# ======================================================================================================================
@torch.no_grad()
def sample_action(
    policy: Callable,
    critic: nn.Module,
    obs: torch.Tensor,
    action_dim: int,
    num_candidates: int,
    temperature: float,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """CleanDiffuser's DQL acting: num_candidates one-step actions per state from noise scaled by noise_scale, scored
    by the critic's min-Q; one is drawn from softmax(Q * temperature)."""
    batch = obs.shape[0]
    obs_c = obs.repeat_interleave(num_candidates, dim=0)
    noise = noise_scale * torch.randn(batch * num_candidates, action_dim, device=obs.device)
    actions = one_step_action(policy, obs_c, noise).clamp(-1, 1)
    q = critic(obs_c, actions).min(0).values.view(batch, num_candidates)
    idx = torch.multinomial(torch.softmax(q * temperature, dim=1), 1).squeeze(1)
    return actions.view(batch, num_candidates, action_dim)[torch.arange(batch, device=obs.device), idx]


# ======================================================================================================================
# TRAINING LOOP: the offline phase, then (with --online-steps) online fine-tuning on the same buffer
# ======================================================================================================================
def main(args: Args, ckpt: Optional[dict] = None) -> None:
    """ckpt: the checkpoint of --resume that parse_cli read (None: main reads it; see `resume`)."""
    args, ckpt = resume(args, ckpt)
    check_args(args)
    dataset_id = resolve_dataset_id(args.env_id)
    args = resolve_args(args, dataset_id)
    total_steps = args.offline_steps + args.online_steps
    if ckpt is not None and ckpt["step"] >= total_steps and not args.eval_only:
        print(f"{args.resume}: the run finished at step {ckpt['step']} of {total_steps}; nothing to do")
        return
    run_dir = resume_run_dir(args, ckpt["step"]) if ckpt is not None and not args.eval_only else None
    device = seed_everything(args)

    scale, bias = default_reward_transform(dataset_family(dataset_id))
    scale = scale if args.reward_scale is None else args.reward_scale
    bias = bias if args.reward_bias is None else args.reward_bias
    task = load_dataset(dataset_id, args.dataset_dir, args.antmaze_goal, scale, bias, not args.eval_only)
    if args.capture_video:
        check_video(task.make_env)
    # the evaluation workers fork before anything touches CUDA (forking a CUDA-initialised process is unsupported)
    eval_envs = make_eval_envs(task.make_env, args.eval_episodes, args.eval_workers, args.capture_video)
    if args.eval_only:  # acting needs the env and the checkpoint's observation statistics, not the dataset
        obs_stats = ckpt["obs_stats"]
    else:
        data = task.data
        obs_mean = data["observations"].mean(0) if args.normalize_obs else np.zeros_like(data["observations"][0])
        obs_std = data["observations"].std(0) if args.normalize_obs else np.ones_like(data["observations"][0])
        obs_std[obs_std < 1e-6] = 1.0
        obs_stats = {"mean": obs_mean, "std": obs_std}
        for split in filter(None, (data, task.val_data)):
            for k in ("observations", "next_observations"):
                split[k] = (split[k] - obs_mean) / obs_std
        buffer = ReplayBuffer(data, capacity=len(data["rewards"]) + args.online_steps, device=device)
        val_buffer = ReplayBuffer(task.val_data, len(task.val_data["rewards"]), device) if task.val_data else None
    obs_mean, obs_std = obs_stats["mean"], obs_stats["std"]
    obs_dim, action_dim = len(obs_mean), len(task.action_half)
    agent = Agent(obs_dim, action_dim, args, device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])

    def normalize(raw_obs: object) -> np.ndarray:
        return (task.flatten_obs(raw_obs) - obs_mean) / obs_std

    def policy(raw_obs: object) -> np.ndarray:  # env observations -> [n, action_dim] in [-1, 1]
        obs_t = torch.as_tensor(normalize(raw_obs), dtype=torch.float32, device=device).reshape(-1, obs_dim)
        return agent.act(obs_t).cpu().numpy()

    def evaluation(step: int, run_dir: str) -> dict:
        """One evaluation, printed: its eval.jsonl row; with --capture-video, its first episode in run_dir/videos/."""
        video = video_file(args, run_dir, step)
        act = lambda o: task.env_action(policy(o))  # noqa: E731
        result = evaluate(act, eval_envs, args.eval_episodes, args.seed, device, video)
        row = {"step": step, **{k: float(v.mean()) for k, v in result.items()}}
        if task.normalized_score is not None:
            row["normalized_score"] = float(np.mean(task.normalized_score(result["episodic_return"])))
        tqdm.write(f"[eval {step}] {args.eval_episodes} episodes: {summary(row, list(row)[1:])}")
        return row

    if args.eval_only:
        write_eval_summary(args.resume, evaluation(agent.step, os.path.dirname(os.path.abspath(args.resume))), args)
        return eval_envs.close()
    if ckpt is not None:
        buffer.restore_online_part(ckpt["online_buffer"])
    else:
        run_dir = make_run_dir(args)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({**asdict(args), "dataset_id": dataset_id, "device": str(device)}, f, indent=2)
    logger = Logger(run_dir, args)
    print(
        f"env-id {args.env_id} -> dataset {dataset_id} ({task.family}): {buffer.offline_size} transitions, "
        f"obs {obs_dim}, action {action_dim}, device {device}; config in {os.path.join(run_dir, 'config.json')}"
    )

    def save() -> None:
        state = dict(online_buffer=buffer.online_part(), obs_stats=obs_stats)
        save_checkpoint(os.path.join(run_dir, "model.pt"), agent.step, agent, args, device, **state)

    env = task.make_env() if args.online_steps > 0 else None
    # seeded by the step the online phase (re)starts at: a resumed run replays no episode seed
    obs = env.reset(seed=args.seed + max(agent.step, args.offline_steps))[0] if env is not None else None
    episode_return, episode_length = 0.0, 0
    if ckpt is not None:  # restored last, so that the run continues exactly where the checkpoint left it
        restore_rng(ckpt["rng"], device)
    progress = Progress(total_steps, agent.step)
    metric_sum, metric_count, last_eval, episodes = None, 0, {}, []

    while agent.step < total_steps and not progress.stop:
        online = agent.step >= args.offline_steps
        if online:  # one env step, then one update on the shared buffer (UTD 1)
            action = policy(obs)[0]
            next_obs, reward, terminated, truncated, _ = env.step(task.env_action(action))
            buffer.add(
                observations=normalize(obs),
                actions=action,
                rewards=task.transform_reward(np.float32(reward)),
                masks=np.float32(1.0 - terminated),
                next_observations=normalize(next_obs),
            )
            episode_return, episode_length = episode_return + float(reward), episode_length + 1
            obs = next_obs
            if terminated or truncated:
                episodes.append((episode_return, episode_length))
                obs, episode_return, episode_length = env.reset()[0], 0.0, 0

        metrics = agent.update(buffer.sample(args.batch_size))
        metric_sum = metrics if metric_sum is None else metric_sum + metrics
        metric_count += 1
        step, phase = agent.step, "online" if online else "offline"
        progress.step()

        if step % args.log_interval == 0 or step == total_steps:
            means = dict(zip(METRICS, (metric_sum / metric_count).tolist()))  # the only host sync of the interval
            if not all(math.isfinite(v) for v in means.values()):
                raise FloatingPointError(
                    f"non-finite loss at step {step}: {means}. Try a smaller --eta, "
                    "--actor-lr or --critic-lr, set --grad-clip, and check the dataset for NaN/inf values."
                )
            row = {"step": step, "phase": phase, **means, "actor_lr": float(agent.policy_sched.get_last_lr()[0]),
                   "critic_lr": float(agent.critic_sched.get_last_lr()[0]), "sps": progress.log()}  # fmt: skip
            if val_buffer is not None:  # the same losses on OGBench's validation split, as FQL logs them;
                # under a forked RNG, so that validation leaves the training run's random stream as it is
                with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    batch = val_buffer.sample(args.batch_size)
                    critic_val = critic_loss(agent.policy_target, agent.critic, agent.critic_target, batch, args)[1]
                    val = torch.cat([critic_val, actor_loss(agent.policy, agent.critic, batch, args)[1]])
                row.update({f"val/{k}": v for k, v in zip(METRICS, val.tolist())})
            if episodes:
                row["episodic_return"] = float(np.mean([r for r, _ in episodes]))
                row["episodic_length"] = float(np.mean([n for _, n in episodes]))
                row["online_env_steps"] = step - args.offline_steps
            line = f"[{phase} {step}/{total_steps}] sps {row['sps']:.2f} | "
            line += summary(row, ("critic_loss", "fbc_loss", "q_loss", "q_data", "episodic_return"))
            logger.log("train", row, line + (f" | last eval: {summary(last_eval, last_eval)}" if last_eval else ""))
            metric_sum, metric_count, episodes = None, 0, []

        if step % args.eval_interval == 0 or step == total_steps:
            if args.eval_episodes > 0:
                row = evaluation(step, run_dir)
                logger.log("eval", row, video=video_file(args, run_dir, step))
                last_eval = {k: v for k, v in row.items() if k != "step"}
            if args.save_model:
                save()
                if args.save_every_eval:
                    shutil.copyfile(os.path.join(run_dir, "model.pt"), os.path.join(run_dir, f"model_{step}.pt"))
            progress.reset()  # the next SPS leaves the evaluation and the checkpoint out

    if progress.stop and args.save_model:  # Ctrl-C: a last checkpoint, at the step reached
        save()
    eval_envs.close()
    if env is not None:
        env.close()
    logger.close()
    progress.close(run_dir, os.path.join(run_dir, "model.pt") if args.save_model else None)


# ======================================================================================================================
# PLUMBING (TRY NOT TO MODIFY): task aliases, data layer, replay buffer, arguments, checkpoints, logging, evaluation
# ======================================================================================================================
_ANTMAZE = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large", "large-play", "large-diverse")
_ADROIT, _POINTMAZE = ("pen", "door", "hammer", "relocate"), ("open", "umaze", "medium", "large")
_MUJOCO = ("halfcheetah", "hopper", "walker2d")
ALIASES: dict[str, str] = {
    **{f"antmaze-{k}": f"D4RL/antmaze/{'large-play' if k == 'large' else k}-v1" for k in _ANTMAZE},
    **{f"kitchen-{k}": f"D4RL/kitchen/{k}-v2" for k in ("complete", "partial", "mixed")},
    **{f"{e}-{k}": f"D4RL/{e}/{k}-v2" for e in _ADROIT for k in ("human", "cloned", "expert")},
    **{f"pointmaze-{m}{d}": f"D4RL/pointmaze/{m}{d}-v2" for m in _POINTMAZE for d in ("", "-dense")},
    **{f"{e}-{k}": f"mujoco/{e}/{k}-v0" for e in _MUJOCO for k in ("simple", "medium", "expert")},
}
"""short --env-id aliases -> Minari dataset ids; Minari's MuJoCo sets are new data, not D4RL's"""


def resolve_dataset_id(env_id: str) -> str:
    """--env-id -> Minari id or OGBench singletask name; unknown ids list the aliases."""
    if env_id in ALIASES:
        return ALIASES[env_id]
    if is_ogbench_name(env_id) or "/" in env_id:
        return env_id
    names = ", ".join(ALIASES)
    raise DatasetError(
        f"unknown --env-id '{env_id}'. Use a short alias ({names}), a Minari dataset id such as "
        "'D4RL/antmaze/large-play-v1', or an OGBench singletask name such as 'cube-double-play-singletask-task2-v0'."
    )


# --- shared data layer: identical in meanflowql.py, ofql.py and mvp.py (tests/test_cli.py checks it) ---
D4RL_GOAL_RADIUS = 0.5  # D4RL's AntMaze goal radius (relabel_antmaze_rewards.py); gymnasium-robotics uses 0.45
GET_IT = "README.md, section 'Datasets', says how to get or create it"


class DatasetError(Exception):
    """An expected, user-fixable problem (unknown id, missing dataset, bad data); printed without a traceback."""


@dataclass
class Task:
    """A dataset and its env. data: observations, actions in [-1, 1], rewards, masks, dones, next_observations
    (None with --eval-only); val_data: OGBench's validation split; flatten_obs: env observation -> the data's layout;
    normalized_score: raw returns -> score x100, where the dataset has one."""

    family: str  # antmaze, pointmaze, kitchen, adroit, mujoco, ogbench or minari
    data: Optional[dict[str, np.ndarray]]
    val_data: Optional[dict[str, np.ndarray]]
    make_env: Callable[..., gym.Env]  # kwargs go to gym.make (render_mode)
    flatten_obs: Callable[[object], np.ndarray]
    normalized_score: Optional[Callable[[np.ndarray], np.ndarray]]
    action_mid: Optional[np.ndarray] = None  # the env's action bounds as mid + [-1, 1] * half (set by load_dataset)
    action_half: Optional[np.ndarray] = None
    reward_scale: float = 1.0  # rewards (r + reward_bias) * reward_scale, offline and online
    reward_bias: float = 0.0

    def transform_reward(self, reward: np.ndarray) -> np.ndarray:
        return (reward + np.float32(self.reward_bias)) * np.float32(self.reward_scale)

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] -> the env's units (InvertedPendulum: [-3, 3])."""
        return (self.action_mid + action * self.action_half).astype(np.float32)


def is_ogbench_name(env_id: str) -> bool:
    return re.fullmatch(r"[a-z0-9-]+-singletask(-task\d)?-v\d", env_id) is not None


def dataset_family(dataset_id: str) -> str:
    if is_ogbench_name(dataset_id) or dataset_id.startswith("mujoco/"):
        return "ogbench" if is_ogbench_name(dataset_id) else "mujoco"
    family = dataset_id.split("/")[1] if dataset_id.startswith("D4RL/") else "minari"
    return "adroit" if family in ("pen", "door", "hammer", "relocate") else family


def load_dataset(
    dataset_id: str, dataset_dir: str, antmaze_goal: str, reward_scale: float, reward_bias: float, data: bool = True
) -> Task:
    """The dataset as transitions, checked against its env (shapes, finite values, action bounds) before any compute;
    actions mapped to [-1, 1], rewards to (r + reward_bias) * reward_scale. data=False: the env only (--eval-only)."""
    ogbench = is_ogbench_name(dataset_id)
    task, env = load_ogbench(dataset_id, dataset_dir, data) if ogbench else load_minari(dataset_id, antmaze_goal, data)
    task.reward_scale, task.reward_bias = reward_scale, reward_bias
    space = env.action_space
    if not (isinstance(space, gym.spaces.Box) and np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise DatasetError(f"'{dataset_id}': the env's action space {space} is not a bounded Box")
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    task.action_mid, task.action_half = (high + low) / 2, (high - low) / 2
    expected = {"observations": task.flatten_obs(env.observation_space.sample()).shape, "actions": space.shape}
    env.close()
    for split, data in (("", task.data), (" (validation split)", task.val_data)):
        if data is None:
            continue
        n = len(data["rewards"])
        for key, shape in expected.items():
            if data[key].shape[1:] != shape:
                raise DatasetError(
                    f"'{dataset_id}'{split}: {key} have shape {data[key].shape[1:]} per step, but its env "
                    f"({env.spec.id if env.spec else env}) has {shape}. Is the dataset from another env or version?"
                )
        for key, v in data.items():
            if (bad := ~np.isfinite(v.reshape(n, -1)).all(1)).any():
                where = f"(first at index {bad.argmax()})"
                raise DatasetError(f"'{dataset_id}'{split}: {bad.sum()} of {n} transitions have NaN/inf {key} {where}")
        # actions -> [-1, 1] from the env's bounds (exactly the identity for [-1, 1]); clipped to +-(1 - 1e-5) as in FQL
        unit = (data["actions"] - task.action_mid) / task.action_half
        if (outside := (np.abs(unit) > 1 + 1e-3).any(1)).any():
            print(
                f"notice: '{dataset_id}'{split}: {outside.sum()} of {n} actions lie outside the env's bounds "
                f"[{low.min():g}, {high.max():g}] by more than 0.05% of their range; clipped"
            )
        data["actions"] = np.clip(unit, -1 + 1e-5, 1 - 1e-5).astype(np.float32)
        data["rewards"] = task.transform_reward(data["rewards"])
    return task


def antmaze_eval_map(ds: object, dataset_id: str) -> list:
    """Minari's umaze eval maps (umaze and umaze-diverse) are walled unlike the maze the data come from: the gap in the
    middle wall is on the other side (Minari issue #304). Rotated by 180 degrees, the eval map has the data's walls and
    the same task (start and goal cells relative to the walls); return that map, else the eval map itself."""
    walls = lambda maze_map: [[c == 1 for c in row] for row in maze_map]  # noqa: E731
    data_map = ds.env_spec.kwargs["maze_map"]
    eval_map = json.loads(ds.storage.metadata["eval_env_spec"])["kwargs"]["maze_map"]
    if walls(eval_map) == walls(data_map):
        return eval_map
    rotated = [row[::-1] for row in eval_map[::-1]]
    if walls(rotated) != walls(data_map):
        raise DatasetError(f"'{dataset_id}': the eval env's maze is walled unlike the data's maze")
    print(f"notice: {dataset_id}: evaluating on the eval map rotated by 180 degrees, which has the data's walls")
    return rotated


class FixedGoalAntMaze(gym.Wrapper):
    """D4RL's AntMaze task (--antmaze-goal relabel): one goal, the centre of the eval map's goal cell (no per-reset
    noise); reward 1 and termination within 0.5 of it (D4RL goal_reaching_env.py with eval=True)."""

    def __init__(self, env: gym.Env, goal: np.ndarray):
        super().__init__(env)
        self.goal = goal

    def reset(self, **kwargs: object) -> tuple[dict, dict]:
        obs, info = self.env.reset(**kwargs)
        self.env.unwrapped.goal = self.goal.copy()
        self.env.unwrapped.update_target_site_pos()
        return {**obs, "desired_goal": self.goal.copy()}, info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        obs, _, _, truncated, info = self.env.step(action)
        info["success"] = reached = bool(np.linalg.norm(obs["achieved_goal"] - self.goal) <= D4RL_GOAL_RADIUS)
        return {**obs, "desired_goal": self.goal.copy()}, float(reached), reached, truncated, info


def load_minari(dataset_id: str, antmaze_goal: str, with_data: bool) -> tuple[Task, gym.Env]:
    import gymnasium_robotics
    import minari
    from minari.storage import get_dataset_path

    gym.register_envs(gymnasium_robotics)
    if not (get_dataset_path(dataset_id) / "data").exists():
        try:  # as minari.load_dataset(download=True); with no network, after ~25 s of huggingface_hub's retries
            minari.download_dataset(dataset_id)
        except Exception as e:  # no network, HF_HUB_OFFLINE=1, an id the remote does not hold
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            where = f"not in {get_dataset_path()} (MINARI_DATASETS_PATH) and could not be downloaded ({why})"
            raise DatasetError(f"Minari dataset '{dataset_id}' is {where}; {GET_IT}") from None
    ds = minari.load_dataset(dataset_id)
    family = dataset_family(dataset_id)
    relabel = family == "antmaze" and antmaze_goal == "relabel"
    # goal dicts -> vectors (algos/README.md). AntMaze: torso xy (achieved_goal) + observation (27), D4RL's layout,
    # then the episode's goal (desired_goal) unless rewards are relabelled to one fixed goal. PointMaze: observation
    # (4) + goal. Kitchen's goal dict is the same in every episode, so it is dropped.
    keys = {"antmaze": ("achieved_goal", "observation") + (() if relabel else ("desired_goal",)),
            "pointmaze": ("observation", "desired_goal")}.get(family, ("observation",))  # fmt: skip

    def flatten_obs(obs: object) -> np.ndarray:
        if isinstance(obs, dict):
            return np.concatenate([np.asarray(obs[k], dtype=np.float32) for k in keys], axis=-1)
        return np.asarray(obs, dtype=np.float32)

    eval_kwargs = {"maze_map": antmaze_eval_map(ds, dataset_id)} if family == "antmaze" else {}
    try:  # the one env of this load: load_dataset's checks, and AntMaze's goal
        env = ds.recover_environment(eval_env=True, **eval_kwargs)
    except (ImportError, gym.error.Error) as e:  # a custom env's module that is not on the import path, say
        raise DatasetError(
            f"'{dataset_id}': its environment cannot be made ({type(e).__name__}: {e}). A dataset of a custom env "
            "needs the env's module on the import path (this project's bandit: PYTHONPATH=scripts)"
        ) from None
    goal = np.array(env.unwrapped.maze.unique_goal_locations[0]) if relabel else None  # the eval goal cell, no noise
    rows = []
    for ep in ds.iterate_episodes() if with_data else ():  # episodes -> transitions: observations have T+1 rows
        o = flatten_obs(ep.observations)
        rewards, terminals = ep.rewards.astype(np.float32), ep.terminations.astype(bool)
        if relabel:  # D4RL's relabel_antmaze_rewards.py: reward and terminal where the next xy is at the goal
            terminals = np.linalg.norm(ep.observations["achieved_goal"][1:] - goal, axis=-1) <= D4RL_GOAL_RADIUS
            rewards = terminals.astype(np.float32)
        dones = terminals | ep.truncations.astype(bool)
        dones[-1] = True  # an episode always ends at its last row, flagged or not
        rows.append(dict(observations=o[:-1], actions=ep.actions.astype(np.float32).reshape(len(rewards), -1),
                         rewards=rewards, masks=1.0 - terminals.astype(np.float32),  # timeouts bootstrap
                         dones=dones.astype(np.float32), next_observations=o[1:]))  # fmt: skip
    if relabel:  # the return is 0 or 1 (the episode ends at the goal): D4RL's AntMaze score, ref scores 0 and 1
        normalized_score = lambda r: 100.0 * np.asarray(r)  # noqa: E731
    elif ds.storage.metadata.get("ref_max_score") is not None:
        normalized_score = lambda r: 100.0 * np.asarray(minari.get_normalized_score(ds, r))  # noqa: E731
    elif family == "kitchen":  # no ref scores; the return counts completed subtasks (of 4): D4RL-style score
        normalized_score = lambda r: 100.0 * np.clip(r, 0, 4) / 4  # noqa: E731
    else:
        normalized_score = None

    def make_env(**kwargs) -> gym.Env:  # kwargs: gym.make's, e.g. render_mode
        env = ds.recover_environment(eval_env=True, **eval_kwargs, **kwargs)
        return FixedGoalAntMaze(env, goal) if relabel else env

    data = {k: np.concatenate([row[k] for row in rows]) for k in rows[0]} if with_data else None
    return Task(family, data, None, make_env, flatten_obs, normalized_score), env


def load_ogbench(name: str, dataset_dir: str, with_data: bool) -> tuple[Task, gym.Env]:
    import ogbench

    base = re.sub(r"-singletask(-task\d)?", "", name)  # the dataset's files: ...-play-v0.npz and ...-play-v0-val.npz
    try:  # downloads missing files into dataset_dir; singletask rewards, masks: relabelled for the task by ogbench
        out = ogbench.make_env_and_datasets(name, dataset_dir=dataset_dir, env_only=not with_data)
    except gym.error.Error as e:
        raise DatasetError(
            f"'{name}' is not an OGBench singletask task ({e}). Names are "
            "{env}-{dataset}-singletask[-task1..5]-v0, e.g. cube-double-play-singletask-task2-v0."
        ) from None
    except OSError as e:  # urllib's URLError: no network, or no such file on OGBench's server
        where = f"not in {dataset_dir} (--dataset-dir) and could not be downloaded ({type(e).__name__}: {e})"
        raise DatasetError(f"OGBench dataset '{base}' (for '{name}') is {where}; {GET_IT}") from None
    make_env = lambda **kwargs: ogbench.make_env_and_datasets(name, env_only=True, **kwargs)  # noqa: E731
    flatten_obs = lambda obs: np.asarray(obs, dtype=np.float32)  # noqa: E731
    env, splits = (out[0], out[1:]) if with_data else (out, (None, None))
    keys = ("observations", "actions", "rewards", "masks", "next_observations")  # dones: 1 where a trajectory ends
    train, val = (s and {**{k: s[k].astype(np.float32) for k in keys}, "dones": s["terminals"].astype(np.float32)}
                  for s in splits)  # fmt: skip
    return Task("ogbench", train, val, make_env, flatten_obs, None), env


# --- end of the shared data layer ---


# --- shared replay buffer: identical in meanflowql.py and ofql.py (tests/test_cli.py checks it) ---
class ReplayBuffer:
    """All transitions as tensors on the training device: the offline data, then the online transitions appended."""

    def __init__(self, data: dict[str, np.ndarray], capacity: int, device: torch.device):
        self.size = self.offline_size = len(data["rewards"])
        self.data = {}
        for k in ("observations", "actions", "rewards", "masks", "next_observations"):  # episode ends are not needed
            v = torch.as_tensor(data[k], dtype=torch.float32).reshape(self.size, -1)
            self.data[k] = torch.zeros((capacity, v.shape[1]), device=device)
            self.data[k][: self.size] = v.to(device)

    def add(self, **transition: np.ndarray) -> None:
        for k, v in transition.items():
            self.data[k][self.size] = torch.as_tensor(v, dtype=torch.float32)
        self.size += 1

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), device=self.data["rewards"].device)
        return {k: v[idx] for k, v in self.data.items()}

    def online_part(self) -> dict[str, torch.Tensor]:
        return {k: v[self.offline_size : self.size].cpu() for k, v in self.data.items()}

    def restore_online_part(self, part: dict[str, torch.Tensor]) -> None:
        """Inserted after the offline data, ahead of all the free rows: a resume that takes fewer online steps than the
        checkpoint already holds (a changed --offline-steps or --online-steps) still has room for the rest."""
        cut = self.offline_size
        for k, v in part.items():
            self.data[k] = torch.cat((self.data[k][:cut], v.to(self.data[k].device), self.data[k][cut:]))
        self.size = self.offline_size + len(part["rewards"])


# --- end of the shared replay buffer ---


# --- shared run plumbing: identical in the four scripts (tests/test_cli.py checks it) ---
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script")  # torch 2.14 deprecation, via torch.func.jvp


class UsageError(Exception):
    """A bad argument or checkpoint; printed without a traceback, before any compute."""


NONNEGATIVE = set("seed online_steps online_start_steps eval_episodes eval_workers learning_starts ema_start".split())
# what a resumed run cannot change (flags, or parts of their names): the task, the network shapes, --compile (its
# optimisers keep their learning rates in tensors) and --seed (the random streams come from the checkpoint)
FIXED_ON_RESUME = "env_id antmaze_goal normalize_obs horizon hidden layers depth mlp_ratio num_critics time_emb"
FIXED_ON_RESUME += " shared_time_mlp compile seed"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args: object) -> None:
    """All arguments at once, right after parsing: counts >= 1 (or >= 0), finite floats, rates and ratios in range."""
    errors = []
    for name, value in asdict(args).items():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, int) and not isinstance(v, bool) and v < (low := int(name not in NONNEGATIVE)):
                errors.append(f"{flag(name)} must be >= {low} (got {v})")
            elif not isinstance(v, float):
                continue
            elif not math.isfinite(v):
                errors.append(f"{flag(name)} must be a finite number (got {v})")
            elif (name.endswith("lr") or name == "grad_clip") and v <= 0:
                errors.append(f"{flag(name)} must be > 0 (got {v})")
            elif name in ("discount", "tau") and not 0 < v <= 1:
                errors.append(f"{flag(name)} must be in (0, 1] (got {v})")
            elif (name.endswith("_ratio") or name == "ema_rho") and not 0 <= v <= 1:
                errors.append(f"{flag(name)} must be in [0, 1] (got {v})")
    if args.eval_only and not args.resume:
        errors.append("--eval-only evaluates a checkpoint: give it with --resume PATH/model.pt")
    if args.eval_only and args.eval_episodes == 0:
        errors.append("--eval-only needs --eval-episodes >= 1")
    if args.capture_video and args.eval_workers > 0:
        errors.append("--capture-video renders in this process: use it with --eval-workers 0")
    if args.save_every_eval and not args.save_model:
        errors.append("--save-every-eval keeps the checkpoints of --save-model: give both")
    if args.exp_name in ("", ".", "..") or os.path.basename(args.exp_name) != args.exp_name:
        errors.append(f"--exp-name must be one path component, without '/' (got {args.exp_name!r})")
    if errors:
        raise UsageError("; ".join(errors))


def read_checkpoint(path: str) -> dict:
    """The checkpoint of --resume, loaded on the CPU (the RNG states must stay CPU tensors)."""
    if not os.path.isfile(path):
        raise UsageError(f"--resume {path}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if (algo := ckpt.get("algo") if isinstance(ckpt, dict) else None) != ALGO:
        what = f"a checkpoint of algos/{algo}.py, not" if algo else "not a checkpoint"
        raise UsageError(f"--resume {path} is {what} of algos/{ALGO}.py")
    return ckpt


def saved_args(args_type: type, ckpt: dict) -> object:
    return args_type(**{f.name: ckpt["args"][f.name] for f in fields(args_type) if f.name in ckpt["args"]})


def parse_cli(args_type: type) -> tuple[object, Optional[dict]]:
    """(Args, checkpoint): with --resume, parsed again over the checkpoint's arguments (the flags given override)."""
    args = tyro.cli(args_type)
    if not args.resume:
        return args, None
    ckpt = read_checkpoint(args.resume)
    return tyro.cli(args_type, default=replace(saved_args(args_type, ckpt), resume=args.resume)), ckpt


def resume(args: object, ckpt: Optional[dict]) -> tuple[object, Optional[dict]]:
    """--resume: (args, checkpoint). From Python (no ckpt), the arguments that differ from Args' defaults override the
    checkpoint's. FIXED_ON_RESUME cannot change (--eval-only may take another --seed)."""
    if not args.resume:
        return args, None
    if ckpt is None:
        ckpt, default = read_checkpoint(args.resume), asdict(type(args)())
        args = replace(saved_args(type(args), ckpt), **{k: v for k, v in asdict(args).items() if v != default[k]})
    for name, old in ckpt["args"].items():
        if name in ("resume", "eval_only") or (new := getattr(args, name, old)) == old:
            continue
        if any(part in name for part in FIXED_ON_RESUME.split()) and not (name == "seed" and args.eval_only):
            raise UsageError(f"{flag(name)} {new} differs from the checkpoint's {old}; a resumed run keeps it")
        print(f"notice: resuming with {flag(name)} {new} (the checkpoint had {old})")
    return args, ckpt


def make_run_dir(args: object) -> str:
    """{output_dir}/{env}__{exp_name}__{seed}__{YYYYmmdd-HHMMSS}, with -2, -3, ... for runs started in one second."""
    name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    base = path = os.path.join(args.output_dir, name)
    for i in range(2, 10_000):
        if not os.path.exists(path):
            break
        path = f"{base}-{i}"
    os.makedirs(path)
    return path


def resume_run_dir(args: object, step: int) -> str:
    """The checkpoint's folder, its log rows past `step` dropped; an older checkpoint than the run's is refused."""
    run_dir = os.path.dirname(os.path.abspath(args.resume))
    for file in (os.path.join(run_dir, f"{kind}.jsonl") for kind in ("train", "eval")):
        rows = [json.loads(line) for line in open(file)] if os.path.exists(file) else []
        if rows and rows[-1]["step"] > step and os.path.basename(args.resume) != "model.pt":
            raise UsageError(
                f"--resume {args.resume} is at step {step} and its run went on to step {rows[-1]['step']}: to continue "
                "from it, copy it to a new folder and resume the copy (or resume the run's model.pt)"
            )
        if rows:
            with open(file, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows if row["step"] <= step)
    return run_dir


def seed_everything(args: object) -> torch.device:
    """Seed python, numpy and torch; the training device: CUDA when present (and --cuda), with TF32 under --tf32."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    return device


def rng_state(device: torch.device) -> dict:
    """The random streams: on CUDA the training device's only (a resume may see fewer GPUs); no CUDA call on CPU."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str, step: int, agent: object, args: object, device: torch.device, **state: object) -> None:
    """One schema for the four scripts, plus each one's state; via path.tmp: never half a checkpoint."""
    state = {"algo": ALGO, "step": step, "agent": agent.state_dict(), "args": asdict(args), **state}
    torch.save({**state, "rng": rng_state(device)}, path + ".tmp")
    os.replace(path + ".tmp", path)


class Progress:
    """tqdm's bar (none when output is no terminal) and the updates/s of each log interval, without evaluations,
    checkpoints and the first update (compilation); the first Ctrl-C stops after the current step, the second aborts."""

    def __init__(self, total: int, initial: int):
        self.bar = tqdm(total=total, initial=initial, disable=None, dynamic_ncols=True, leave=False)
        self.stop, self.previous_handler = False, signal.signal(signal.SIGINT, self.interrupt)
        self.reset(updates=-1)  # -1: the clock restarts after the first update

    def interrupt(self, signum: int, frame: object) -> None:
        if self.stop:
            signal.signal(signal.SIGINT, self.previous_handler)
            raise KeyboardInterrupt
        self.stop = True
        tqdm.write("Ctrl-C: stopping after this step (press it again to abort)")

    def reset(self, updates: int = 0) -> None:
        self.start, self.updates = time.time(), updates

    def step(self, updated: bool = True) -> None:
        self.bar.update()
        self.updates += updated
        if updated and self.updates == 0:
            self.start = time.time()

    def log(self) -> float:
        sps = max(self.updates, 0) / max(time.time() - self.start, 1e-9)
        self.reset()
        return sps

    def close(self, run_dir: str, checkpoint: Optional[str]) -> None:
        self.bar.close()
        signal.signal(signal.SIGINT, self.previous_handler)
        if self.stop:
            saved = f"its checkpoint is {checkpoint}" if checkpoint else "no checkpoint (run with --save-model)"
            sys.exit(f"stopped by Ctrl-C: the run is in {run_dir}, {saved}")


def summary(row: dict, keys: Iterable[str]) -> str:
    return " | ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)


class Logger:
    """Rows to run_dir/{kind}.jsonl (train, eval), to W&B as {kind}/{key} with --track, and printed."""

    def __init__(self, run_dir: str, args: object):
        self.run_dir, self.wandb = run_dir, None
        if args.track:
            import wandb

            name = os.path.basename(run_dir)
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=asdict(args), name=name,
                       id=name[-128:], resume="allow", save_code=True)  # fmt: skip
            self.wandb = wandb

    def log(self, kind: str, row: dict, line: str = "", video: str = "") -> None:
        with open(os.path.join(self.run_dir, f"{kind}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb:
            media = {f"{kind}/video": self.wandb.Video(video)} if video else {}
            numbers = {f"{kind}/{k}": v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
            self.wandb.log({**numbers, **media}, step=row["step"])
        if line:
            tqdm.write(line)

    def close(self) -> None:
        if self.wandb:
            self.wandb.finish()


def make_eval_envs(
    make_env: Callable[..., gym.Env], num_episodes: int, workers: int, render: bool = False
) -> gym.vector.VectorEnv:
    """One env copy per episode, stepped in this process (workers 0), or `workers` copies in as many processes
    (AsyncVectorEnv, forked), which run the episodes in waves. render: the first copy renders rgb_array frames."""
    if workers == 0:
        first = (lambda: make_env(render_mode="rgb_array")) if render else make_env
        return gym.vector.SyncVectorEnv([first] + [make_env] * max(0, num_episodes - 1))
    return gym.vector.AsyncVectorEnv([make_env] * max(1, min(workers, num_episodes)), context="fork")


def take_rows(obs: object, rows: np.ndarray) -> object:
    return {k: take_rows(v, rows) for k, v in obs.items()} if isinstance(obs, dict) else obs[rows]


def evaluate(act: Callable, envs: gym.vector.VectorEnv, num_episodes: int, seed: int, device: torch.device, video=""):
    """Full episodes, envs.num_envs at a time, episode i seeded seed + 10_000 + i. act(every episode's observation)
    -> env actions [num_episodes, action_dim] or chunks [.., h, action_dim], under the torch RNG seeded by (seed, call):
    the same noise whatever --eval-workers, training's stream untouched. Returns raw returns, lengths and, where info
    has 'success', whether it was reached (D4RL's semantics); the first episode as mp4 to `video`."""
    n, shape = envs.num_envs, envs.single_action_space.shape
    returns, lengths, successes, frames = [], [], [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for start in range(0, num_episodes, n):
            obs, _ = envs.reset(seed=[seed + 10_000 + start + i for i in range(n)])
            rows = np.clip(np.arange(num_episodes) - start, 0, n - 1)  # each episode's env in this wave
            back = np.clip(np.arange(n) + start, 0, num_episodes - 1)  # each env's episode
            active = np.arange(n) < num_episodes - start  # the last wave may leave envs unused
            count, recording, call = int(active.sum()), bool(video) and start == 0, 0
            ret, length, success = np.zeros(n), np.zeros(n, dtype=np.int64), np.full(n, np.nan)
            frames += [envs.envs[0].render()] if recording else []
            while active.any():
                torch.manual_seed(seed * 1_000_000 + call)
                call += 1
                actions = np.asarray(act(take_rows(obs, rows)))[back]
                for action in actions.reshape(n, -1, *shape).swapaxes(0, 1):
                    obs, reward, terminated, truncated, info = envs.step(action)
                    frames += [envs.envs[0].render()] if recording and active[0] else []
                    ret += np.where(active, reward, 0.0)
                    length += active
                    if "success" in info:
                        got = active & info["_success"]
                        success[got] = np.fmax(success[got], np.asarray(info["success"], dtype=np.float64)[got])
                    active &= ~(terminated | truncated)
                    if not active.any():
                        break
            returns, lengths = returns + ret[:count].tolist(), lengths + length[:count].tolist()
            successes += [s for s in success[:count] if not np.isnan(s)]
    if frames:
        from moviepy import ImageSequenceClip

        os.makedirs(os.path.dirname(video), exist_ok=True)
        ImageSequenceClip(frames, fps=envs.envs[0].metadata.get("render_fps", 30)).write_videofile(video, logger=None)
    out = {"episodic_return": np.array(returns), "episodic_length": np.array(lengths)}
    return {**out, "success_rate": np.array(successes)} if successes else out


def video_file(args: object, run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "videos", f"eval_{step}.mp4") if args.capture_video else ""


def check_video(make_env: Callable[..., gym.Env]) -> None:
    """--capture-video: fail before training where moviepy is missing or the env cannot render offscreen."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise UsageError("--capture-video writes mp4 with moviepy: pip install -r requirements-video.txt") from None
    try:
        env = make_env(render_mode="rgb_array")
        env.reset(seed=0)
        env.render()
        env.close()
    except Exception as e:
        raise UsageError(
            f"--capture-video: the env cannot render here ({type(e).__name__}: {str(e)[:200]}). Without a display, "
            "MuJoCo renders with MUJOCO_GL=egl (a GPU) or MUJOCO_GL=osmesa (the CPU; apt install libosmesa6)"
        ) from None


def write_eval_summary(checkpoint: str, row: dict, args: object) -> None:
    """--eval-only: the evaluation's summary next to the checkpoint, as {checkpoint}_eval.json."""
    with open(path := os.path.splitext(checkpoint)[0] + "_eval.json", "w") as f:
        json.dump({"checkpoint": os.path.abspath(checkpoint), **row, "eval_episodes": args.eval_episodes,
                   "seed": args.seed}, f, indent=2)  # fmt: skip
    print(f"wrote {path}")


def adam(params: Iterable[nn.Parameter], lr: float, args: object, device: torch.device) -> torch.optim.Adam:
    """Adam; under --compile its learning rate is a float64 tensor on the training device, so that a schedule does not
    recompile the step (no schedule here is at 0 while it trains: the compiled step divides by it). A post-hook keeps
    that tensor in place when load_state_dict brings the checkpoint's lr (a host number, which CUDA graphs freeze)."""
    if not args.compile:
        return torch.optim.Adam(params, lr=lr)
    opt = torch.optim.Adam(params, lr=torch.tensor(lr, dtype=torch.float64, device=device))
    lrs = [group["lr"] for group in opt.param_groups]

    def keep_lr_tensors(opt: torch.optim.Optimizer) -> None:
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr.fill_(float(group["lr"]))

    opt.register_load_state_dict_post_hook(keep_lr_tensors)
    return opt


def compile_update(train_step: Callable[..., torch.Tensor], args: object, device: torch.device) -> Callable:
    """--compile: the whole gradient step through torch.compile (on CUDA, mode reduce-overhead: CUDA graphs); its
    metrics are copied, as a CUDA graph overwrites its outputs at the next replay."""
    if not args.compile:
        return train_step
    compiled = torch.compile(train_step, mode="reduce-overhead" if device.type == "cuda" else None)

    def step(*inputs: object) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*inputs).clone()

    return step


# --- end of the shared run plumbing ---


if __name__ == "__main__":
    try:
        main(*parse_cli(Args))
    except (DatasetError, UsageError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("aborted by Ctrl-C")
