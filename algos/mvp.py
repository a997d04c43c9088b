# MVP: "Mean Flow Policy with Instantaneous Velocity Constraint for One-step Action Generation" (ICLR 2026 Oral)
# paper: https://arxiv.org/abs/2602.13810 (no official code). The training framework is reconstructed from Q-chunking
# (QC, https://github.com/ColinQiyangLi/qc, built on https://github.com/seohongpark/fql): its sequence sampling,
# best-of-N actor, networks and defaults ([reconstructed] below: not reported by the paper).
#
# Time convention of the paper: t=0 is noise, t=1 is the action; u(a_t, t, r, s) is the mean velocity over [t, r].
# Alg. 1 (Mean Flow RL), as implemented here:
#   GenSelect(s; Q): a_i = clip(e_i + u(e_i, 0, 1, s), -1, 1), e_i ~ N(0, I), i = 1..N; argmax_i mean_k Q_k(s, a_i)
#   update (compute_losses): L_Q (Eq. 20) with y = sum_{i<h} gamma^i r_i + gamma^h m Q'(s_{+h}, GenSelect(s_{+h}))
#       + L_MF (Eq. 9) + lambda L_IVC (Eq. 15) on buffer chunks of h actions; no Q-gradient reaches u
#   main: B <- D_offline; offline updates; online, execute GenSelect(s; Q)'s chunk open-loop, store it in B, update
# Improvement comes from the selection alone (Theorem 1). Datasets: OGBench singletask tasks (the paper's cube tasks)
# and Minari D4RL ids; not Robomimic.
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

ALGO = "mvp"


@dataclass
class Args:
    env_id: str = "cube-double-play-singletask-task2-v0"  # OGBench singletask name, Minari dataset id or ALIASES key
    offline_steps: int = 1_000_000  # gradient steps on the offline dataset (QC)
    online_steps: int = 1_000_000  # environment steps of online fine-tuning after the offline phase, UTD 1 (QC)
    seed: int = 1  # RNG seed for python, numpy and torch
    eval_interval: int = 100_000  # evaluate every this many steps (gradient steps offline, env steps online) and at end
    eval_episodes: int = 50  # episodes per evaluation; 0 skips evaluation (checkpoints are still written)
    eval_workers: int = 0  # 0: all evaluation episodes at once in this process; N > 0: in N processes, in waves of N
    capture_video: bool = False  # record each evaluation's first episode to {run_dir}/videos/ (moviepy; MUJOCO_GL)
    log_interval: int = 5000  # write train.jsonl and print progress every this many steps
    save_model: bool = False  # write {run_dir}/model.pt at every evaluation and when stopped by Ctrl-C
    save_every_eval: bool = False  # with --save-model, also keep model_{step}.pt at every evaluation
    resume: Optional[str] = None  # a model.pt to continue, in its run directory and with its arguments
    eval_only: bool = False  # with --resume: only evaluate the checkpoint; the summary goes to {checkpoint}_eval.json
    output_dir: str = "runs"  # runs go to {output_dir}/{env_id}__{exp_name}__{seed}__{YYYYmmdd-HHMMSS}/
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name; part of the run name
    track: bool = False  # log to Weights & Biases (works with WANDB_MODE=offline)
    wandb_project_name: str = "meanflow-rl"  # W&B project
    wandb_entity: Optional[str] = None  # W&B entity (team); None: the default entity
    dataset_dir: str = "~/.ogbench/data"  # where OGBench .npz datasets are looked for (Minari: $MINARI_DATASETS_PATH)
    reward_bias: Optional[float] = None  # added to every reward offline and online; None: -1 for AntMaze (FQL), else 0
    antmaze_goal: Literal["observe", "relabel"] = "observe"  # AntMaze: keep each episode's goal, or D4RL's fixed goal
    cuda: bool = True  # use CUDA when available
    compile: bool = False  # torch.compile the whole gradient step (on CUDA also captured in CUDA graphs)
    tf32: bool = True  # CUDA: TF32 matmuls (much faster on Ampere and later); --no-tf32 for full FP32
    torch_deterministic: bool = True  # set cudnn.deterministic
    # --- algorithm (Alg. 1); the defaults are QC's (agents/acfql.py, main.py) [reconstructed] unless cited ---
    horizon: int = 5  # action chunk length h, executed open-loop; 1 disables chunking
    num_samples: int = 32  # N, one-step candidate chunks per GenSelect (QC's best-of-N)
    ivc_coef: float = 1.0  # lambda, weight of the instantaneous velocity constraint L_IVC (Eq. 19; the paper's value)
    discount: float = 0.99  # discount gamma
    batch_size: int = 256  # action chunks per gradient step
    lr: float = 3e-4  # Adam learning rate of actor and critic
    tau: float = 0.005  # Polyak rate of the target critic
    online_start_steps: int = 5000  # online environment steps before online updates begin (QC's start_training)
    actor_hidden_dim: int = 512  # mean-velocity MLP width
    actor_layers: int = 4  # mean-velocity MLP hidden layers (Dense, GELU; no LayerNorm)
    critic_hidden_dim: int = 512  # critic MLP width
    critic_layers: int = 4  # critic hidden layers (Dense, GELU, LayerNorm)
    num_critics: int = 2  # critic ensemble size
    # --- rarely changed: reconstructed constants and ablation switches ---
    select_critic: Literal["online", "target"] = "online"  # critic that picks the TD target's next chunk (QC: online)
    time_sampler: Literal["uniform", "logit_normal"] = "uniform"  # t, r ~ U(0, 1), or MeanFlow's logit-normal, mirrored
    time_mu: float = -0.4  # logit-normal sampler: mean of the normal before the sigmoid (MeanFlow's value)
    time_sigma: float = 1.0  # logit-normal sampler: std of the normal before the sigmoid (MeanFlow's value)
    mf_diag_ratio: float = 0.0  # fraction of L_MF samples with r = t
    adaptive_p: float = 0.0  # MeanFlow's adaptive loss weight (err + c)^-p on L_MF and L_IVC; 0: plain MSE
    adaptive_c: float = 1e-3  # c of the adaptive loss weight (MeanFlow's value)
    time_embedding: Literal["raw", "sinusoidal"] = "raw"  # time input: raw t and r, or 64 Fourier features (QC's)


