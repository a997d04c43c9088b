# SOM: "Score-Based One-step MeanFlow Policy Optimization" (Kim, Ki, Ahn, Lee; 2026), https://arxiv.org/abs/2605.23365
# No official code. [secondary]: a third-party reimplementation that says it follows the paper (not the authors' code),
#   https://github.com/SakodaShintaro/vla_streaming_rl  src/vla_streaming_rl/networks/modules/policy_head.py
# [reconstructed]: the RL loop, exploration and temperature after DPMD/SDAC (Ma et al., ICML 2025),
#   https://github.com/mahaitongdae/diffusion_policy_online_rl
# The paper's: an online actor-critic whose target is the Boltzmann policy p_0(a|s) ∝ exp(Q(s, a) / alpha); an iDEM
# Monte-Carlo score of its noised versions becomes a probability-flow-ODE velocity, which a one-step MeanFlow actor
# follows through the MeanFlow identity; Best-of-N action selection. Every constant and loop detail is [secondary] or
# [reconstructed] and NOT confirmed by the paper; four score-target defaults and the score estimator differ from the
# secondary's (algos/README.md "SOM").
# Time (MeanFlow / VP-SDE): t=0 is the action, t=1 is noise, r <= t. The actor predicts the average velocity
# u(a_t, r, t, s) of the PF-ODE flow and acts in one step, a = squash(e - u(e, 0, 1, s)), e ~ N(0, I).
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, Optional, Union

# torch's OpenMP threads sleep, not spin, while they wait: with the cores shared, spinning threads stall the run
# (results/README.md "Threads on a shared machine"). Read when torch loads; OMP_WAIT_POLICY=ACTIVE overrides it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from gymnasium.envs.mujoco import MujocoEnv
from tqdm import tqdm

ALGO = "som"


@dataclass
class Args:
    """SOM, online (arXiv 2605.23365)."""

    env_id: str = "HalfCheetah-v4"  # Gymnasium id with Box obs and actions; the paper's suite: MuJoCo -v4 locomotion
    total_timesteps: int = 1_000_000  # environment steps; one gradient update per step from learning_starts on
    learning_starts: int = 30_000  # steps of uniform-random actions before updates begin [reconstructed: DPMD]
    seed: int = 1  # RNG seed for python, numpy, torch and the env
    eval_interval: int = 10_000  # evaluate every this many env steps (and at the end)
    eval_episodes: int = 20  # episodes per evaluation
    eval_workers: int = 0  # 0: all episodes batched in this process; N > 0: N processes (AsyncVectorEnv), waves of N
    capture_video: bool = False  # first episode of each evaluation to run_dir/videos/eval_{step}.mp4; needs moviepy
    log_interval: int = 5000  # write train.jsonl and print progress every this many env steps
    save_model: bool = False  # write run_dir/model.pt at every evaluation and when stopped by Ctrl-C
    save_every_eval: bool = False  # with --save-model, also keep model_{step}.pt at every evaluation
    resume: Optional[str] = None  # a model.pt to resume from, in its run directory and with its arguments
    eval_only: bool = False  # with --resume: evaluate the checkpoint, write {checkpoint}_eval.json, no training
    output_dir: str = "runs"  # runs go to {output_dir}/{env_id}__{exp_name}__{seed}__{YYYYmmdd-HHMMSS}/
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name; part of the run name
    track: bool = False  # log to Weights & Biases (works with WANDB_MODE=offline)
    wandb_project_name: str = "meanflow-rl"  # W&B project
    wandb_entity: Optional[str] = None  # W&B entity (team); None means the default entity
    save_dataset: Optional[str] = None  # at the end, the replay buffer as this Minari dataset id (e.g. som/hopper-v0)
    cuda: bool = True  # use CUDA when available
    compile: bool = False  # torch.compile the gradient steps (on CUDA also captured in CUDA graphs)
    tf32: bool = True  # CUDA: TF32 matmuls (about 10 significant bits, much faster); --no-tf32 for full FP32
    torch_deterministic: bool = True  # set cudnn.deterministic

    # --- algorithm ---
    batch_size: int = 256  # transitions per gradient step
    num_samples: int = 32  # N, one-step candidates scored by min(Q1, Q2) to act, evaluate and pick the TD target action
    num_mc_samples: int = 100  # K, Monte-Carlo proposals per state in the score estimator [secondary]
    alpha_inv: float = 10.0  # inverse Boltzmann temperature 1/alpha on Q (after --q-norm); secondary: 1
    score_estimator: Literal["box", "idem"] = "box"  # box: Tweedie over box-truncated proposals; idem: secondary's
    hidden_dims: tuple[int, ...] = (256, 256, 256)  # actor MLP widths (Mish); the first is each time embedding's width
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256)  # widths of both critic MLPs (Mish)
    discount: float = 0.99  # discount gamma
    tau: float = 0.005  # Polyak rate of the target critics
    reward_scale: float = 0.2  # rewards are multiplied by this in the TD target [reconstructed: DPMD]
    policy_delay: int = 2  # critic steps per actor step and target update
    critic_lr: float = 3e-4  # critic Adam learning rate
    actor_lr: float = 3e-4  # initial actor Adam learning rate
    actor_lr_end: float = 3e-5  # final actor learning rate
    actor_lr_decay: tuple[int, int] = (25_000, 75_000)  # actor updates over which the lr falls linearly to actor_lr_end
    squash: Literal["clip", "tanh"] = "clip"  # map of the one-step output e - u into the action box [-1, 1]
    explore: Literal["dpmd", "none"] = "dpmd"  # dpmd: add N(0, (explore_noise alpha_e)^2), alpha_e auto-tuned; none

    # --- rarely changed: reconstructed constants and ablation switches ---
    beta_min: float = 0.1  # VP-SDE beta(0) [secondary]
    beta_max: float = 20.0  # VP-SDE beta(1); 20 ends the forward process at ~N(0, I), the prior the policy acts from
    q_norm: Literal["block", "none"] = "none"  # block: standardise Q over the K x B proposals (secondary's)
    score_q: Literal["min", "mean"] = "min"  # twin-critic aggregation inside the score estimator
    score_norm: Literal["unit", "none"] = "none"  # n(score) in the velocity target: raw (PF-ODE) or unit (secondary's)
    score_scale: float = 1.0  # w in v = -beta(t)/2 (a_t + w n(score)); none and 1: the plain PF-ODE; secondary: 25
    eq_ratio: float = 0.25  # fraction of the batch with r = t [secondary]
    adaptive_p: float = 1.0  # p in the adaptive loss weight sg((delta^2 + c)^-p) [secondary]
    adaptive_c: float = 1e-3  # c in the adaptive loss weight [secondary]
    a0_source: Literal["buffer", "policy"] = "buffer"  # which a_0 get noised: replay actions or one-step policy samples
    explore_noise: float = 0.1  # exploration std per unit of alpha_e [reconstructed: DPMD]
    alpha_e_init: float = 5.0  # initial alpha_e
    alpha_e_lr: float = 7e-3  # Adam learning rate of log alpha_e
    alpha_e_interval: int = 250  # gradient steps between alpha_e updates
    target_entropy_scale: float = 0.9  # alpha_e drives the exploration noise's entropy to -scale * action_dim
    temperature_mode: Literal["fixed", "dpmd"] = "fixed"  # fixed: 1/alpha = alpha_inv; dpmd: x alpha_e_init / alpha_e


