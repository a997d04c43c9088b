# MeanFlowQL: "One-Step Generative Policies with Q-Learning: A Reformulation of MeanFlow" (Wang et al., AAAI 2026)
# paper: https://arxiv.org/abs/2511.13035
# reference code (JAX): https://github.com/HiccupRL/MeanFlowQL (agents/meanflowql.py, utils/dit_jax.py), a fork of FQL
#
# Time convention: t=0 is data, t=1 is noise, start time r fixed at 0. The actor predicts the *residual*
# g(s, z, t) = z - u(z, 0, t) and acts in one step with a = clip(g(s, e, 1)), e ~ N(0, I).
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

ALGO = "meanflowql"


@dataclass
class Args:
    env_id: str = "antmaze-large"  # a short alias (see ALIASES), a Minari dataset id or an OGBench singletask name
    offline_steps: int = 1_000_000  # gradient steps on the offline dataset
    online_steps: int = 0  # env steps of online fine-tuning after the offline phase, one update each (UTD 1)
    seed: int = 1  # RNG seed for python, numpy and torch
    eval_interval: int = 100_000  # evaluate every this many gradient steps (and at the end)
    eval_episodes: int = 50  # episodes per evaluation; 0 skips evaluation (checkpoints are still written)
    eval_workers: int = 0  # 0: all episodes at once in this process; N: in N processes, in waves of N episodes
    capture_video: bool = False  # first episode of each evaluation to {run_dir}/videos/ (moviepy; MUJOCO_GL=egl)
    save_model: bool = False  # write {run_dir}/model.pt at every evaluation and when stopped by Ctrl-C
    save_every_eval: bool = False  # with --save-model, also keep model_{step}.pt at every evaluation
    resume: Optional[str] = None  # a model.pt to resume from; the run continues in its directory, with its arguments
    eval_only: bool = False  # with --resume: only evaluate the checkpoint, into {checkpoint}_eval.json
    output_dir: str = "runs"  # runs go to {output_dir}/{env_id}__{exp_name}__{seed}__{YYYYmmdd-HHMMSS}/
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name; part of the run name
    track: bool = False  # log to Weights & Biases (works with WANDB_MODE=offline)
    wandb_project_name: str = "meanflow-rl"  # W&B project
    wandb_entity: Optional[str] = None  # W&B entity (team); None: the default entity
    log_interval: int = 5000  # write train.jsonl and print progress every this many gradient steps
    dataset_dir: str = "~/.ogbench/data"  # where OGBench .npz datasets are (Minari uses $MINARI_DATASETS_PATH)
    antmaze_goal: Literal["observe", "relabel"] = "observe"  # AntMaze: each episode's goal, or D4RL's one (README)
    reward_bias: Optional[float] = None  # added to every reward offline and online; None: -1 for AntMaze, else 0
    cuda: bool = True  # use CUDA when available
    compile: bool = False  # torch.compile the gradient step (CUDA graphs on CUDA) and the action selection
    tf32: bool = True  # CUDA: TF32 matmuls (about 10 significant bits, much faster); --no-tf32 for full FP32
    torch_deterministic: bool = True  # set cudnn.deterministic

    # --- algorithm (official code's defaults; None: the task's value in TASK_DEFAULTS, else the value named) ---
    alpha: Optional[float] = None  # initial weight alpha_0 of the MeanFlow (BC) loss; None: the task's or 10
    num_candidates: Optional[int] = None  # C one-step candidates, best by target Q, to act and back up; None: 5
    time_steps: Optional[int] = None  # t on the grid {1/N..1} if N <= 1000, else U(0, 1); None: the task's or 10000
    discount: Optional[float] = None  # discount gamma; None: 0.99 (D4RL/Minari) or 0.995 (OGBench)
    batch_size: int = 256  # transitions per gradient step
    actor_lr: float = 1e-4  # peak actor learning rate
    actor_warmup_ratio: float = 0.05  # linear actor warm-up from 0, as a fraction of the offline steps
    actor_lr_min_ratio: float = 0.1  # cosine decay to this fraction of the peak at the end of offline, then constant
    critic_lr: float = 3e-4  # constant critic learning rate (the code's; the paper's table reportedly says 1e-4)
    grad_clip: float = 1.0  # global-norm gradient clipping, separately for actor and critic
    tau: float = 0.005  # Polyak rate of the target critic
    q_agg: Literal["mean", "min", "max"] = "mean"  # aggregation over the critic members in the TD target
    bound_loss_weight: float = 1.0  # weight of the loss that pulls raw actor outputs back into [-1, 1]
    actor_hidden_dim: int = 256  # DiT width H
    actor_depth: int = 3  # number of DiT blocks
    actor_mlp_ratio: int = 4  # DiT MLP width as a multiple of H
    critic_hidden_dim: int = 512  # critic MLP width
    critic_layers: int = 4  # critic hidden layers (Dense, GELU, LayerNorm)
    num_critics: int = 2  # critic ensemble size

    # --- rarely changed: reconstructed constants and ablation switches ---
    noise_std: float = 1.0  # sigma of the initial noise e ~ N(0, sigma^2 I)
    target_clip: float = 5.0  # clip of the MeanFlow regression target g_tgt
    adaptive_gamma: float = 0.8  # adaptive loss weight w = (delta^2 + c)^-(1 - gamma)
    adaptive_c: float = 1e-4  # c in the adaptive loss weight
    dynamic_alpha: bool = True  # dynamic alpha (paper Eq. 21); off: cosine decay alpha_0 -> 0.1 alpha_0 (offline)
    alpha_interval: int = 2000  # dynamic alpha: steps between adjustments
    alpha_window: int = 20  # dynamic alpha: number of past MeanFlow losses in the comparison window
    alpha_warmup_ratio: float = 0.1  # dynamic alpha: alpha is frozen for this fraction of the offline steps
    alpha_threshold: float = 5.0  # dynamic alpha: up if loss > threshold * window mean, down if < mean / threshold
    alpha_up: float = 1.2  # dynamic alpha: multiplicative increase (capped at 10 alpha_0)
    alpha_down: float = 0.8  # dynamic alpha: multiplicative decrease (floored at 0.1 alpha_0)