# ======================================================================================================================
# ALGO LOGIC: networks, QC's ActorVectorField and Value [reconstructed]
# ======================================================================================================================
def xavier_(linear: nn.Linear) -> nn.Linear:
    """variance_scaling(1, fan_avg, uniform) kernels and zero biases, the FQL/QC default."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class MeanVelocityField(nn.Module):
    """u_theta(a_t, t, r, s): MLP on concat(s, a_t, emb(t), emb(r)), GELU, no LayerNorm, no output squashing; a_t and
    the output are whole chunks (h * action_dim). Exact GELU here and in the critic (flax's tanh one: within 1e-3)."""

    def __init__(
        self, obs_dim: int, chunk_dim: int, hidden_dim: int = 512, num_layers: int = 4, time_embedding: str = "raw"
    ):
        super().__init__()
        self.sinusoidal = time_embedding == "sinusoidal"
        time_dim = 64 if self.sinusoidal else 1  # QC's fourier_feature_dim
        # QC's FourierFeatures: 32 frequencies exp(-k log(10000) / 31), features [cos(f t), sin(f t)]
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(32) / 31), persistent=False)
        dims = [obs_dim + chunk_dim + 2 * time_dim] + [hidden_dim] * num_layers
        self.hidden = nn.ModuleList(xavier_(nn.Linear(i, o)) for i, o in zip(dims[:-1], dims[1:]))
        self.head = xavier_(nn.Linear(hidden_dim, chunk_dim))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cos(t * self.freqs), torch.sin(t * self.freqs)], dim=-1) if self.sinusoidal else t

    def forward(self, obs: torch.Tensor, a: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, a, self.embed(t), self.embed(r)], dim=-1)
        for layer in self.hidden:
            x = F.gelu(layer(x))
        return self.head(x)


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
    """E critics Q_k(s, a_chunk), each an MLP with hidden layers Dense -> GELU -> LayerNorm and a scalar head."""

    def __init__(self, obs_dim: int, chunk_dim: int, hidden_dim: int = 512, num_layers: int = 4, ensemble: int = 2):
        super().__init__()
        dims = [obs_dim + chunk_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(EnsembleLinear(ensemble, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.norm_weight = nn.Parameter(torch.ones(num_layers, ensemble, 1, hidden_dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_layers, ensemble, 1, hidden_dim))
        self.head = EnsembleLinear(ensemble, hidden_dim, 1)
        self.ensemble = ensemble

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1).expand(self.ensemble, -1, -1)
        for i, layer in enumerate(self.layers):
            x = F.gelu(layer(x))
            x = F.layer_norm(x, x.shape[-1:], eps=1e-6) * self.norm_weight[i] + self.norm_bias[i]  # flax's eps
        return self.head(x).squeeze(-1)  # [E, B]


# ======================================================================================================================
# ALGO LOGIC: GenSelect (Alg. 1), the action of acting, evaluation and the TD target
# ======================================================================================================================
@torch.no_grad()
def gen_select(actor: nn.Module, critic: nn.Module, obs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """N one-step chunks a_i = clip(e_i + u(e_i, 0, 1, s), -1, 1), e_i ~ N(0, I); per observation the a_i with the
    highest ensemble-mean Q. No gradient flows through the selection."""
    batch, chunk_dim = obs.shape[0], actor.head.out_features
    obs_n = obs.repeat_interleave(num_samples, dim=0)
    noise = torch.randn(batch * num_samples, chunk_dim, device=obs.device)
    t = obs_n.new_zeros(batch * num_samples, 1)
    actions = (noise + actor(obs_n, noise, t, t + 1)).clamp(-1, 1)
    q = critic(obs_n, actions).mean(0).view(batch, num_samples)
    return actions.view(batch, num_samples, chunk_dim)[torch.arange(batch, device=obs.device), q.argmax(1)]


# ======================================================================================================================
# ALGO LOGIC: policy losses, L_MF with one JVP (Eq. 8-9) and L_IVC on the diagonal r = t (Eq. 15)
# ======================================================================================================================
def u_and_total_derivative(
    actor: Callable, obs: torch.Tensor, a_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u(a_t, t, r, s) and du/dt = (∂u/∂a) v + ∂u/∂t from one forward-mode JVP, tangents (v, 1, 0) on (a, t, r)."""
    return torch.func.jvp(
        lambda a_, t_, r_: actor(obs, a_, t_, r_), (a_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r))
    )


def sample_time(n: int, args: Args, device: torch.device) -> torch.Tensor:
    """t ~ U(0, 1), or MeanFlow's sigmoid(N(mu, sigma)) mirrored as 1 - t (MeanFlow puts the data at t=0, MVP at t=1)
    [reconstructed]."""
    if args.time_sampler == "uniform":
        return torch.rand(n, 1, device=device)
    return 1 - torch.sigmoid(args.time_mu + args.time_sigma * torch.randn(n, 1, device=device))


def sample_t_r(n: int, args: Args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) for L_MF: two draws sorted into t <= r; a fraction mf_diag_ratio gets r = t [reconstructed]."""
    t, r = sample_time(n, args, device), sample_time(n, args, device)
    t, r = torch.minimum(t, r), torch.maximum(t, r)
    return t, torch.where(torch.rand(n, 1, device=device) < args.mf_diag_ratio, t, r)


def regression_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, adaptive_p: float = 0.0, adaptive_c: float = 1e-3
) -> torch.Tensor:
    """Squared error, mean over the chunk's dims with positions past an episode end zeroed (QC's BC mask), times
    MeanFlow's adaptive weight sg((err + c)^-p) per sample (p = 0: plain MSE), mean over the batch."""
    batch, horizon = valid.shape
    err = ((pred - target).pow(2).view(batch, horizon, -1) * valid[:, :, None]).flatten(1).mean(1)
    return (err * (err.detach() + adaptive_c).pow(-adaptive_p)).mean()


def meanflow_loss(
    actor: Callable,
    obs: torch.Tensor,
    actions: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    valid: torch.Tensor,
    adaptive_p: float = 0.0,
    adaptive_c: float = 1e-3,
) -> torch.Tensor:
    """L_MF (Eq. 9): ||u(a_t, t, r, s) - sg(v + (r - t) du/dt)||^2 on the path a_t = (1 - t) e + t a*, v = a* - e;
    the target is the identity u = v + (r - t) du/dt (Eq. 8)."""
    a_t = (1 - t) * noise + t * actions
    v = actions - noise
    u, du_dt = u_and_total_derivative(actor, obs, a_t, t, r, v)
    return regression_loss(u, (v + (r - t) * du_dt).detach(), valid, adaptive_p, adaptive_c)


def ivc_loss(
    actor: Callable,
    obs: torch.Tensor,
    actions: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    valid: torch.Tensor,
    adaptive_p: float = 0.0,
    adaptive_c: float = 1e-3,
) -> torch.Tensor:
    """L_IVC (Eq. 15): ||u(a_t, t, t, s) - v||^2, flow matching on r = t; it fixes the boundary condition
    u(a, t, t) = v(a, t) that L_MF alone leaves free (Theorems 2-3)."""
    a_t = (1 - t) * noise + t * actions
    return regression_loss(actor(obs, a_t, t, t), actions - noise, valid, adaptive_p, adaptive_c)


# ======================================================================================================================
# ALGO LOGIC: critic loss (Eq. 20 with QC's chunked n-step backup) and one update of the Agent (Alg. 1)
# ======================================================================================================================
def chunk_target(rewards: torch.Tensor, masks: torch.Tensor, next_q: torch.Tensor, discount: float) -> torch.Tensor:
    """y = sum_{i<h} gamma^i r_i + gamma^h (prod_i m_i) Q'(s_{+h}, a*_{+h}) (QC): no bootstrap once any step in the
    chunk is terminal. Chunks that cross an episode end are dropped from the loss by valid[:, -1]."""
    horizon = rewards.shape[1]
    powers = discount ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    return (rewards * powers).sum(1) + discount**horizon * masks.prod(1) * next_q


METRICS = ("critic_loss", "mf_loss", "ivc_loss", "q_mean", "q_min", "q_max", "target_mean")


def compute_losses(
    actor: MeanVelocityField,
    critic: CriticEnsemble,
    critic_target: CriticEnsemble,
    batch: dict[str, torch.Tensor],
    args: Args,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total loss L_Q + L_MF + lambda L_IVC (the two parameter sets are disjoint) and the METRICS as one tensor."""
    obs, actions, valid, next_obs = batch["observations"], batch["actions"], batch["valid"], batch["next_observations"]

    # critic: the next chunk is GenSelect(s_{+h}), picked by the online critic unless --select-critic target, valued
    # by the target critic's ensemble mean (Eq. 20; QC's agents/acfql.py::critic_loss)
    with torch.no_grad():
        selector = critic_target if args.select_critic == "target" else critic
        next_q = critic_target(next_obs, gen_select(actor, selector, next_obs, args.num_samples)).mean(0)
        y = chunk_target(batch["rewards"], batch["masks"], next_q, args.discount)
    q = critic(obs, actions)
    critic_loss = (valid[:, -1] * (q - y).pow(2)).mean()

    # policy: mean-velocity regression on buffer chunks, L_MF + lambda L_IVC (Eq. 19); no Q term
    t, r = sample_t_r(len(obs), args, obs.device)
    noise = torch.randn(actions.shape, device=obs.device)  # randn, not randn_like, which torch.compile's CSE merges
    mf = meanflow_loss(actor, obs, actions, noise, t, r, valid, args.adaptive_p, args.adaptive_c)
    t_ivc = sample_time(len(obs), args, obs.device)  # an independent t and noise for L_IVC [reconstructed]
    noise = torch.randn(actions.shape, device=obs.device)
    ivc = ivc_loss(actor, obs, actions, noise, t_ivc, valid, args.adaptive_p, args.adaptive_c)

    total = critic_loss + mf + args.ivc_coef * ivc
    q_d = q.detach()
    metrics = torch.stack([critic_loss, mf, ivc, q_d.mean(), q_d.min(), q_d.max(), y.mean()]).detach()
    return total, metrics


class Agent:
    """Mean-velocity generator, critic ensemble, target critic and one Adam over both; `update` is one gradient step."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args, device: torch.device):
        self.args = args
        chunk_dim = action_dim * args.horizon
        self.actor = MeanVelocityField(
            obs_dim, chunk_dim, args.actor_hidden_dim, args.actor_layers, args.time_embedding
        ).to(device)
        self.critic = CriticEnsemble(obs_dim, chunk_dim, args.critic_hidden_dim, args.critic_layers, args.num_critics)
        self.critic.to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.opt = adam([*self.actor.parameters(), *self.critic.parameters()], args.lr, args, device)
        self.update = compile_update(self.gradient_step, args, device)

    def gradient_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """All losses, one Adam step, the Polyak update (what --compile compiles); the METRICS tensor (no host sync)."""
        total, metrics = compute_losses(self.actor, self.critic, self.critic_target, batch, self.args)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.args.tau)
        return metrics

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observations [n, obs_dim] -> GenSelect chunks [n, h * action_dim] in [-1, 1] (online critic)."""
        return gen_select(self.actor, self.critic, obs, self.args.num_samples)

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in ("actor", "critic", "critic_target", "opt")}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "critic_target", "opt"):
            getattr(self, name).load_state_dict(state[name])


# ======================================================================================================================
# TRAINING LOOP: offline pre-training, then online fine-tuning with open-loop chunks (Alg. 1)
# ======================================================================================================================
EVAL_KEYS = ("episodic_return", "episodic_length", "success_rate", "normalized_score")
LOG_KEYS = ("critic_loss", "mf_loss", "ivc_loss", "q_mean")  # the losses on the printed training line


def main(args: Args, ckpt: Optional[dict] = None) -> None:
    """ckpt: the checkpoint of --resume that parse_cli read (None: main reads it; see `resume`)."""
    args, ckpt = resume(args, ckpt)
    check_args(args)
    dataset_id = resolve_dataset_id(args.env_id)
    total_steps = args.offline_steps + args.online_steps
    if ckpt is not None and ckpt["step"] >= total_steps and not args.eval_only:
        print(f"{args.resume}: the run finished at step {ckpt['step']} of {total_steps}; nothing to do")
        return
    run_dir = resume_run_dir(args, ckpt["step"]) if ckpt is not None and not args.eval_only else None
    device = seed_everything(args)

    default_bias = -1.0 if dataset_family(dataset_id) == "antmaze" else 0.0  # AntMaze rewards r - 1, as in FQL
    reward_bias = default_bias if args.reward_bias is None else args.reward_bias
    task = load_dataset(dataset_id, args.dataset_dir, args.antmaze_goal, 1.0, reward_bias, not args.eval_only)
    if args.capture_video:
        check_video(task.make_env)
    # the evaluation workers fork before anything touches CUDA (forking a CUDA-initialised process is unsupported)
    eval_envs = make_eval_envs(task.make_env, args.eval_episodes, args.eval_workers, args.capture_video)
    if args.eval_only:  # acting needs the env and the checkpoint's observation statistics, not the dataset
        obs_stats = ckpt["obs_stats"]
    else:
        data = task.data
        lengths = np.diff(np.flatnonzero(data["dones"]) + 1, prepend=0)  # episode lengths
        if (lengths < args.horizon).all():
            raise DatasetError(
                f"every episode of '{dataset_id}' is shorter than --horizon {args.horizon} (the longest has "
                f"{lengths.max()} steps), so no action chunk fits in one; use --horizon {lengths.max()} or less"
            )
        if (lengths < args.horizon).any():
            print(
                f"notice: {(lengths < args.horizon).sum()} of {len(lengths)} episodes are shorter than --horizon "
                f"{args.horizon}; their chunks cross an episode end and are left out of the critic loss"
            )
        # observations normalised with fixed dataset statistics [reconstructed; QC feeds raw observations]
        std = data["observations"].std(0)
        std[std < 1e-6] = 1.0
        obs_stats = {"mean": data["observations"].mean(0), "std": std}
        for split in filter(None, (data, task.val_data)):
            for k in ("observations", "next_observations"):
                split[k] = (split[k] - obs_stats["mean"]) / obs_stats["std"]
        buffer = ReplayBuffer(data, capacity=len(data["rewards"]) + args.online_steps, device=device)
        val_buffer = ReplayBuffer(task.val_data, len(task.val_data["rewards"]), device) if task.val_data else None
    obs_dim, action_dim = len(obs_stats["mean"]), len(task.action_half)
    agent = Agent(obs_dim, action_dim, args, device)
    step = 0
    if ckpt is not None:
        step = ckpt["step"]
        agent.load_state_dict(ckpt["agent"])

    def normalize(raw_obs: object) -> np.ndarray:
        return (task.flatten_obs(raw_obs) - obs_stats["mean"]) / obs_stats["std"]

    def act_chunk(raw_obs: object) -> np.ndarray:  # env observations -> chunks [n, h, action_dim] in [-1, 1]
        obs_t = torch.as_tensor(normalize(raw_obs), dtype=torch.float32, device=device).reshape(-1, obs_dim)
        return agent.act(obs_t).view(-1, args.horizon, action_dim).cpu().numpy()

    def evaluation(step: int, run_dir: str) -> dict:
        """One evaluation, printed; its eval.jsonl row (normalized_score where the dataset has reference scores)."""
        video = video_file(args, run_dir, step)
        act = lambda o: task.env_action(act_chunk(o))  # noqa: E731
        result = evaluate(act, eval_envs, args.eval_episodes, args.seed, device, video)
        row = {"step": step, **{k: float(v.mean()) for k, v in result.items()}}
        if task.normalized_score is not None:
            row["normalized_score"] = float(np.mean(task.normalized_score(result["episodic_return"])))
        tqdm.write(f"[eval {step}] {args.eval_episodes} episodes: {summary(row, EVAL_KEYS)}")
        return row

    if args.eval_only:
        write_eval_summary(args.resume, evaluation(step, os.path.dirname(os.path.abspath(args.resume))), args)
        return eval_envs.close()
    if ckpt is not None:
        buffer.restore_online_part(ckpt["online_buffer"])
        if buffer.size > buffer.offline_size:  # the online episode in progress is cut here: no chunk may cross it
            buffer.data["dones"][buffer.size - 1] = 1.0
        restore_rng(ckpt["rng"], device)
    else:
        run_dir = make_run_dir(args)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({**asdict(args), "dataset_id": dataset_id, "device": str(device)}, f, indent=2)
    logger = Logger(run_dir, args)
    print(
        f"env-id {args.env_id} -> dataset {dataset_id} ({task.family}): {buffer.offline_size} transitions, "
        f"obs {obs_dim}, action {action_dim} x horizon {args.horizon}, device {device}, run dir {run_dir} "
        "(arguments in its config.json)"
    )

    def save() -> None:
        path = os.path.join(run_dir, "model.pt")
        save_checkpoint(path, step, agent, args, device, online_buffer=buffer.online_part(), obs_stats=obs_stats)

    env = task.make_env() if args.online_steps > 0 else None
    progress = Progress(total_steps, step)
    metric_sum, metric_count, last_eval, episodes = None, 0, {}, []
    # seeded by the step the online phase (re)starts at: a resumed run replays no episode seed
    obs = env.reset(seed=args.seed + max(step, args.offline_steps))[0] if env is not None else None
    episode_return, episode_length, queue = 0.0, 0, []

    while step < total_steps and not progress.stop:
        online = step >= args.offline_steps
        phase = "online" if online else "offline"
        if online:  # one env step from the open-loop chunk queue
            if not queue:
                queue = list(act_chunk(obs)[0])
            action = queue.pop(0)
            next_obs, reward, terminated, truncated, _ = env.step(task.env_action(action))
            # masks: timeouts bootstrap
            buffer.add(observations=normalize(obs), actions=action, rewards=task.transform_reward(np.float32(reward)),
                       masks=np.float32(1.0 - terminated), dones=np.float32(terminated or truncated),
                       next_observations=normalize(next_obs))  # fmt: skip
            episode_return, episode_length = episode_return + float(reward), episode_length + 1
            obs = next_obs
            if terminated or truncated:
                episodes.append((episode_return, episode_length))
                obs, episode_return, episode_length, queue = env.reset()[0], 0.0, 0, []
        step += 1

        if not online or step - args.offline_steps >= args.online_start_steps:  # UTD 1 once online training starts
            metrics = agent.update(buffer.sample(args.batch_size, args.horizon))
            metric_sum = metrics if metric_sum is None else metric_sum + metrics
            metric_count += 1
            progress.step()

        if step % args.log_interval == 0 or step == total_steps:
            row = {"step": step, "phase": phase, "sps": progress.log()}
            if metric_count:
                means = dict(zip(METRICS, (metric_sum / metric_count).tolist()))  # the only host sync of the interval
                if not all(map(math.isfinite, means.values())):
                    raise FloatingPointError(
                        f"non-finite loss at step {step}: {means}. Try a smaller --lr, and check the dataset for "
                        "NaN/inf values."
                    )
                row.update(means)
            if val_buffer is not None:  # the same losses on OGBench's validation split, as FQL logs them;
                # under a forked RNG, so that validation leaves the training run's random stream as it is
                with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    batch = val_buffer.sample(args.batch_size, args.horizon)
                    _, val = compute_losses(agent.actor, agent.critic, agent.critic_target, batch, args)
                row.update({f"val/{k}": v for k, v in zip(METRICS, val.tolist())})
            if episodes:
                row["episodic_return"] = float(np.mean([r for r, _ in episodes]))
                row["episodic_length"] = float(np.mean([n for _, n in episodes]))
            if online:
                row["online_env_steps"] = step - args.offline_steps
            last = f"last eval: {summary(last_eval, EVAL_KEYS)}" if last_eval else ""
            line = " | ".join(filter(None, (f"[{phase} {step}/{total_steps}] sps {row['sps']:.2f}",
                                            summary(row, LOG_KEYS), last)))  # fmt: skip
            logger.log("train", row, line)
            metric_sum, metric_count, episodes = None, 0, []

        if step % args.eval_interval == 0 or step == total_steps:
            if args.eval_episodes > 0:
                last_eval = evaluation(step, run_dir)
                logger.log("eval", last_eval, video=video_file(args, run_dir, step))
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
# PLUMBING (TRY NOT TO MODIFY): task aliases, data layer, chunk buffer, arguments, checkpoints, logging, evaluation
# ======================================================================================================================
_ANTMAZE = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large", "large-play", "large-diverse")
_ADROIT, _POINTMAZE = ("pen", "door", "hammer", "relocate"), ("open", "umaze", "medium", "large")
ALIASES: dict[str, str] = {  # short --env-id aliases -> Minari dataset ids; the paper's tasks are OGBench names
    **{f"antmaze-{k}": f"D4RL/antmaze/{'large-play' if k == 'large' else k}-v1" for k in _ANTMAZE},
    **{f"kitchen-{k}": f"D4RL/kitchen/{k}-v2" for k in ("complete", "partial", "mixed")},
    **{f"{e}-{k}": f"D4RL/{e}/{k}-v2" for e in _ADROIT for k in ("human", "cloned", "expert")},
    **{f"pointmaze-{m}{d}": f"D4RL/pointmaze/{m}{d}-v2" for m in _POINTMAZE for d in ("", "-dense")},
}


def resolve_dataset_id(env_id: str) -> str:
    """--env-id -> Minari id or OGBench singletask name; unknown ids list the aliases."""
    if env_id in ALIASES:
        return ALIASES[env_id]
    if is_ogbench_name(env_id) or "/" in env_id:
        return env_id
    if "robomimic" in env_id.lower() or env_id.split("-")[0] in ("lift", "can", "square"):
        raise DatasetError(
            f"Robomimic tasks such as '{env_id}' are not supported: their datasets are neither Minari nor OGBench "
            "datasets, and their environments need the robomimic and robosuite packages. Use an OGBench task such as "
            "'cube-double-play-singletask-task2-v0' (the paper's other benchmark)."
        )
    names = ", ".join(ALIASES)
    raise DatasetError(
        f"unknown --env-id '{env_id}'. Use an OGBench singletask name such as 'cube-double-play-singletask-task2-v0' "
        f"(the paper's tasks), a Minari dataset id such as 'D4RL/antmaze/large-play-v1', or a short alias ({names})."
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


class ReplayBuffer:
    """All transitions in order, as tensors on the training device: the dataset, then the online transitions (Alg. 1:
    B <- D_offline). Samples chunks of h consecutive transitions, QC's `sample_sequence`."""

    def __init__(self, data: dict[str, np.ndarray], capacity: int, device: torch.device):
        self.size = self.offline_size = len(data["rewards"])
        self.data = {}
        for k, v in data.items():
            v = torch.as_tensor(v, dtype=torch.float32)
            self.data[k] = torch.zeros((capacity, *v.shape[1:]), device=device)
            self.data[k][: self.size] = v.to(device)

    def add(self, **transition: np.ndarray) -> None:
        for k, v in transition.items():
            self.data[k][self.size] = torch.as_tensor(v, dtype=torch.float32)
        self.size += 1

    def sample(self, batch_size: int, horizon: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size - horizon + 1, (batch_size,), device=self.data["rewards"].device)
        return self.chunks(idx, horizon)

    def chunks(self, idx: torch.Tensor, horizon: int) -> dict[str, torch.Tensor]:
        """Chunks starting at rows idx: the first observation, the h actions as [B, h * action_dim], rewards and masks
        [B, h], the observation after the last step, and valid_i = 1 - max_{j<i} done_j [B, h] (QC)."""
        seq = idx[:, None] + torch.arange(horizon, device=idx.device)
        ended = self.data["dones"][seq[:, :-1]].cummax(dim=1).values
        return {
            "observations": self.data["observations"][idx],
            "actions": self.data["actions"][seq].flatten(1),
            "rewards": self.data["rewards"][seq],
            "masks": self.data["masks"][seq],
            "valid": 1.0 - F.pad(ended, (1, 0)),
            "next_observations": self.data["next_observations"][idx + horizon - 1],
        }

    def online_part(self) -> dict[str, torch.Tensor]:
        return {k: v[self.offline_size : self.size].cpu() for k, v in self.data.items()}

    def restore_online_part(self, part: dict[str, torch.Tensor]) -> None:
        """Inserted after the offline data, ahead of all the free rows: a resume that takes fewer online steps than the
        checkpoint already holds (a changed --offline-steps or --online-steps) still has room for the rest."""
        cut = self.offline_size
        for k, v in part.items():
            self.data[k] = torch.cat((self.data[k][:cut], v.to(self.data[k].device), self.data[k][cut:]))
        self.size = self.offline_size + len(part["rewards"])


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