# ======================================================================================================================
# ALGO LOGIC: networks, the one-step action and Best-of-N
# ======================================================================================================================
class TimeEmbedding(nn.Module):
    """Sinusoidal features [cos, sin] of t in [0, 1] (periods up to 2 pi 10^4), then Linear-SiLU-Linear [secondary]."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t * self.freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class MeanFlowActor(nn.Module):
    """u_theta(a_t, r, t, s): Mish MLP on concat(s, a_t, emb(t), emb(t - r)) [secondary], zero-initialised head (the
    initial policy is squash(e)). r, t: [B, 1], or [1, 1] (acting: r=0, t=1) to embed them once."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: tuple[int, ...] = (256, 256, 256)):
        super().__init__()
        self.t_embed = TimeEmbedding(hidden_dims[0])
        self.gap_embed = TimeEmbedding(hidden_dims[0])
        layers, d = [], obs_dim + action_dim + 2 * hidden_dims[0]
        for h in hidden_dims:
            layers += [nn.Linear(d, h), nn.Mish()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, action_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.action_dim = action_dim

    def forward(self, obs: torch.Tensor, a_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = torch.cat([self.t_embed(t), self.gap_embed(t - r)], dim=-1).expand(obs.shape[0], -1)
        return self.head(self.body(torch.cat([obs, a_t, emb], dim=-1)))


class EnsembleLinear(nn.Module):
    """E independent linear layers in one batched matmul: [E, B, in] -> [E, B, out] (nn.Linear's default init)."""

    def __init__(self, ensemble: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    """Q_1, Q_2: two Mish MLPs evaluated together [reconstructed: DPMD]; returns [2, B]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: tuple[int, ...] = (256, 256, 256)):
        super().__init__()
        dims = [obs_dim + action_dim, *hidden_dims, 1]
        self.layers = nn.ModuleList(EnsembleLinear(2, i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1).expand(2, -1, -1)
        for layer in self.layers[:-1]:
            x = F.mish(layer(x))
        return self.layers[-1](x).squeeze(-1)


def one_step_action(actor: nn.Module, obs: torch.Tensor, noise: torch.Tensor, squash: str = "clip") -> torch.Tensor:
    """a = squash(e - u(e, 0, 1, s)): the PF-ODE from t=1 (noise) to t=0 in one step [secondary]."""
    ones = torch.ones(1, 1, device=obs.device, dtype=obs.dtype)
    a = noise - actor(obs, noise, 0 * ones, ones)
    return a.clamp(-1, 1) if squash == "clip" else torch.tanh(a)


@torch.no_grad()
def best_of_n(actor: nn.Module, critic: nn.Module, obs: torch.Tensor, n: int, squash: str = "clip") -> torch.Tensor:
    """N one-step candidates per state; keep the one with the highest min(Q1, Q2) (the paper's Best-of-N)."""
    batch = obs.shape[0]
    obs_n = obs.repeat_interleave(n, dim=0)
    noise = torch.randn(batch * n, actor.action_dim, device=obs.device, dtype=obs.dtype)
    actions = one_step_action(actor, obs_n, noise, squash)
    if n == 1:
        return actions
    q = critic(obs_n, actions).min(0).values.view(batch, n)
    return actions.view(batch, n, -1)[torch.arange(batch, device=obs.device), q.argmax(1)]


# ======================================================================================================================
# ALGO LOGIC: the score target: VP-SDE, Monte-Carlo score of the Boltzmann policy, PF-ODE velocity
# ======================================================================================================================
def vp_schedule(t: torch.Tensor, beta_min: float, beta_max: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """beta(t), mu_t, sigma_t of the VP-SDE with linear beta, a_t = mu_t a_0 + sigma_t xi [secondary]."""
    beta = beta_min + t * (beta_max - beta_min)
    log_mu = -0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t**2)
    return beta, log_mu.exp(), torch.sqrt(-torch.expm1(2 * log_mu))


def truncated_normal(mean: torch.Tensor, std: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k samples [k, *mean.shape] of N(mean, std^2) truncated to [-1, 1] per coordinate (inverse CDF), and its exact
    mean. Coordinates are mirrored to mean >= 0 so that the box sits in the lower tail, where ndtr is accurate."""
    sign, m = torch.where(mean < 0, -1.0, 1.0), mean.abs()
    lo, hi = (-1 - m) / std, (1 - m) / std
    cdf_lo, cdf_hi = torch.special.ndtr(lo), torch.special.ndtr(hi)
    u = cdf_lo + (cdf_hi - cdf_lo) * torch.rand(k, *mean.shape, device=mean.device, dtype=mean.dtype)
    tiny = torch.finfo(mean.dtype).tiny
    samples = (m + std * torch.special.ndtri(u.clamp_min(tiny))).clamp(-1, 1)
    pdf = lambda x: torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)  # noqa: E731
    mean_q = (m + std * (pdf(lo) - pdf(hi)) / (cdf_hi - cdf_lo).clamp_min(tiny)).clamp(-1, 1)
    return sign * samples, sign * mean_q


def boltzmann_score(
    q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    obs: torch.Tensor,
    a_t: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    num_mc_samples: int,
    inv_temp: Union[float, torch.Tensor],
    q_norm: str = "block",
    estimator: str = "box",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo score of the noised Boltzmann policy p_t(a_t | s), p_0 ∝ exp(inv_temp Q~), from iDEM's proposals
    a_0^(k) = a_t / mu_t + (sigma_t / mu_t) xi_k; q_fn(obs [N, S], actions [N, A]) -> [N]. Returns the detached score
    and the Q std of the K x B block.

    box: p_0 lives on the action box; Tweedie's s = (mu_t E[a_0 | a_t] - a_t) / sigma_t^2, with E[a_0 | a_t] ≈
    m + sum_k (softmax_k(inv_temp Q~_k) - 1/K) a_0^(k) over proposals truncated to the box (m: their exact mean, a
    control variate). The critic is never queried outside the box, though sigma_t / mu_t reaches 150 at beta_max = 20.
    idem: grad_{a_t} log sum_k exp(inv_temp Q~(s, a_0^(k))) over untruncated proposals (the secondary's).
    Q~ = (Q - mean) / std over the block with q_norm block (statistics held constant: a data-dependent temperature)."""
    k, (batch, action_dim) = num_mc_samples, a_t.shape
    obs_k = obs.repeat(k, 1)

    def inv_temp_q(proposals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = q_fn(obs_k, proposals.reshape(k * batch, action_dim)).view(k, batch)
        q_std = q.std().detach()
        if q_norm == "block":
            q = (q - q.mean().detach()) / (q_std + 1e-6)
        return inv_temp * q, q_std

    with torch.no_grad():
        if estimator == "box":
            proposals, mean_q = truncated_normal(a_t / mu, sigma / mu, k)
            logits, q_std = inv_temp_q(proposals)
            weights = torch.softmax(logits, dim=0) - 1 / k  # [K, B]
            posterior_mean = mean_q + (weights[..., None] * proposals).sum(0)
            return (mu * posterior_mean - a_t) / sigma**2, q_std
        xi = torch.randn(k, batch, action_dim, device=a_t.device, dtype=a_t.dtype)

        def log_partition(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, q_std = inv_temp_q(a / mu + (sigma / mu) * xi)
            return torch.logsumexp(logits, dim=0).sum(), q_std  # each a_t enters only its own term of the sum

        # no graph to the critic's parameters; torch.func.grad still differentiates w.r.t. a
        return torch.func.grad(log_partition, has_aux=True)(a_t)


def pf_ode_velocity(
    a_t: torch.Tensor, score: torch.Tensor, beta: torch.Tensor, score_scale: float = 25.0, score_norm: str = "unit"
) -> torch.Tensor:
    """Target velocity v = -beta(t)/2 (a_t + w n(score)) [secondary]. With w = 1 and n = id it is the VP-SDE PF-ODE,
    which carries p_1 ≈ N(0, I) to p_0; with the unit score and w = 25, |v| reaches beta_max w / 2 = 250."""
    if score_norm == "unit":
        score = score / (score.norm(dim=-1, keepdim=True) + 1e-6)
    return -0.5 * beta * (a_t + score_scale * score)


# ======================================================================================================================
# ALGO LOGIC: MeanFlow loss with one JVP
# ======================================================================================================================
def u_and_total_derivative(
    actor: Callable, obs: torch.Tensor, a_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u(a_t, r, t, s) and du/dt = (du/da) v + du/dt from one forward-mode JVP, tangents (v, 1) on (a_t, t)."""
    return torch.func.jvp(lambda a, t_: actor(obs, a, r, t_), (a_t, t), (v, torch.ones_like(t)))


def meanflow_loss(
    actor: Callable,
    obs: torch.Tensor,
    a_t: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    v: torch.Tensor,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MeanFlow identity u = v - (t - r) du/dt, stop-gradient target, adaptive per-sample weight. Returns the loss and
    the unweighted mean squared error (with p = 1 the loss stays near 1)."""
    u, du = u_and_total_derivative(actor, obs, a_t, r, t, v)
    u_tgt = (v - (t - r) * du).detach()
    delta_sq = (u - u_tgt).pow(2).mean(dim=-1)
    weight = (delta_sq + adaptive_c).pow(-adaptive_p).detach()
    return (weight * delta_sq).mean(), delta_sq.detach().mean()


# ======================================================================================================================
# ALGO LOGIC: critic and actor losses [reconstructed: DPMD/SDAC relax/algorithm/sdac.py]
# ======================================================================================================================
METRICS = ("critic_loss", "q_mean", "q_max", "actor_loss", "meanflow_mse", "mc_q_std", "score_norm", "alpha_e")


def critic_loss(
    actor: nn.Module, critic: TwinCritic, critic_target: TwinCritic, batch: dict[str, torch.Tensor], args: Args
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j mean (Q_j(s, a) - y)^2, y = reward_scale r + gamma m min_j Q'_j(s', a'), a' Best-of-N under Q'."""
    with torch.no_grad():
        next_obs = batch["next_observations"]
        next_actions = best_of_n(actor, critic_target, next_obs, args.num_samples, args.squash)
        next_q = critic_target(next_obs, next_actions).min(0).values
        y = args.reward_scale * batch["rewards"].squeeze(-1) + args.discount * batch["masks"].squeeze(-1) * next_q
    q = critic(batch["observations"], batch["actions"])
    loss = (q - y).pow(2).mean(1).sum()
    return loss, torch.stack([loss, q.mean(), q.max()]).detach()


def actor_loss(
    actor: nn.Module,
    critic: TwinCritic,
    batch: dict[str, torch.Tensor],
    inv_temp: Union[float, torch.Tensor],
    args: Args,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise a_0 with the VP kernel, build the velocity target from the critic's score, regress u onto it."""
    obs, actions = batch["observations"], batch["actions"]
    batch_size = actions.shape[0]
    if args.a0_source == "buffer":
        a0 = actions
    else:
        with torch.no_grad():
            noise = torch.randn(actions.shape, device=obs.device)  # not randn_like, which torch.compile's CSE merges
            a0 = one_step_action(actor, obs, noise, args.squash)
    # (t, r) sampler: t ~ U[1e-3, 1 - 1e-3], r ~ U[0, t], r = t for eq_ratio of the batch [secondary]
    t = torch.rand(batch_size, 1, device=obs.device) * (1 - 2e-3) + 1e-3
    r = torch.rand(batch_size, 1, device=obs.device) * t
    r = torch.where(torch.rand(batch_size, 1, device=obs.device) < args.eq_ratio, t, r)
    beta, mu, sigma = vp_schedule(t, args.beta_min, args.beta_max)
    a_t = mu * a0 + sigma * torch.randn(a0.shape, device=obs.device)

    def q_fn(o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        q = critic(o, a)
        return q.min(0).values if args.score_q == "min" else q.mean(0)

    score, q_std = boltzmann_score(
        q_fn, obs, a_t, mu, sigma, args.num_mc_samples, inv_temp, args.q_norm, args.score_estimator
    )
    v = pf_ode_velocity(a_t, score, beta, args.score_scale, args.score_norm)
    loss, mse = meanflow_loss(actor, obs, a_t, r, t, v, args.adaptive_p, args.adaptive_c)
    return loss, torch.stack([loss, mse, q_std, score.norm(dim=-1).mean()]).detach()


# ======================================================================================================================
# ALGO LOGIC: the update and acting (Agent)
# ======================================================================================================================
class Agent:
    """Networks, optimisers, the actor lr schedule and alpha_e; `update` is one critic step (+ a delayed actor step)."""

    PARTS = ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "actor_sched", "alpha_e_opt")

    def __init__(self, obs_dim: int, action_dim: int, args: Args, device: torch.device):
        self.args, self.action_dim = args, action_dim
        self.actor = MeanFlowActor(obs_dim, action_dim, args.hidden_dims).to(device)
        self.critic = TwinCritic(obs_dim, action_dim, args.critic_hidden_dims).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = adam(self.actor.parameters(), args.actor_lr, args, device)
        self.critic_opt = adam(self.critic.parameters(), args.critic_lr, args, device)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, self.actor_lr_factor)
        # alpha_e: exploration scale (and, with --temperature-mode dpmd, temperature) [DPMD relax/network/diffv2.py]
        self.log_alpha_e = torch.tensor(math.log(args.alpha_e_init), device=device, requires_grad=True)
        self.alpha_e_opt = torch.optim.Adam([self.log_alpha_e], lr=args.alpha_e_lr)
        self.tune_alpha_e = args.explore == "dpmd" or args.temperature_mode == "dpmd"
        self.actor_metrics = torch.zeros(4, device=device)  # those of the latest actor step
        self.step = 0
        self.critic_step = compile_update(self.critic_gradient_step, args, device)
        self.actor_step = compile_update(self.actor_gradient_step, args, device)

    def actor_lr_factor(self, actor_step: int) -> float:
        """1 until actor_lr_decay[0] actor updates, then linear to actor_lr_end / actor_lr at actor_lr_decay[1]; at
        least 1e-8 under --compile, whose Adam cannot take lr 0 (adam())."""
        a = self.args
        begin, end = a.actor_lr_decay
        progress = min(1.0, max(0.0, (actor_step - begin) / max(1, end - begin)))
        return max(1.0 + progress * (a.actor_lr_end / a.actor_lr - 1.0), 1e-8 if a.compile else 0.0)

    def inv_temp(self) -> Union[float, torch.Tensor]:
        a = self.args
        if a.temperature_mode == "fixed":
            return a.alpha_inv
        return a.alpha_inv * a.alpha_e_init / self.log_alpha_e.detach().exp()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> torch.Tensor:
        """Normalised observations [n, obs_dim] -> Best-of-N actions [n, action_dim] in [-1, 1] under the online
        critic, plus N(0, (explore_noise alpha_e)^2) when exploring."""
        action = best_of_n(self.actor, self.critic, obs, self.args.num_samples, self.args.squash)
        if explore and self.args.explore == "dpmd":
            noise_std = self.args.explore_noise * self.log_alpha_e.exp()
            action = (action + noise_std * torch.randn_like(action)).clamp(-1, 1)
        return action

    def update(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One critic step, every policy_delay steps an actor step and the target update; returns METRICS (no sync)."""
        a = self.args
        self.step += 1
        critic_metrics = self.critic_step(batch)
        if self.step % a.policy_delay == 0:  # the score target uses the critic just updated (as DPMD's actor does)
            self.actor_metrics = self.actor_step(batch, self.inv_temp())
            self.actor_sched.step()
        if self.tune_alpha_e and self.step % a.alpha_e_interval == 0:
            self.update_alpha_e()
        return torch.cat([critic_metrics, self.actor_metrics, self.log_alpha_e.detach().exp().reshape(1)])

    def critic_gradient_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, metrics = critic_loss(self.actor, self.critic, self.critic_target, batch, self.args)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return metrics

    def actor_gradient_step(self, batch: dict[str, torch.Tensor], inv_temp: Union[float, torch.Tensor]) -> torch.Tensor:
        loss, metrics = actor_loss(self.actor, self.critic, batch, inv_temp, self.args)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        with torch.no_grad():  # Polyak update of the target critics
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.args.tau)
        return metrics

    def update_alpha_e(self) -> None:
        """DPMD: loss -log alpha_e (H_target - H_approx), H_approx = |A|/2 log(2 pi e (explore_noise alpha_e)^2) the
        entropy of the exploration noise, H_target = -target_entropy_scale |A|."""
        a = self.args
        std = a.explore_noise * self.log_alpha_e.detach().exp()
        h_approx = 0.5 * self.action_dim * torch.log(2 * math.pi * math.e * std**2)
        loss = -self.log_alpha_e * (-a.target_entropy_scale * self.action_dim - h_approx)
        self.alpha_e_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_e_opt.step()

    def state_dict(self) -> dict:
        parts = {name: getattr(self, name).state_dict() for name in self.PARTS}
        return {
            **parts,
            "log_alpha_e": self.log_alpha_e.detach(),
            "actor_metrics": self.actor_metrics,
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in self.PARTS:
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha_e.copy_(state["log_alpha_e"])
        self.actor_metrics.copy_(state["actor_metrics"])
        self.step = state["step"]


# ======================================================================================================================
# TRAINING LOOP: online interaction, one update per env step after learning_starts, evaluations, checkpoints
# ======================================================================================================================
def main(args: Args, ckpt: Optional[dict] = None) -> None:
    """ckpt: the checkpoint of --resume that parse_cli read (None: main reads it; see `resume`)."""
    args, ckpt = resume(args, ckpt)
    check_args(args)
    if args.save_dataset:
        check_dataset_id(args.save_dataset)
    if ckpt is not None and ckpt["step"] >= args.total_timesteps and not args.eval_only:
        if args.save_dataset:  # a finished run: its dataset from the checkpoint's replay buffer
            return write_dataset(args, ckpt["buffer"], ckpt["step"])
        print(f"{args.resume}: the run finished at step {ckpt['step']} of {args.total_timesteps}; nothing to do")
        return
    run_dir = resume_run_dir(args, ckpt["step"]) if ckpt is not None and not args.eval_only else None
    device = seed_everything(args)

    def make(**kwargs) -> gym.Env:  # the env of --env-id (kwargs: render_mode)
        return make_env(args.env_id, **kwargs)

    env = make()
    if args.capture_video:
        check_video(make)
    eval_envs = make_eval_envs(make, args.eval_episodes, args.eval_workers, args.capture_video)
    obs_dim, action_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    agent = Agent(obs_dim, action_dim, args, device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])

    def obs_tensor(raw_obs: np.ndarray) -> torch.Tensor:  # one observation or a batch -> [n, obs_dim]
        return torch.as_tensor(raw_obs, dtype=torch.float32, device=device).reshape(-1, obs_dim)

    def eval_policy(raw_obs: np.ndarray) -> np.ndarray:  # [n, action_dim] in the env's units
        return to_env_action(agent.act(obs_tensor(raw_obs), explore=False).cpu().numpy(), env.action_space)

    def evaluation(step: int, run_dir: str) -> dict:
        """One evaluation, printed: its eval.jsonl row; with --capture-video, its first episode in run_dir/videos/."""
        video = video_file(args, run_dir, step)
        result = evaluate(eval_policy, eval_envs, args.eval_episodes, args.seed, device, video)
        row = {"step": step, **{k: float(v.mean()) for k, v in result.items()}}
        tqdm.write(f"[eval {step}] {args.eval_episodes} episodes: {summary(row, result)}")
        return row

    if args.eval_only:
        write_eval_summary(args.resume, evaluation(ckpt["step"], os.path.dirname(os.path.abspath(args.resume))), args)
        env.close()
        return eval_envs.close()
    buffer = ReplayBuffer(args.total_timesteps, obs_dim, action_dim, device)
    if ckpt is not None:
        buffer.load_state_dict(ckpt["buffer"])
        restore_rng(ckpt["rng"], device)
        loop = ckpt["loop"]
        env.reset(seed=args.seed)
        if ckpt["env"] is not None:  # MuJoCo: continue the interrupted episode exactly
            restore_env_state(env, ckpt["env"])
        else:  # other envs cannot be restored: start a new episode (not bit-exact)
            loop.update(obs=env.reset(seed=args.seed + loop["global_step"])[0], episode_return=0.0, episode_length=0)
    else:
        loop = {"global_step": 0, "obs": env.reset(seed=args.seed)[0], "episode_return": 0.0, "episode_length": 0}
        run_dir = make_run_dir(args)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({**asdict(args), "device": str(device), "obs_dim": obs_dim, "action_dim": action_dim}, f, indent=2)
    logger = Logger(run_dir, args)
    print(
        f"env {args.env_id}: obs {obs_dim}, action {action_dim} in [{env.action_space.low.min()}, "
        f"{env.action_space.high.max()}], device {device}, run dir {run_dir} (arguments in config.json)"
    )

    obs, global_step = loop["obs"], loop["global_step"]
    episode_return, episode_length = loop["episode_return"], loop["episode_length"]
    progress = Progress(args.total_timesteps, global_step)
    metric_sum, metric_count, last_eval, episodes = None, 0, "", []

    def save() -> None:  # model.pt, with where the loop is
        where = dict(global_step=global_step, obs=obs, episode_return=episode_return, episode_length=episode_length)
        state = dict(buffer=buffer.state_dict(), env=env_state(env), loop=where)
        save_checkpoint(os.path.join(run_dir, "model.pt"), global_step, agent, args, device, **state)

    while global_step < args.total_timesteps and not progress.stop:
        if global_step < args.learning_starts:  # uniform warm-up [reconstructed: DPMD]
            action = torch.rand(action_dim) * 2 - 1
        else:
            action = agent.act(obs_tensor(obs), explore=True)[0]
        action = action.cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(to_env_action(action, env.action_space))
        # masks = 1 - terminated: timeouts bootstrap
        buffer.add(observations=obs, actions=action, rewards=np.float32(reward), masks=np.float32(1.0 - terminated),
                   dones=np.float32(terminated or truncated), next_observations=next_obs)  # fmt: skip
        global_step += 1
        obs, episode_return, episode_length = next_obs, episode_return + float(reward), episode_length + 1
        if terminated or truncated:  # one env with an explicit reset (gymnasium 1.x vector envs autoreset a step late)
            episodes.append((episode_return, episode_length))
            obs, episode_return, episode_length = env.reset()[0], 0.0, 0

        if global_step >= args.learning_starts:
            metrics = agent.update(buffer.sample(args.batch_size))
            metric_sum = metrics if metric_sum is None else metric_sum + metrics
            metric_count += 1
        progress.step(updated=global_step >= args.learning_starts)

        if global_step % args.log_interval == 0 or global_step == args.total_timesteps:
            row = {"step": global_step, "updates": agent.step, "sps": progress.log()}
            if metric_count:
                means = dict(zip(METRICS, (metric_sum / metric_count).tolist()))  # the only host sync of the interval
                if not all(math.isfinite(v) for v in means.values()):
                    raise FloatingPointError(
                        f"non-finite loss at step {global_step}: {means}. Try a smaller "
                        "--critic-lr or --actor-lr, or --reward-scale."
                    )
                # the actor's metrics exist from its first step (update policy_delay) on: averaged over those updates
                if (actor_count := min(metric_count, agent.step - args.policy_delay + 1)) < metric_count:
                    for k in ("actor_loss", "meanflow_mse", "mc_q_std", "score_norm"):
                        if actor_count > 0:
                            means[k] *= metric_count / actor_count
                        else:
                            del means[k]
                row.update(means, actor_lr=float(agent.actor_sched.get_last_lr()[0]), inv_temp=float(agent.inv_temp()))
            if episodes:
                row["episodic_return"] = float(np.mean([r for r, _ in episodes]))
                row["episodic_length"] = float(np.mean([n for _, n in episodes]))
            line = f"[{global_step}/{args.total_timesteps}] "
            line += summary(row, ("sps", "critic_loss", "meanflow_mse", "q_mean", "alpha_e", "episodic_return"))
            logger.log("train", row, line + (f" | last eval: {last_eval}" if last_eval else ""))
            metric_sum, metric_count, episodes = None, 0, []

        if global_step % args.eval_interval == 0 or global_step == args.total_timesteps:
            if args.eval_episodes > 0:
                row = evaluation(global_step, run_dir)
                logger.log("eval", row, video=video_file(args, run_dir, global_step))
                last_eval = summary(row, [k for k in row if k != "step"])
            if args.save_model:
                save()
                if args.save_every_eval:
                    shutil.copyfile(os.path.join(run_dir, "model.pt"), os.path.join(run_dir, f"model_{global_step}.pt"))
            progress.reset()  # the next SPS leaves the evaluation and the checkpoint out

    if progress.stop and args.save_model:  # Ctrl-C: a last checkpoint, at the step reached
        save()
    if args.save_dataset and not progress.stop:  # the checkpoint first: the dataset is never the only copy
        if not args.save_model:
            save()
        write_dataset(args, buffer.state_dict(), global_step, os.path.join(run_dir, "model.pt"))
    env.close()
    eval_envs.close()
    logger.close()
    progress.close(run_dir, os.path.join(run_dir, "model.pt") if args.save_model else None)


# ======================================================================================================================
# PLUMBING (TRY NOT TO MODIFY): environment, replay buffer, --save-dataset, arguments, checkpoints, logging, evaluation
# ======================================================================================================================
warnings.filterwarnings("ignore", message=".*is out of date.*")  # gymnasium on -v4 ids, the paper's suite


class ConfigError(Exception):
    """An expected, user-fixable problem (unknown --env-id, unusable --save-dataset id); printed without a traceback."""


def make_env(env_id: str, **kwargs) -> gym.Env:
    """gym.make (kwargs: e.g. render_mode), checked for Box observations and a bounded Box action space."""
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise ConfigError(
            f"cannot make --env-id '{env_id}' ({type(e).__name__}: {e}). Use a Gymnasium id with continuous "
            "observations and actions, e.g. HalfCheetah-v4, Hopper-v4, Walker2d-v4, Ant-v4, Humanoid-v4 (the "
            "paper's suite) or InvertedPendulum-v5."
        ) from None
    obs_space, act_space = env.observation_space, env.action_space
    boxes = isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
    if not (boxes and np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all()):
        raise ConfigError(f"--env-id '{env_id}' has {obs_space} / {act_space}; SOM needs Box obs, bounded Box actions")
    return env


def to_env_action(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Policy actions live in [-1, 1]; rescale them to the env's bounds (InvertedPendulum: [-3, 3])."""
    return (space.low + (action + 1.0) * 0.5 * (space.high - space.low)).astype(space.dtype)


def env_state(env: gym.Env) -> Optional[dict]:
    """What a MuJoCo env needs to continue the episode bit-exactly after --resume (integration state, TimeLimit
    counter, reset RNG); None for other envs."""
    sim = env.unwrapped
    if not (isinstance(sim, MujocoEnv) and isinstance(env, gym.wrappers.TimeLimit)):
        return None
    physics = np.empty(mujoco.mj_stateSize(sim.model, mujoco.mjtState.mjSTATE_INTEGRATION))
    mujoco.mj_getState(sim.model, sim.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
    return {"physics": physics, "elapsed_steps": env._elapsed_steps, "np_random": sim.np_random.bit_generator.state}


def restore_env_state(env: gym.Env, state: dict) -> None:
    sim = env.unwrapped
    mujoco.mj_setState(sim.model, sim.data, state["physics"], mujoco.mjtState.mjSTATE_INTEGRATION)
    env._elapsed_steps = state["elapsed_steps"]
    sim.np_random.bit_generator.state = state["np_random"]


class ReplayBuffer:
    """Every transition of the run, preallocated on the training device (capacity = total_timesteps)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, device: torch.device):
        # dones (terminated or truncated) are not used by the update; they split episodes for --save-dataset
        dims = dict(observations=obs_dim, actions=action_dim, rewards=1, masks=1, dones=1, next_observations=obs_dim)
        self.data = {k: torch.zeros((capacity, d), device=device) for k, d in dims.items()}
        self.size = 0

    def add(self, **transition: np.ndarray) -> None:
        for k, v in transition.items():
            self.data[k][self.size] = torch.as_tensor(v, dtype=torch.float32)
        self.size += 1

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), device=self.data["rewards"].device)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v[: self.size].cpu() for k, v in self.data.items()}

    def load_state_dict(self, part: dict[str, torch.Tensor]) -> None:
        self.size = len(part["rewards"])
        for k, v in part.items():
            self.data[k][: self.size] = v.to(self.data[k].device)


# --- --save-dataset, the replay buffer as a Minari dataset ---
def check_dataset_id(dataset_id: str) -> None:
    """Fail before training, not after it, when --save-dataset cannot be written."""
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage import get_dataset_path

    try:
        parse_dataset_id(dataset_id)
    except ValueError as e:
        raise ConfigError(f"--save-dataset: {e}") from None
    if os.path.exists(get_dataset_path(dataset_id)):
        raise ConfigError(
            f"--save-dataset {dataset_id} already exists at {get_dataset_path(dataset_id)}; choose another id or "
            f"version, delete it (minari delete {dataset_id}), or set MINARI_DATASETS_PATH elsewhere."
        )


def write_dataset(args: Args, buffer: dict[str, torch.Tensor], step: int, checkpoint: Optional[str] = None) -> None:
    """--save-dataset from a replay buffer's state; when the id was taken meanwhile (another run), say how to write it
    from the run's checkpoint."""
    env = make_env(args.env_id)
    try:
        save_minari_dataset(args.save_dataset, {k: v.numpy() for k, v in buffer.items()}, env, args)
    except ValueError as e:
        checkpoint = checkpoint or args.resume
        raise ConfigError(f"--save-dataset: {e}; write it from the checkpoint with --resume {checkpoint} "
                          "--save-dataset ANOTHER_ID") from None  # fmt: skip
    finally:
        env.close()
    print(f"wrote the replay buffer of step {step} ({len(buffer['rewards'])} transitions) as {args.save_dataset}")


def save_minari_dataset(dataset_id: str, data: dict[str, np.ndarray], env: gym.Env, args: Args) -> None:
    """The replay buffer as Minari episodes, split where terminated or truncated; a trailing unfinished episode is
    marked truncated (it bootstraps, as a timeout does). Actions in the env's units, observations in its dtype."""
    import minari
    from minari.data_collector import EpisodeBuffer

    n = len(data["rewards"])
    ends = np.flatnonzero(data["dones"][:, 0] > 0.5) + 1
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    episodes, start = [], 0
    for i, end in enumerate(ends):
        terminations = data["masks"][start:end, 0] < 0.5
        truncations = np.zeros_like(terminations)
        truncations[-1] = not terminations[-1]
        observations = np.concatenate([data["observations"][start:end], data["next_observations"][end - 1 : end]])
        episodes.append(EpisodeBuffer(
            id=i, observations=observations.astype(env.observation_space.dtype),
            actions=to_env_action(data["actions"][start:end], env.action_space),
            rewards=data["rewards"][start:end, 0].astype(np.float64), terminations=terminations,
            truncations=truncations, infos={},
        ))  # fmt: skip
        start = end
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id, buffer=episodes, env=args.env_id, eval_env=args.env_id,
        algorithm_name="SOM replay buffer (meanflow-rl algos/som.py)", author="meanflow-rl (algos/som.py)",
        author_email="n/a (locally generated)", code_permalink="meanflow-rl: algos/som.py",
        description=(
            f"Replay buffer of one SOM run on {args.env_id} (seed {args.seed}): {n} transitions in {len(episodes)} "
            f"episodes, the first {args.learning_starts} with uniform-random actions, then Best-of-N actions with "
            "exploration noise. The last episode may be unfinished (marked truncated). No reference scores."
        ),
    )  # fmt: skip


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
    except (ConfigError, UsageError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("aborted by Ctrl-C")