# ======================================================================================================================
# ALGO LOGIC: the paper's per-task values
# ======================================================================================================================
TASK_DEFAULTS: dict[str, dict] = {
    "D4RL/antmaze/umaze-v1": dict(alpha=100.0, time_steps=10000),
    "D4RL/antmaze/umaze-diverse-v1": dict(alpha=130.0, time_steps=100),
    "D4RL/antmaze/medium-play-v1": dict(alpha=10.0, time_steps=50),
    "D4RL/antmaze/medium-diverse-v1": dict(alpha=50.0, time_steps=50),
    "D4RL/antmaze/large-play-v1": dict(alpha=10.0, time_steps=100),
    "D4RL/pen/cloned-v2": dict(alpha=10000.0, time_steps=100),
    "D4RL/door/cloned-v2": dict(alpha=9000.0, time_steps=50),
    "D4RL/hammer/cloned-v2": dict(alpha=11000.0, time_steps=100),
    "D4RL/relocate/cloned-v2": dict(alpha=10000.0, time_steps=50),
    "humanoidmaze-medium-navigate-singletask-task1-v0": dict(alpha=150.0, time_steps=50),
    "humanoidmaze-large-navigate-singletask-task1-v0": dict(alpha=10000.0, time_steps=50),
    "cube-double-play-singletask-task2-v0": dict(alpha=120.0, time_steps=50),
}
"""per-task values from the paper's Table 7; keys are resolved dataset ids"""
_OGBENCH_DEFAULT_TASK = {"humanoidmaze-medium-navigate": 1, "humanoidmaze-large-navigate": 1, "cube-double-play": 2}


