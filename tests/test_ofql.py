"""Tests of algos/ofql.py: the FBC (MeanFlow) maths, the time sampler, the max-Q backup, expressivity, and end-to-end
runs on the tiny local Minari AntMaze dataset (spec: ofql.md)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, four_mode_data, import_algo, mode_fractions, read_jsonl, run_cli, run_main, run_script

ofql = import_algo("ofql")
SCRIPT = str(ROOT / "algos" / "ofql.py")


def random_policy(obs_dim: int = 4, action_dim: int = 3, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return ofql.AverageVelocityNet(obs_dim, action_dim, hidden_dim=32, num_layers=2, emb_dim=16, **kwargs).double()


# ----------------------------------------------------------------------------------------------------------------------
# maths
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("emb_scale", [1.0, 1000.0])
def test_jvp_total_derivative_matches_finite_differences_and_has_no_r_tangent(emb_scale):
    policy = random_policy(emb_scale=emb_scale)
    obs, z, v = (torch.randn(6, d, dtype=torch.float64) for d in (4, 3, 3))
    t = torch.rand(6, 1, dtype=torch.float64) * 0.5 + 0.5
    r = t * torch.rand(6, 1, dtype=torch.float64)
    u, du_dt = ofql.u_and_total_derivative(policy, obs, z, r, t, v)
    h = 1e-7

    def central(dz, dr, dt):  # d/dh u(z + h dz, r + h dr, t + h dt; s) at h = 0
        plus = policy(z + h * dz, r + h * dr, t + h * dt, obs)
        minus = policy(z - h * dz, r - h * dr, t - h * dt, obs)
        return (plus - minus) / (2 * h)

    torch.testing.assert_close(u, policy(z, r, t, obs))
    assert du_dt.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(du_dt, central(v, 0, 1), rtol=1e-5, atol=1e-7)  # r held fixed
    # u depends on r, and moving r along with t would add exactly du/dr: the JVP's r tangent is zero
    du_dr = central(0, 1, 0)
    assert du_dr.abs().max() > 1e-4
    torch.testing.assert_close(central(v, 1, 1), du_dt + du_dr, rtol=1e-5, atol=1e-7)


def test_time_sampler_order_flow_ratio_and_logit_normal_moments():
    torch.manual_seed(0)
    n = 200_000
    for flow_ratio in (0.25, 0.5):
        t, r = ofql.sample_times(n, flow_ratio)
        assert t.shape == r.shape == (n, 1)
        assert (r <= t).all() and (r > 0).all() and (t < 1).all()
        assert abs((r == t).float().mean().item() - flow_ratio) < 0.005
    # with no flow-matching pairs, (t, r) is a sorted pair of two independent logit-normal(-0.4, 1) draws: pooled,
    # the logits have exactly those moments, while t alone is shifted up (the max of two draws)
    t, r = ofql.sample_times(n, 0.0, "logit-normal", mu=-0.4, sigma=1.0)
    assert (r < t).all()
    pooled = torch.logit(torch.cat([t, r]).double())
    assert abs(pooled.mean().item() + 0.4) < 0.01 and abs(pooled.std().item() - 1.0) < 0.01
    assert torch.logit(t.double()).mean().item() > 0.1
    t, r = ofql.sample_times(n, 0.0, "uniform")
    pooled = torch.cat([t, r]).double()
    assert abs(pooled.mean().item() - 0.5) < 0.005 and abs(pooled.var().item() - 1 / 12) < 0.002
    t, r = ofql.sample_times(1000, 1.0)
    assert torch.equal(t, r)  # flow ratio 1: pure flow matching


def test_max_q_backup_takes_max_over_samples_per_critic_then_min():
    q_next = torch.tensor(
        [
            [[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]],  # Q'_1, two states x three samples: maxima 5, 3
            [[4.0, 0.0, 0.0], [2.0, 2.0, 1.0]],  # Q'_2: maxima 4, 2
        ]
    )
    torch.testing.assert_close(ofql.max_q_backup(q_next), torch.tensor([4.0, 2.0]))
    # the other order (min over critics per sample, then max) would give [1, 1]; one sample is clipped double-Q
    torch.testing.assert_close(ofql.max_q_backup(q_next[..., :1]), torch.tensor([1.0, 0.0]))


def test_td_target_groups_samples_per_next_state():
    class LinearQ(torch.nn.Module):  # Q_j(s, a) = 10 s_0 + w_j . a, two different critics
        w = torch.tensor([[1.0, -2.0], [-1.0, 0.5]])

        def forward(self, obs, actions):
            return (10 * obs[:, :1] + actions @ self.w.T).T  # [2, B]

    def zero_u(z, r, t, obs):  # u = 0: the one-step action is the clipped noise
        return torch.zeros_like(z)

    batch = {
        "next_observations": torch.tensor([[0.0], [1.0], [-1.0]]),
        "actions": torch.zeros(3, 2),
        "rewards": torch.tensor([[1.0], [0.0], [-1.0]]),
        "masks": torch.tensor([[1.0], [0.0], [1.0]]),
    }
    torch.manual_seed(3)
    y = ofql.td_target(zero_u, LinearQ(), batch, discount=0.9, num_samples=4)
    torch.manual_seed(3)
    actions = torch.randn(12, 2).clamp(-1, 1)
    for i in range(3):
        a_i = actions[4 * i : 4 * i + 4]  # the 4 samples of next state i
        q1 = max(10 * batch["next_observations"][i, 0] + a @ LinearQ.w[0] for a in a_i)
        q2 = max(10 * batch["next_observations"][i, 0] + a @ LinearQ.w[1] for a in a_i)
        want = batch["rewards"][i, 0] + 0.9 * batch["masks"][i, 0] * min(q1, q2)
        torch.testing.assert_close(y[i], want)


def test_analytic_average_velocity_is_a_fixed_point_of_the_fbc_target():
    torch.manual_seed(0)
    a = torch.rand(1, 3, dtype=torch.float64) * 2 - 1  # the single data point
    obs = torch.zeros(512, 1, dtype=torch.float64)
    noise = torch.randn(512, 3, dtype=torch.float64)
    t = torch.rand(512, 1, dtype=torch.float64).clamp(min=1e-3)

    def u_star(z, r, t, obs):  # exact average velocity from r to t of the flow that transports noise to a
        return (z - a) / t

    def u_perturbed(z, r, t, obs):
        return u_star(z, r, t, obs) + 0.1 * torch.sin(3 * z)

    actions = a.expand(512, 3)
    for r in (torch.zeros_like(t), t * torch.rand_like(t)):  # r = 0 and 0 < r < t
        assert ofql.fbc_loss(u_star, obs, actions, noise, t, r) < 1e-20
        assert ofql.fbc_loss(u_perturbed, obs, actions, noise, t, r) > 1e-3
    # and the one-step action e - u*(e, 0, 1) is the data point
    torch.testing.assert_close(ofql.one_step_action(u_star, obs, noise), actions)


def test_r_equal_t_reduces_to_flow_matching():
    policy = random_policy(2, 3)
    obs, actions, noise = torch.randn(64, 2).double(), torch.rand(64, 3).double() * 2 - 1, torch.randn(64, 3).double()
    t = torch.rand(64, 1, dtype=torch.float64)
    u = policy((1 - t) * actions + t * noise, t, t, obs)
    want = (u - (noise - actions)).pow(2).mean()  # u_tgt = v
    torch.testing.assert_close(ofql.fbc_loss(policy, obs, actions, noise, t, t), want)


def test_networks_shapes_and_shared_time_mlp():
    policy = random_policy(5, 2)
    z, obs = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    assert policy(z, torch.zeros(1, 1).double(), torch.ones(1, 1).double(), obs).shape == (7, 2)
    shared = random_policy(5, 2, shared_time_mlp=True)
    time_mlp = 16 * 32 + 32 + 32 * 16 + 16
    assert sum(p.numel() for p in policy.parameters()) - sum(p.numel() for p in shared.parameters()) == time_mlp
    # the default policy: [a_t, s, emb(t), emb(r)] -> 3 x 256 Mish -> action_dim; two 64-128-64 time branches
    default = ofql.AverageVelocityNet(29, 8)
    body = (8 + 29 + 128) * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 8 + 8
    assert sum(p.numel() for p in default.parameters()) == body + 2 * (64 * 128 + 128 + 128 * 64 + 64)
    critic = ofql.TwinCritic(29, 8)
    one = (37 * 256 + 256) + 2 * (256 * 256 + 256) + 257
    assert sum(p.numel() for p in critic.parameters()) == 2 * one
    q = critic(torch.randn(5, 29), torch.randn(5, 8))
    assert q.shape == (2, 5) and not torch.allclose(q[0], q[1])  # independent members


def test_critic_layer_norm_is_cleandiffusers_dql_critic():
    """--critic-layer-norm: CleanDiffuser's DQLCritic, Linear-LayerNorm-Tanh then (Linear-LayerNorm-Mish) x 2, each
    member with its own LayerNorm gain and bias; a hidden layer's output then does not depend on its input's scale."""
    torch.manual_seed(0)
    critic = ofql.TwinCritic(5, 2, hidden_dim=16, num_layers=3, layer_norm=True)
    plain = sum(p.numel() for p in ofql.TwinCritic(5, 2, hidden_dim=16, num_layers=3).parameters())
    assert sum(p.numel() for p in critic.parameters()) == plain + 3 * 2 * 2 * 16
    with torch.no_grad():
        for norm in critic.norms:
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    obs, actions = torch.randn(7, 5), torch.randn(7, 2)
    h = torch.cat([obs, actions], -1).expand(2, -1, -1)
    for i, (layer, norm) in enumerate(zip(critic.layers[:-1], critic.norms)):
        y = layer(h)
        y = (y - y.mean(-1, keepdim=True)) / (y.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        h = (torch.tanh if i == 0 else torch.nn.functional.mish)(y * norm.weight + norm.bias)
    torch.testing.assert_close(critic(obs, actions), critic.layers[-1](h).squeeze(-1))
    with torch.no_grad():  # a first layer 10x larger changes nothing downstream of its LayerNorm
        critic.layers[0].weight.mul_(10), critic.layers[0].bias.mul_(10)
    torch.testing.assert_close(critic(obs, actions), critic.layers[-1](h).squeeze(-1), rtol=1e-4, atol=1e-4)
    agent, _ = tiny_agent()  # the default outside the paper's families
    assert agent.critic.norms is not None and agent.critic_target.norms is not None
    assert tiny_agent(critic_layer_norm=False)[0].critic.norms is None  # Diffusion-QL's


def test_sample_action_is_bounded_and_prefers_high_q_at_high_temperature():
    class SumQ(torch.nn.Module):
        def forward(self, obs, actions):
            return actions.sum(-1).expand(2, -1)

    policy = random_policy(4, 3).float()
    obs = torch.randn(8, 4)
    torch.manual_seed(1)
    chosen = ofql.sample_action(policy, SumQ(), obs, 3, num_candidates=16, temperature=1e6)
    torch.manual_seed(1)  # the same candidates
    candidates = ofql.one_step_action(policy, obs.repeat_interleave(16, 0), torch.randn(8 * 16, 3)).clamp(-1, 1)
    best = candidates.view(8, 16, 3)[torch.arange(8), candidates.sum(-1).view(8, 16).argmax(1)]
    torch.testing.assert_close(chosen, best)
    assert chosen.abs().max() <= 1


def test_per_family_defaults():
    def resolved(dataset_id, **kw):
        return ofql.resolve_args(ofql.Args(**kw), dataset_id)

    args = resolved("D4RL/antmaze/large-play-v1")
    assert (args.eta, args.max_q_samples, args.eval_temperature, args.offline_steps) == (0.5, 10, 10.0, 1_000_000)
    args = resolved("mujoco/hopper/medium-v0")
    assert (args.eta, args.max_q_samples, args.eval_temperature, args.offline_steps) == (0.1, 1, 100.0, 2_000_000)
    assert resolved("mujoco/halfcheetah/expert-v0").eval_temperature == 50.0
    assert resolved("D4RL/antmaze/medium-diverse-v1").eval_temperature == 5.0
    args = resolved("D4RL/kitchen/mixed-v2")
    assert (args.eta, args.eval_temperature) == (0.01, 3.0)
    assert resolved("cube-double-play-singletask-v0").eta == 0.01
    assert resolved("D4RL/pen/human-v2").eta == 0.1
    assert resolved("D4RL/pointmaze/umaze-v2").eta == 0.01  # outside the paper's families too (it is not AntMaze)
    assert resolved("meanflow-rl/bandit/two-hills-v0").eta == 0.01  # outside the paper's families
    # DQL's max-Q backup outside the paper's families (at eta 0.01 a one-sample backup values behaviour cloning) and
    # for AntMaze; DQL's one-sample backup for MuJoCo, Kitchen, Adroit and OGBench
    assert resolved("meanflow-rl/pendulum/swingup-mixed-v0").max_q_samples == 10
    assert resolved("D4RL/pointmaze/umaze-v2").max_q_samples == 10
    for dataset_id in (
        "mujoco/hopper/medium-v0",
        "D4RL/kitchen/mixed-v2",
        "D4RL/pen/human-v2",
        "cube-double-play-singletask-v0",
    ):
        assert resolved(dataset_id).max_q_samples == 1 and resolved(dataset_id).critic_layer_norm is False, dataset_id
    # CleanDiffuser's LayerNorm critics outside the paper's families, Diffusion-QL's in them (AntMaze too)
    assert resolved("meanflow-rl/pendulum/swingup-mixed-v0").critic_layer_norm is True
    assert resolved("D4RL/antmaze/large-play-v1").critic_layer_norm is False
    assert ofql.default_reward_transform("antmaze") == (4.0, -0.5)  # (r - 0.5) * 4
    assert ofql.default_reward_transform("pointmaze") == (1.0, -1.0)  # r - 1
    assert ofql.default_reward_transform("mujoco") == (1.0, 0.0)
    args = resolved("D4RL/antmaze/umaze-v1", eta=0.3, max_q_samples=1, eval_temperature=2.0, offline_steps=7)
    assert (args.eta, args.max_q_samples, args.eval_temperature, args.offline_steps) == (0.3, 1, 2.0, 7)
    assert ofql.resolve_dataset_id("antmaze-large") == "D4RL/antmaze/large-play-v1"
    assert ofql.resolve_dataset_id("walker2d-medium") == "mujoco/walker2d/medium-v0"


def tiny_agent(**overrides) -> tuple["ofql.Agent", dict[str, torch.Tensor]]:
    args = ofql.Args(hidden_dim=8, time_emb_dim=8, offline_steps=100, ema_start=10, **overrides)
    agent = ofql.Agent(3, 2, ofql.resolve_args(args, "x/y-v0"), torch.device("cpu"))
    batch = {
        "observations": torch.randn(16, 3),
        "actions": torch.rand(16, 2) * 2 - 1,
        "rewards": torch.randn(16, 1),
        "masks": torch.ones(16, 1),
        "next_observations": torch.randn(16, 3),
    }
    return agent, batch


def test_dql_targets_critic_polyak_every_step_policy_ema_every_k_from_ema_start():
    """DQL's agents/ql_diffusion.py: phi' <- tau phi + (1 - tau) phi' every step; theta' <- EMA every 5 from 1000
    (here from 10)."""
    agent, batch = tiny_agent(ema_every=5)
    policy0 = [p.clone() for p in agent.policy_target.parameters()]
    critic_prev = [p.clone() for p in agent.critic_target.parameters()]
    for _ in range(9):
        agent.update(batch)
        for p_tgt, p_prev, p in zip(agent.critic_target.parameters(), critic_prev, agent.critic.parameters()):
            torch.testing.assert_close(p_tgt, 0.995 * p_prev + 0.005 * p)
        critic_prev = [p.clone() for p in agent.critic_target.parameters()]
    assert all(torch.equal(p, p0) for p, p0 in zip(agent.policy_target.parameters(), policy0))
    agent.update(batch)  # step 10 >= ema_start and 10 % 5 == 0: theta' <- 0.995 theta' + 0.005 theta
    for p_tgt, p0, p in zip(agent.policy_target.parameters(), policy0, agent.policy.parameters()):
        torch.testing.assert_close(p_tgt, 0.995 * p0 + 0.005 * p)
    lr = agent.policy_sched.get_last_lr()[0]
    assert math.isclose(lr, 3e-4 * 0.5 * (1 + math.cos(math.pi * 10 / ofql.DQL_STEPS)), rel_tol=1e-9)  # DQL's cosine
    agent, batch = tiny_agent(critic_tau=None, ema_every=5)  # Alg. 1's single schedule: critics every K steps only
    critic0 = [p.clone() for p in agent.critic_target.parameters()]
    for _ in range(4):
        agent.update(batch)
    assert all(torch.equal(p, p0) for p, p0 in zip(agent.critic_target.parameters(), critic0))
    agent.update(batch)
    for p_tgt, p0, p in zip(agent.critic_target.parameters(), critic0, agent.critic.parameters()):
        torch.testing.assert_close(p_tgt, 0.995 * p0 + 0.005 * p)


def test_target_policy_ema_schedule_scales_with_the_run_length():
    """DQL's (step_start_ema, update_ema_every) = (1000, 5) at 1M steps and beyond, scaled down in shorter runs: at 4k
    steps the target policy moves from step 4, every step, instead of sitting at its initial map for 1000 steps."""

    def ema(**kw):
        args = ofql.resolve_args(ofql.Args(**kw), "x/y-v0")
        return args.ema_start, args.ema_every

    assert ema(offline_steps=1_000_000) == ema(offline_steps=2_000_000) == (1000, 5)
    assert ema(offline_steps=4000) == (4, 1)
    assert ema(offline_steps=100_000, online_steps=100_000) == (200, 1)
    assert ema(offline_steps=500_000) == (500, 2)  # 2.5 rounds to even
    assert ema(offline_steps=4000, ema_start=1000, ema_every=5) == (1000, 5)  # explicit values are kept
    assert ofql.resolve_args(ofql.Args(), "D4RL/antmaze/large-play-v1").ema_start == 1000  # the paper's 1M steps

    args = ofql.Args(hidden_dim=8, time_emb_dim=8, offline_steps=4000)
    agent = ofql.Agent(3, 2, ofql.resolve_args(args, "x/y-v0"), torch.device("cpu"))
    _, batch = tiny_agent()
    policy0 = [p.clone() for p in agent.policy_target.parameters()]
    for _ in range(4):
        agent.update(batch)
    # at DQL's unscaled (1000, 5) the target policy would still be its initialisation here
    assert not all(torch.equal(p, p0) for p, p0 in zip(agent.policy_target.parameters(), policy0))


def test_cosine_lr_anneals_over_dqls_horizon_not_a_short_run():
    """Cosine annealing to 0 over max(run, 1M steps): a 1M- or 2M-step run ends at 0 as DQL's --lr_decay; a 4k-step
    run keeps the schedule's first 0.4% (about the full LR), not a cosine compressed into its 4k steps."""

    def factor(step: int, **kw) -> float:
        args = ofql.resolve_args(ofql.Args(hidden_dim=8, time_emb_dim=8, **kw), "x/y-v0")
        agent = ofql.Agent(3, 2, args, torch.device("cpu"))
        assert agent.critic_sched.lr_lambdas[0](step) == agent.policy_sched.lr_lambdas[0](step)
        return agent.lr_factor(step)

    assert factor(4000, offline_steps=4000) > 0.9999  # compressed into the run, it was 0 here
    assert factor(4000, offline_steps=1000, online_steps=3000) > 0.9999
    assert factor(1_000_000, offline_steps=1_000_000) == pytest.approx(0.0)
    assert factor(1_000_000, offline_steps=2_000_000) == pytest.approx(0.5)
    assert factor(2_000_000, offline_steps=2_000_000) == pytest.approx(0.0)
    assert factor(4000, offline_steps=4000, lr_schedule="constant") == 1.0


def test_q_term_is_normalised_by_mean_abs_q_on_dataset_actions():
    """alpha = eta / E|Q(s, a)| over the batch's dataset actions (Sec. 3.2), not over the policy's (DQL's code)."""
    agent, batch = tiny_agent()
    torch.manual_seed(0)
    _, metrics = ofql.actor_loss(agent.policy, agent.critic, batch, agent.args)
    torch.manual_seed(0)
    t, r = ofql.sample_times(16, agent.args.flow_ratio, device="cpu")
    torch.randn_like(batch["actions"])  # the FBC noise
    a_pi = ofql.one_step_action(agent.policy, batch["observations"], torch.randn_like(batch["actions"])).clamp(-1, 1)
    q_pi, q_data = agent.critic(batch["observations"], a_pi), agent.critic(batch["observations"], batch["actions"])
    swap = bool(torch.rand(()) < 0.5)
    expected = -q_pi[int(swap)].mean() / q_data[1 - int(swap)].abs().mean()
    torch.testing.assert_close(metrics[1], expected.detach())
    assert not torch.isclose(expected, -q_pi[int(swap)].mean() / q_pi[1 - int(swap)].abs().mean())


def test_one_step_samples_cover_all_modes_of_a_multimodal_dataset():
    torch.manual_seed(0)
    policy = ofql.AverageVelocityNet(1, 2, hidden_dim=64, num_layers=3, emb_dim=16)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1500)
    obs = torch.zeros(512, 1)
    for _ in range(1500):  # BC only: the FBC loss on dataset actions with the default (t, r) sampler, no critic
        actions, _ = four_mode_data(512)
        t, r = ofql.sample_times(512, 0.5)
        loss = ofql.fbc_loss(policy, obs, actions, torch.randn(512, 2), t, r)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        samples = ofql.one_step_action(policy, torch.zeros(2000, 1), torch.randn(2000, 2)).clamp(-1, 1)
    data, centers = four_mode_data(20000)
    flow = mode_fractions(samples, centers, radius=0.2)  # 4 std
    assert (flow >= 0.10).all(), f"one-step samples per mode: {flow.tolist()}"
    # a unimodal Gaussian fit to the same data puts its mass between the modes
    gaussian = torch.distributions.MultivariateNormal(data.mean(0), torch.cov(data.T)).sample((2000,))
    assert (mode_fractions(gaussian, centers, radius=0.2) < 0.10).any()