def task_defaults(dataset_id: str) -> dict:
    base = dataset_id.split("-singletask")[0]
    if is_ogbench_name(dataset_id) and "-task" not in dataset_id and base in _OGBENCH_DEFAULT_TASK:
        dataset_id = dataset_id.replace("-singletask", f"-singletask-task{_OGBENCH_DEFAULT_TASK[base]}")  # default task
    return TASK_DEFAULTS.get(dataset_id, {})


def resolve_args(args: Args, dataset_id: str) -> Args:
    """Fill the None hyperparameters from TASK_DEFAULTS, else the official code's defaults."""
    defaults = {
        "discount": 0.995 if is_ogbench_name(dataset_id) else 0.99,
        "alpha": 10.0,
        "num_candidates": 5,
        "time_steps": 10000,
        **task_defaults(dataset_id),
    }
    return Args(**{**asdict(args), **{k: v for k, v in defaults.items() if getattr(args, k) is None}})


# ======================================================================================================================
# ALGO LOGIC: networks. Actor g(s, z, t): an adaLN-Zero DiT on one token (utils/dit_jax.py::MFDiT_SIM); critic ensemble
# ======================================================================================================================
def small_init_(linear: nn.Linear, scale: float = 0.01) -> nn.Linear:
    """variance_scaling(scale, fan_in, truncated normal) as in the reference; zero bias."""
    std = math.sqrt(scale / linear.in_features) / 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(linear.bias)
    return linear