# ----------------------------------------------------------------------------------------------------------------------
# end to end on the tiny Minari AntMaze stand-in
# ----------------------------------------------------------------------------------------------------------------------
TINY = ["--hidden-dim", "16", "--time-emb-dim", "8", "--batch-size", "8", "--eval-episodes", "1"]
TINY += ["--eval-candidates", "4", "--ema-start", "10", "--no-cuda"]


def test_cli_offline_online_eval_smoke(minari_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "antmaze-umaze", "--offline-steps", "20", "--online-steps", "20", "--eval-interval", "20"]
    run_cli(ofql, [*flags, "--log-interval", "10", "--save-model", *TINY], monkeypatch)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.iterdir()} == {"config.json", "train.jsonl", "eval.jsonl", "model.pt"}
    train = read_jsonl(run_dir / "train.jsonl")
    assert [row["step"] for row in train] == [10, 20, 30, 40]
    assert [row["phase"] for row in train] == ["offline", "offline", "online", "online"]
    for row in train:
        assert all(math.isfinite(row[k]) for k in ofql.METRICS), row
    # cosine over max(offline + online steps, DQL's 1M): at step 40 of 40, still about the full rate
    assert train[-1]["actor_lr"] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 40 / ofql.DQL_STEPS)))
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert [row["step"] for row in evals] == [20, 40]
    for row in evals:
        assert set(row) == {"step", "episodic_return", "episodic_length", "success_rate", "normalized_score"}
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["eta"], config["max_q_samples"], config["dataset_id"]) == (0.5, 10, "D4RL/antmaze/umaze-v1")
    ckpt = torch.load(run_dir / "model.pt", weights_only=False)
    assert ckpt["agent"]["step"] == 40
    online_rewards = ckpt["online_buffer"]["rewards"]
    assert len(online_rewards) == 20 and set(online_rewards.flatten().tolist()) <= {-2.0, 2.0}  # (r - 0.5) * 4


def test_ogbench_run_logs_validation_losses(ogbench_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--env-id", "cube-double-play-singletask-task2-v0", "--dataset-dir", str(ogbench_dir)]
    run_cli(ofql, [*flags, "--offline-steps", "10", "--log-interval", "5", "--eval-episodes", "0", *TINY], monkeypatch)
    (run_dir,) = (tmp_path / "runs").iterdir()
    train = read_jsonl(run_dir / "train.jsonl")
    assert [row["step"] for row in train] == [5, 10]
    for row in train:
        assert all(math.isfinite(row[k]) and math.isfinite(row[f"val/{k}"]) for k in ofql.METRICS), row


def test_resume_reproduces_an_uninterrupted_run(minari_root, tmp_path, monkeypatch):
    """Run 2N steps straight (N offline + N online), keeping a copy of the step-N checkpoint; resume from it for N more
    steps: every parameter and optimiser state must match exactly."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    monkeypatch.chdir(tmp_path)
    n = 10
    step_n = tmp_path / "step_n"
    step_n.mkdir()
    save = ofql.save_checkpoint

    def save_and_keep_step_n(path, step, *rest, **state):
        save(path, step, *rest, **state)
        if step == n:
            shutil.copy(path, step_n / "model.pt")

    monkeypatch.setattr(ofql, "save_checkpoint", save_and_keep_step_n)
    cli = ["--env-id", "antmaze-umaze", "--offline-steps", str(n), "--online-steps", str(n), "--eval-interval",
           str(n), "--log-interval", "5", "--save-model", "--ema-every", "2", "--ema-start", "4", *TINY]  # fmt: skip
    ofql.main(ofql.tyro.cli(ofql.Args, args=cli))
    (straight,) = (tmp_path / "runs").iterdir()
    ofql.main(ofql.tyro.cli(ofql.Args, args=[*cli, "--resume", str(step_n / "model.pt")]))

    a = torch.load(straight / "model.pt", weights_only=False)
    b = torch.load(step_n / "model.pt", weights_only=False)
    assert a["agent"]["step"] == b["agent"]["step"] == 2 * n
    for name in ("policy", "policy_target", "critic", "critic_target"):
        for key, value in a["agent"][name].items():
            assert torch.equal(value, b["agent"][name][key]), (name, key)
    for name in ("policy_opt", "critic_opt"):
        for i, state in a["agent"][name]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["agent"][name]["state"][i][key]), (name, i, key)
    for key, value in a["online_buffer"].items():
        assert torch.equal(value, b["online_buffer"][key])
    assert len(a["online_buffer"]["rewards"]) == n
    # the resumed run wrote its rows for steps N+1..2N next to the checkpoint, with the same losses
    resumed_rows, straight_rows = read_jsonl(step_n / "train.jsonl"), read_jsonl(straight / "train.jsonl")
    assert [row["step"] for row in resumed_rows] == [15, 20]
    assert all(resumed_rows[-1][k] == straight_rows[-1][k] for k in ofql.METRICS)


def test_bad_input_gives_a_clear_error_without_traceback(minari_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    proc = run_main(SCRIPT, ["--env-id", "antmaze-huge"], monkeypatch, capsys)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "unknown --env-id 'antmaze-huge'" in proc.stderr and "antmaze-large-diverse" in proc.stderr
    assert "halfcheetah-medium" in proc.stderr
    proc = run_script(
        [SCRIPT, "--env-id", "antmaze-large-diverse", "--no-cuda"],
        cwd=tmp_path,
        env={"MINARI_DATASETS_PATH": str(minari_root)},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "'D4RL/antmaze/large-diverse-v1' is not in" in proc.stderr and "README.md, section 'Datasets'" in proc.stderr
    assert not (Path(tmp_path) / "runs").exists()