def zero_init_(linear: nn.Linear) -> nn.Linear:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class RMSNorm(nn.Module):
    """x / rms(x) * gain * sqrt(H): the reference's RMSNorm, whose output RMS is sqrt(H) (16 at H=256)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (self.gain * self.scale)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """adaLN-Zero block. With one token the softmax is exactly 1 and self-attention is proj(v(x)): only the value and
    output projections are computed (the same function as the reference, without its unused q/k weights and norms)."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        self.modulation = zero_init_(nn.Linear(dim, 6 * dim))  # SiLU(c) -> shift/scale/gate for attention and MLP
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn_v = small_init_(nn.Linear(dim, dim))
        self.attn_proj = small_init_(nn.Linear(dim, dim))
        self.mlp = nn.Sequential(
            small_init_(nn.Linear(dim, mlp_ratio * dim)),
            nn.GELU(approximate="tanh"),
            small_init_(nn.Linear(mlp_ratio * dim, dim)),
        )

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        x = x + gate1 * self.attn_proj(self.attn_v(modulate(self.norm1(x), shift1, scale1)))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class MeanFlowActor(nn.Module):
    """Residual MeanFlow policy g(s, z, t) = z - u(z, 0, t); outputs exactly 0 at initialisation. t: [B, 1], or [1, 1]
    (computed once, broadcast); acting always uses t = 1, whose `condition` an evaluation computes once."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256, depth: int = 3, mlp_ratio: int = 4):
        super().__init__()
        self.embed = small_init_(nn.Linear(obs_dim + action_dim, hidden_dim))
        self.pos_embed = nn.Parameter(torch.randn(hidden_dim) * 0.005)  # the single token's position embedding
        self.time_mlp = nn.Sequential(
            small_init_(nn.Linear(256, hidden_dim)), nn.SiLU(), small_init_(nn.Linear(hidden_dim, hidden_dim))
        )
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(128) / 128), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_dim, mlp_ratio) for _ in range(depth))
        self.final_modulation = zero_init_(nn.Linear(hidden_dim, 2 * hidden_dim))
        self.final_norm = RMSNorm(hidden_dim)
        self.head = zero_init_(nn.Linear(hidden_dim, action_dim))

    def condition(self, t: torch.Tensor) -> list[torch.Tensor]:
        """The adaLN modulations, which depend on t alone: one [.., 6H] per block, then [.., 2H] for the final layer."""
        args = t * self.freqs  # sinusoidal features of the raw t in [0, 1] (no x1000), laid out [cos, sin]
        c = F.silu(self.time_mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1)))
        return [block.modulation(c) for block in self.blocks] + [self.final_modulation(c)]

    def forward(self, obs: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decode(obs, z, self.condition(t))

    def decode(self, obs: torch.Tensor, z: torch.Tensor, modulations: list[torch.Tensor]) -> torch.Tensor:
        x = self.embed(torch.cat([obs, z], dim=-1)) + self.pos_embed
        for block, modulation in zip(self.blocks, modulations):
            x = x + 0.1 * (block(x, modulation) - x)  # the reference damps every block's residual update by 0.1
        shift, scale = modulations[-1].chunk(2, dim=-1)
        return self.head(modulate(self.final_norm(x), shift, scale))


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: [E, B, in] -> [E, B, out]."""

    def __init__(self, ensemble: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, out_features))
        bound = math.sqrt(6 / (in_features + out_features))  # Xavier-uniform, variance_scaling(1, fan_avg, uniform)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """E critics Q_k(s, a), each Dense -> GELU -> LayerNorm layers and a scalar head (utils/networks.py::Value)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 512, num_layers: int = 4, ensemble: int = 2):
        super().__init__()
        dims = [obs_dim + action_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(EnsembleLinear(ensemble, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.norm_weight = nn.Parameter(torch.ones(num_layers, ensemble, 1, hidden_dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_layers, ensemble, 1, hidden_dim))
        self.head = EnsembleLinear(ensemble, hidden_dim, 1)
        self.ensemble = ensemble

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1).expand(self.ensemble, -1, -1)
        for i, layer in enumerate(self.layers):
            x = F.gelu(layer(x))
            x = F.layer_norm(x, x.shape[-1:]) * self.norm_weight[i] + self.norm_bias[i]
        return self.head(x).squeeze(-1)  # [E, B]


# ======================================================================================================================
# ALGO LOGIC: MeanFlow loss with one JVP, r = 0 (agents/meanflowql.py::meanflow_loss)
# ======================================================================================================================
def g_and_total_derivative(
    actor: Callable, obs: torch.Tensor, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """g(s, z, t) and its total derivative along the flow, dg/dt = (dg/dz) v + dg/dt, from one forward-mode JVP
    with tangents (v, 1) on (z, t); the observation gets no tangent."""
    return torch.func.jvp(lambda z_, t_: actor(obs, z_, t_), (z, t), (v, torch.ones_like(t)))


def sample_time(batch_size: int, time_steps: int, device: torch.device) -> torch.Tensor:
    """t uniform on the grid {1/N, ..., 1} when N <= 1000 (t = 0 never occurs), else t ~ U(0, 1)."""
    if time_steps <= 1000:
        return torch.randint(1, time_steps + 1, (batch_size, 1), device=device) / time_steps
    return torch.rand(batch_size, 1, device=device)


def meanflow_loss(
    actor: Callable,
    obs: torch.Tensor,
    actions: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    target_clip: float = 5.0,
    adaptive_gamma: float = 0.8,
    adaptive_c: float = 1e-4,
) -> torch.Tensor:
    """L_MFI with r = 0. MeanFlow's u = v - t du/dt and u = z - g give the target g_tgt = z + (t - 1) v - t dg/dt."""
    z = (1 - t) * actions + t * noise  # point on the straight path from the data (t=0) to the noise (t=1)
    v = noise - actions  # conditional velocity dz/dt
    g, dg = g_and_total_derivative(actor, obs, z, t, v)
    g_tgt = (z + (t - 1) * v - t * dg).detach().clamp(-target_clip, target_clip)
    delta_sq = (g - g_tgt).pow(2).mean(dim=-1)  # mean over action dims (not a sum, unlike MeanFlow)
    weight = (delta_sq + adaptive_c).pow(-(1 - adaptive_gamma)).clamp(1e-6, 1e6).detach()  # adaptive weight
    return (weight * delta_sq).mean()


# ======================================================================================================================
# ALGO LOGIC: best-of-C one-step actions, for acting and the TD backup (agents/meanflowql.py::sample_actions_best)
# ======================================================================================================================
@torch.no_grad()
def best_of_c(
    actor: MeanFlowActor,
    critic: nn.Module,
    obs: torch.Tensor,
    num_candidates: int,
    noise_std: float = 1.0,
    modulations: Optional[list[torch.Tensor]] = None,
) -> torch.Tensor:
    """C one-step candidates a_i = clip(g(s, e_i, 1)); return the one with the highest ensemble-mean Q.
    `modulations` = actor.condition(t=1), when the caller has it already (it changes only with the parameters)."""
    batch, action_dim = obs.shape[0], actor.head.out_features
    obs_c = obs.repeat_interleave(num_candidates, dim=0)
    noise = torch.randn(batch * num_candidates, action_dim, device=obs.device) * noise_std
    if modulations is None:
        modulations = actor.condition(torch.ones(1, 1, device=obs.device))
    actions = actor.decode(obs_c, noise, modulations).clamp(-1, 1)
    q = critic(obs_c, actions).mean(0).view(batch, num_candidates)
    return actions.view(batch, num_candidates, action_dim)[torch.arange(batch, device=obs.device), q.argmax(1)]


# ======================================================================================================================
# ALGO LOGIC: one update, L = L_c + L_q + w_b L_b + alpha L_MFI (agents/meanflowql.py::total_loss)
# ======================================================================================================================
METRICS = ("critic_loss", "meanflow_loss", "q_loss", "bound_loss", "q_mean", "q_min", "q_max")


def compute_losses(
    actor: nn.Module,
    critic: CriticEnsemble,
    critic_target: CriticEnsemble,
    batch: dict[str, torch.Tensor],
    alpha: torch.Tensor,
    args: Args,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The total loss, all terms at the parameters from before the step, and the METRICS as one tensor."""
    obs, actions = batch["observations"], batch["actions"]
    batch_size, device = actions.shape[0], obs.device

    # critic (critic_loss): best-of-C backup from the target critic; both members regress to the same y
    with torch.no_grad():
        next_actions = best_of_c(actor, critic_target, batch["next_observations"], args.num_candidates, args.noise_std)
        next_q = critic_target(batch["next_observations"], next_actions)
        next_q = {"mean": next_q.mean(0), "min": next_q.min(0).values, "max": next_q.max(0).values}[args.q_agg]
        y = batch["rewards"].squeeze(-1) + args.discount * batch["masks"].squeeze(-1) * next_q
    q = critic(obs, actions)
    critic_loss = (q - y).pow(2).mean()

    # MeanFlow behaviour-cloning term on dataset actions (meanflow_loss)
    t = sample_time(batch_size, args.time_steps, device)
    noise = torch.randn(actions.shape, device=device) * args.noise_std  # not randn_like, which compile's CSE merges
    mf_loss = meanflow_loss(actor, obs, actions, noise, t, args.target_clip, args.adaptive_gamma, args.adaptive_c)

    # actor (actor_loss): Q through the one-step action with the critic frozen, plus the bound loss
    raw = actor(obs, torch.randn(actions.shape, device=device) * args.noise_std, torch.ones(1, 1, device=device))
    bound_loss = F.relu(raw - 1).mean() + F.relu(-1 - raw).mean()
    frozen = {k: p.detach() for k, p in critic.named_parameters()}
    q_loss = -torch.func.functional_call(critic, frozen, (obs, raw.clamp(-1, 1))).mean()

    total = critic_loss + q_loss + args.bound_loss_weight * bound_loss + alpha * mf_loss
    q_d = q.detach()
    metrics = torch.stack([critic_loss, mf_loss, q_loss, bound_loss, q_d.mean(), q_d.min(), q_d.max()]).detach()
    return total, metrics


class Agent:
    """Networks, optimisers, schedules and the dynamic-alpha state; `update` is one gradient step, `act` acts."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args, device: torch.device):
        self.args = args
        self.actor = MeanFlowActor(obs_dim, action_dim, args.actor_hidden_dim, args.actor_depth, args.actor_mlp_ratio)
        self.critic = CriticEnsemble(obs_dim, action_dim, args.critic_hidden_dim, args.critic_layers, args.num_critics)
        self.actor.to(device)
        self.critic.to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # two parameter groups, each with its own clip and Adam
        self.actor_opt = adam(self.actor.parameters(), args.actor_lr, args, device)
        self.critic_opt = adam(self.critic.parameters(), args.critic_lr, args, device)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, self.actor_lr_factor)
        # dynamic alpha (paper Eq. 21): current alpha and a window of past MeanFlow losses
        self.alpha = torch.tensor(float(args.alpha), device=device)
        self.loss_window = torch.zeros(args.alpha_window, device=device)
        self.window_count = torch.zeros((), device=device)
        self.step = 0
        self.train_step = compile_update(self.gradient_step, args, device)
        self.act_fn = torch.compile(best_of_c) if args.compile else best_of_c

    def actor_lr_factor(self, step: int) -> float:
        """Linear warm-up from 0 (1e-8 with --compile, see adam()), cosine decay to min_ratio at the end of the
        offline phase, then constant."""
        a = self.args
        warmup = int(a.actor_warmup_ratio * a.offline_steps)
        if step < warmup:
            return max(step / warmup, 1e-8 if a.compile else 0.0)
        if step >= a.offline_steps:
            return a.actor_lr_min_ratio
        progress = (step - warmup) / max(1, a.offline_steps - warmup)
        return a.actor_lr_min_ratio + (1 - a.actor_lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def update(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One gradient step on all losses; returns the METRICS tensor (no host sync)."""
        a = self.args
        self.step += 1
        if not a.dynamic_alpha:  # alternative schedule: cosine decay alpha_0 -> 0.1 alpha_0 over the offline steps
            p = min(1.0, (self.step - 1) / max(1, a.offline_steps))
            self.alpha.fill_(a.alpha * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))))
        metrics = self.train_step(batch)
        self.actor_sched.step()
        if a.dynamic_alpha and self.step % a.alpha_interval == 0:
            self.adjust_alpha(metrics[METRICS.index("meanflow_loss")])
        return metrics

    def gradient_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Losses, backward, clipping, both Adam steps and the Polyak target update (what --compile compiles)."""
        a = self.args
        total, metrics = compute_losses(self.actor, self.critic, self.critic_target, batch, self.alpha, a)
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), a.grad_clip, foreach=True)
        nn.utils.clip_grad_norm_(self.critic.parameters(), a.grad_clip, foreach=True)
        self.actor_opt.step()
        self.critic_opt.step()
        with torch.no_grad():  # Polyak target update, every step
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), a.tau)
        return metrics

    @torch.no_grad()
    def adjust_alpha(self, mf_loss: torch.Tensor) -> None:
        """Dynamic alpha (paper Eq. 21), every alpha_interval steps after the warm-up: raise alpha if the MeanFlow loss
        is threshold times the window mean, lower it if threshold times smaller; then push the loss into the window."""
        a = self.args
        if self.step >= a.alpha_warmup_ratio * a.offline_steps:
            mean = self.loss_window.sum() / self.window_count.clamp(min=1)
            enough = self.window_count >= 2
            up = enough & (mf_loss > a.alpha_threshold * mean)
            down = enough & (mf_loss < mean / a.alpha_threshold)
            alpha = torch.where(up, torch.clamp(self.alpha * a.alpha_up, max=10 * a.alpha), self.alpha)
            self.alpha.copy_(torch.where(down, torch.clamp(alpha * a.alpha_down, min=0.1 * a.alpha), alpha))
        self.loss_window.copy_(torch.cat([self.loss_window[1:], mf_loss.reshape(1)]))
        self.window_count.clamp_(max=a.alpha_window - 1).add_(1)

    def act(self, obs: torch.Tensor, modulations: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """Best-of-C actions [n, action_dim] in [-1, 1] by the target critic, for normalised observations [n, obs_dim].
        modulations: actor.condition(t=1), for many calls with the same parameters (an evaluation computes it once)."""
        a = self.args
        return self.act_fn(self.actor, self.critic_target, obs, a.num_candidates, a.noise_std, modulations)

    MODULES = ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "actor_sched")
    TENSORS = ("alpha", "loss_window", "window_count")

    def state_dict(self) -> dict:
        modules = {name: getattr(self, name).state_dict() for name in self.MODULES}
        return {**modules, **{name: getattr(self, name) for name in self.TENSORS}, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        for name in self.MODULES:
            getattr(self, name).load_state_dict(state[name])
        for name in self.TENSORS:
            getattr(self, name).copy_(state[name])
        self.step = state["step"]


# ======================================================================================================================
# TRAINING LOOP: the offline steps, then online fine-tuning (one env step and one update each), evaluations, checkpoints
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

    default_bias = -1.0 if dataset_family(dataset_id) == "antmaze" else 0.0  # FQL's AntMaze rewards r - 1
    reward_bias = default_bias if args.reward_bias is None else args.reward_bias
    task = load_dataset(dataset_id, args.dataset_dir, args.antmaze_goal, 1.0, reward_bias, not args.eval_only)
    if args.capture_video:
        check_video(task.make_env)
    # the evaluation workers fork before anything touches CUDA (forking a CUDA-initialised process is unsupported)
    eval_envs = make_eval_envs(task.make_env, args.eval_episodes, args.eval_workers, args.capture_video)
    if args.eval_only:  # acting needs the env and the checkpoint's observation statistics, not the dataset
        obs_stats = ckpt["obs_stats"]
    else:  # z-scored with the dataset's statistics (the reference's also count its buffer's zero padding; not copied)
        obs_stats = {"mean": task.data["observations"].mean(0), "std": task.data["observations"].std(0)}
        obs_stats["std"][obs_stats["std"] < 1e-6] = 1.0
        for split in filter(None, (task.data, task.val_data)):
            for k in ("observations", "next_observations"):
                split[k] = (split[k] - obs_stats["mean"]) / obs_stats["std"]
        buffer = ReplayBuffer(task.data, capacity=len(task.data["rewards"]) + args.online_steps, device=device)
        val_buffer = ReplayBuffer(task.val_data, len(task.val_data["rewards"]), device) if task.val_data else None
    obs_mean, obs_std = obs_stats["mean"], obs_stats["std"]
    obs_dim, action_dim = len(obs_mean), len(task.action_half)
    agent = Agent(obs_dim, action_dim, args, device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])

    def normalize(raw_obs: object) -> np.ndarray:
        return (task.flatten_obs(raw_obs) - obs_mean) / obs_std

    def policy(raw_obs: object, modulations: Optional[list[torch.Tensor]] = None) -> np.ndarray:
        """Agent.act for raw env observations: actions [n, action_dim] in [-1, 1]."""
        obs_t = torch.as_tensor(normalize(raw_obs), dtype=torch.float32, device=device).reshape(-1, obs_dim)
        return agent.act(obs_t, modulations).cpu().numpy()

    def evaluation(step: int, run_dir: str) -> dict:
        """One evaluation, printed; its eval.jsonl row (normalized_score where the dataset has reference scores)."""
        with torch.no_grad():  # the parameters are fixed during an evaluation: condition on t = 1 once
            modulations = agent.actor.condition(torch.ones(1, 1, device=device))
        video = video_file(args, run_dir, step)
        result = evaluate(
            lambda o: task.env_action(policy(o, modulations)), eval_envs, args.eval_episodes, args.seed, device, video
        )
        row = {"step": step, **{k: float(v.mean()) for k, v in result.items()}}
        if task.normalized_score is not None:
            row["normalized_score"] = float(np.mean(task.normalized_score(result["episodic_return"])))
        tqdm.write(f"[eval {step}] {args.eval_episodes} episodes: {summary(row, [k for k in row if k != 'step'])}")
        return row

    if args.eval_only:
        write_eval_summary(args.resume, evaluation(agent.step, os.path.dirname(os.path.abspath(args.resume))), args)
        return eval_envs.close()
    if ckpt is not None:
        buffer.restore_online_part(ckpt["online_buffer"])
        restore_rng(ckpt["rng"], device)
    else:
        run_dir = make_run_dir(args)
    config = os.path.join(run_dir, "config.json")
    with open(config, "w") as f:
        json.dump({**asdict(args), "dataset_id": dataset_id, "device": str(device)}, f, indent=2)
    logger = Logger(run_dir, args)
    print(
        f"env-id {args.env_id} -> dataset {dataset_id} ({task.family}): {buffer.offline_size} transitions, "
        f"obs {obs_dim}, action {action_dim}, device {device}; arguments in {config}"
    )

    def save() -> None:
        save_checkpoint(os.path.join(run_dir, "model.pt"), agent.step, agent, args, device,
                        online_buffer=buffer.online_part(), obs_stats=obs_stats)  # fmt: skip

    env = task.make_env() if args.online_steps > 0 else None
    progress = Progress(total_steps, agent.step)
    metric_sum, metric_count, last_eval, episodes = None, 0, {}, []
    # seeded by the step the online phase (re)starts at: a resumed run replays no episode seed
    obs = env.reset(seed=args.seed + max(agent.step, args.offline_steps))[0] if env is not None else None
    episode_return, episode_length = 0.0, 0

    while agent.step < total_steps and not progress.stop:
        online = agent.step >= args.offline_steps
        if online:  # one env step with the best-of-C action, then one update (UTD 1)
            action = policy(obs)[0]
            next_obs, reward, terminated, truncated, _ = env.step(task.env_action(action))
            buffer.add(
                observations=normalize(obs),
                actions=action,
                rewards=task.transform_reward(np.float32(reward)),
                masks=np.float32(1.0 - terminated),  # timeouts bootstrap
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
                    f"non-finite loss at step {step}: {means}. Try a smaller --alpha, "
                    "--critic-lr or --actor-lr, and check the dataset for NaN/inf values."
                )
            sps = progress.log()
            row = {"step": step, "phase": phase, **means, "alpha": agent.alpha.item(),
                   "actor_lr": float(agent.actor_sched.get_last_lr()[0]), "sps": sps}  # fmt: skip
            if val_buffer is not None:  # the same losses on OGBench's validation split, as FQL logs them;
                # under a forked RNG, so that validation leaves the training run's random stream as it is
                with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    batch = val_buffer.sample(args.batch_size)
                    _, val = compute_losses(agent.actor, agent.critic, agent.critic_target, batch, agent.alpha, args)
                row.update({f"val/{k}": v for k, v in zip(METRICS, val.tolist())})
            if episodes:
                row["episodic_return"] = float(np.mean([r for r, _ in episodes]))
                row["episodic_length"] = float(np.mean([n for _, n in episodes]))
                row["online_env_steps"] = step - args.offline_steps
            keys = ("sps", "critic_loss", "meanflow_loss", "q_mean", "alpha", "episodic_return")
            line = f"[{phase} {step}/{total_steps}] {summary(row, keys)}"
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
ALIASES: dict[str, str] = {
    **{f"antmaze-{k}": f"D4RL/antmaze/{'large-play' if k == 'large' else k}-v1" for k in _ANTMAZE},
    **{f"kitchen-{k}": f"D4RL/kitchen/{k}-v2" for k in ("complete", "partial", "mixed")},
    **{f"{e}-{k}": f"D4RL/{e}/{k}-v2" for e in _ADROIT for k in ("human", "cloned", "expert")},
    **{f"pointmaze-{m}{d}": f"D4RL/pointmaze/{m}{d}-v2" for m in _POINTMAZE for d in ("", "-dense")},
}
"""short --env-id aliases -> Minari dataset ids; 'antmaze-large' is large-play, the task of the paper"""


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
