"""Tests of algos/som.py: the iDEM score target, the PF-ODE velocity, the MeanFlow JVP and loss, and the CLI contract
(resume, --save-dataset, errors). Spec: shared/specs/som.md.

Gaussian reference case used throughout: with Q(a) = -|a - c|^2 / 2 and temperature T (inv_temp = 1/T) the Boltzmann
target is p_0 = N(c, T I); under the VP kernel its marginals are p_t = N(mu_t c, s_t^2 I), s_t^2 = mu_t^2 T + sigma_t^2,
with score -(a - mu_t c) / s_t^2. The PF-ODE maps quantiles: Phi_{t->r}(a) = mu_r c + (s_r / s_t)(a - mu_t c).
"""

import json
import shutil

import minari
import numpy as np
import pytest
import torch
from conftest import ROOT, import_algo, read_jsonl, run_cli, run_main

som = import_algo("som")
SCRIPT = str(ROOT / "algos" / "som.py")
C, TEMP = torch.tensor([0.3, -0.5], dtype=torch.float64), 0.5
TINY = dict(batch_size=16, num_mc_samples=4, num_samples=4, hidden_dims=(16, 16), critic_hidden_dims=(16, 16))
TINY_FLAGS = ["--batch-size", "16", "--num-mc-samples", "4", "--num-samples", "4", "--hidden-dims", "16", "16",
              "--critic-hidden-dims", "16", "16"]  # fmt: skip


def quadratic_q(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return -0.5 * (actions - C).pow(2).sum(-1)


def gaussian_marginal(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """beta(t), mu_t, sigma_t (spec defaults) and s_t of the noised Gaussian Boltzmann target."""
    beta, mu, sigma = som.vp_schedule(t, 0.1, 20.0)
    return beta, mu, sigma, torch.sqrt(mu**2 * TEMP + sigma**2)


def test_vp_schedule_endpoints():
    beta, mu, sigma = som.vp_schedule(torch.tensor([0.0, 1e-3, 1.0], dtype=torch.float64), 0.1, 20.0)
    torch.testing.assert_close(beta, torch.tensor([0.1, 0.1199, 20.0], dtype=torch.float64))
    torch.testing.assert_close(mu**2 + sigma**2, torch.ones(3, dtype=torch.float64))
    assert mu[0] == 1 and sigma[0] == 0 and abs(mu[2].item() - np.exp(-0.5 * (0.1 + 9.95))) < 1e-12  # ≈ 0.0066


def test_score_estimators_match_the_closed_form_gaussian_score():
    torch.manual_seed(0)
    batch, obs = 64, torch.zeros(64, 1, dtype=torch.float64)
    # idem: the proposal std sigma_t / mu_t is 0.17, 0.52, 1.2 at these t (and 150 at t=1): the variance of the
    # estimate grows fast with t (at t = 0.6 even K = 10^5 leaves ~25% error)
    for t in (0.05, 0.15, 0.3):
        _, mu, sigma, s = gaussian_marginal(torch.full((batch, 1), t, dtype=torch.float64))
        a_t = mu * C + s * torch.randn(batch, 2, dtype=torch.float64)
        score, _ = som.boltzmann_score(quadratic_q, obs, a_t, mu, sigma, 20_000, 1 / TEMP, "none", "idem")
        exact = -(a_t - mu * C) / s**2
        rel_err = ((score - exact).norm() / exact.norm()).item()
        assert rel_err < 0.05, f"t={t}: relative error {rel_err:.3f} of the K=20000 estimate"
    # box: with a target well inside the box (std 0.14) the truncation is immaterial, and the Tweedie estimate holds
    # up to t = 1 (where the proposals are uniform on the box); checked on the velocity, which cancels at large t
    temp = 0.02
    for t in (0.05, 0.3, 0.6, 0.9, 1.0):
        beta, mu, sigma = som.vp_schedule(torch.full((batch, 1), t, dtype=torch.float64), 0.1, 20.0)
        s = torch.sqrt(mu**2 * temp + sigma**2)
        a_t = mu * C + s * torch.randn(batch, 2, dtype=torch.float64)
        score, _ = som.boltzmann_score(quadratic_q, obs, a_t, mu, sigma, 20_000, 1 / temp, "none", "box")
        v, exact = (som.pf_ode_velocity(a_t, x, beta, 1.0, "none") for x in (score, -(a_t - mu * C) / s**2))
        rel_err = ((v - exact).norm() / exact.norm()).item()
        assert rel_err < 0.05, f"t={t}: relative error {rel_err:.3f} of the velocity from the K=20000 box estimate"
    # block standardisation with constant statistics is a temperature: 1/T -> 1/(T std(Q block))
    for estimator in ("box", "idem"):
        torch.manual_seed(1)
        block, q_std = som.boltzmann_score(quadratic_q, obs, a_t, mu, sigma, 100, 1 / TEMP, "block", estimator)
        torch.manual_seed(1)
        plain, _ = som.boltzmann_score(
            quadratic_q, obs, a_t, mu, sigma, 100, 1 / (TEMP * (q_std + 1e-6)), "none", estimator
        )
        torch.testing.assert_close(block, plain)


def test_truncated_normal_stays_in_the_box_with_the_right_mean():
    torch.manual_seed(0)
    mean = torch.tensor([[0.0, 0.9, -3.0, 150.0, 1.0 + 50 * 0.01]], dtype=torch.float64)
    std = torch.tensor([[0.5, 0.02, 1.0, 150.0, 0.01]], dtype=torch.float64)  # 0.9: the edge 5 std away
    samples, mean_q = som.truncated_normal(mean, std, 200_000)
    assert samples.abs().max() <= 1 and torch.isfinite(mean_q).all()
    torch.testing.assert_close(samples.mean(0), mean_q, atol=5e-3, rtol=0)
    torch.testing.assert_close(mean_q[0, :2], torch.tensor([0.0, 0.9], dtype=torch.float64), atol=1e-6, rtol=0)
    assert 0.99 < mean_q[0, 4] <= 1  # 50 std beyond the edge: the edge
    assert abs(mean_q[0, 3].item()) < 0.01  # std 150: uniform on the box, mean ~0 (slightly toward +1)


def test_shipped_schedule_ends_at_the_prior_the_policy_acts_from():
    """The one-step policy acts from e ~ N(0, I), so the forward process must end there: with the exact flow of a
    Gaussian target, the one-step map of N(0, I) at the default schedule must reproduce the target (it was pulled
    20% toward the centre of the box at beta_max = 5)."""
    args = som.Args()
    temp = TEMP
    _, mu_1, sigma_1 = som.vp_schedule(torch.ones(1, dtype=torch.float64), args.beta_min, args.beta_max)
    s_1 = torch.sqrt(mu_1**2 * temp + sigma_1**2)
    e = torch.randn(100_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = C + (temp**0.5 / s_1) * (e - mu_1 * C)  # Phi_{1->0}(e), the exact one-step map
    torch.testing.assert_close(a.mean(0), C, atol=0.01, rtol=0)
    torch.testing.assert_close(a.var(0), torch.full((2,), temp, dtype=torch.float64), atol=0, rtol=0.02)


def integrate_pf_ode(score_norm: str, score_scale: float, n: int = 20_000, steps: int = 1000) -> torch.Tensor:
    """Euler-integrate v = pf_ode_velocity(exact Gaussian score) from p_1 (t=1) to t=0; returns the samples."""
    torch.manual_seed(0)
    _, mu, _, s = gaussian_marginal(torch.ones(1, 1, dtype=torch.float64))
    a = mu * C + s * torch.randn(n, 2, dtype=torch.float64)  # p_1, ≈ N(0, I)
    for i in range(steps, 0, -1):
        beta, mu, _, s = gaussian_marginal(torch.full((1, 1), i / steps, dtype=torch.float64))
        a = a - som.pf_ode_velocity(a, -(a - mu * C) / s**2, beta, score_scale, score_norm) / steps
    return a


def test_pf_ode_velocity_carries_the_noised_target_back_to_the_boltzmann_target():
    a = integrate_pf_ode("none", 1.0)  # the default target: the plain PF-ODE
    torch.testing.assert_close(a.mean(0), C, atol=0.02, rtol=0)
    torch.testing.assert_close(a.var(0), torch.full((2,), TEMP, dtype=torch.float64), atol=0, rtol=0.04)


def test_spec_unit_score_target_collapses_onto_the_mode():
    """The spec's target v = -beta/2 (a + 25 score/|score|) keeps only the score's direction, so the temperature drops
    out: even with the exact score its flow sends every sample to the mode c, not to N(c, T I) (why the default is the
    plain PF-ODE; algos/README.md, SOM)."""
    a = integrate_pf_ode("unit", 25.0, n=2000)
    torch.testing.assert_close(a.mean(0), C, atol=1e-3, rtol=0)
    assert a.var(0).max() < 1e-4 * TEMP


def exact_average_velocity(obs, a, r, t):
    """u*(a_t, r, t) = (a_t - Phi_{t->r}(a_t)) / (t - r) for the Gaussian target (module docstring)."""
    _, mu_t, _, s_t = gaussian_marginal(t)
    _, mu_r, _, s_r = gaussian_marginal(r)
    return (a - mu_r * C - s_r / s_t * (a - mu_t * C)) / (t - r)


def test_exact_average_velocity_is_a_fixed_point_of_the_meanflow_loss():
    torch.manual_seed(0)
    n = 512
    obs = torch.zeros(n, 1, dtype=torch.float64)
    t = torch.rand(n, 1, dtype=torch.float64) * 0.998 + 1e-3
    r = torch.rand(n, 1, dtype=torch.float64) * t * 0.99  # r < t: u* is 0/0 at r = t
    beta, mu, _, s = gaussian_marginal(t)
    a_t = mu * C + s * torch.randn(n, 2, dtype=torch.float64)
    v = som.pf_ode_velocity(a_t, -(a_t - mu * C) / s**2, beta, score_scale=1.0, score_norm="none")
    _, mse = som.meanflow_loss(exact_average_velocity, obs, a_t, r, t, v)
    assert mse < 1e-18

    def perturbed(obs, a, r, t):
        return exact_average_velocity(obs, a, r, t) + 0.1 * torch.sin(3 * a) * t

    assert som.meanflow_loss(perturbed, obs, a_t, r, t, v)[1] > 1e-4
    # one step a = e - u*(e, 0, 1) lands on the Boltzmann target N(c, T)
    e = torch.randn(20_000, 2, dtype=torch.float64)
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    a0 = e - exact_average_velocity(None, e, zero, one)
    torch.testing.assert_close(a0.mean(0), C, atol=0.03, rtol=0)
    torch.testing.assert_close(a0.var(0), torch.full((2,), TEMP, dtype=torch.float64), atol=0, rtol=0.05)


def perturbed_actor(obs_dim: int = 5, action_dim: int = 3) -> som.MeanFlowActor:
    torch.manual_seed(0)
    actor = som.MeanFlowActor(obs_dim, action_dim, hidden_dims=(32, 32)).double()
    for p in actor.parameters():  # leave the zero-initialised head, so that every path is exercised
        p.data.add_(0.2 * torch.randn_like(p))
    return actor


def test_jvp_total_derivative_matches_central_finite_differences():
    actor = perturbed_actor()
    obs, a, v = (torch.randn(6, d, dtype=torch.float64) for d in (5, 3, 3))
    t = torch.rand(6, 1, dtype=torch.float64)
    r = t * torch.rand(6, 1, dtype=torch.float64)
    u, du = som.u_and_total_derivative(actor, obs, a, r, t, v)
    h = 1e-6  # d/dh u(s, a + h v, r, t + h) at h = 0, r fixed
    fd = (actor(obs, a + h * v, r, t + h) - actor(obs, a - h * v, r, t - h)) / (2 * h)
    torch.testing.assert_close(u, actor(obs, a, r, t))
    assert du.abs().max() > 1e-2
    torch.testing.assert_close(du, fd, rtol=1e-6, atol=1e-8)


def test_actor_is_zero_at_init_and_actions_are_squashed():
    actor = som.MeanFlowActor(4, 2, hidden_dims=(16, 16))
    obs, e = torch.randn(7, 4), 3 * torch.randn(7, 2)
    assert torch.equal(actor(obs, e, torch.zeros(7, 1), torch.rand(7, 1)), torch.zeros(7, 2))
    torch.testing.assert_close(som.one_step_action(actor, obs, e, "clip"), e.clamp(-1, 1))
    torch.testing.assert_close(som.one_step_action(actor, obs, e, "tanh"), torch.tanh(e))


def test_best_of_n_returns_the_candidate_with_the_highest_min_q():
    class TwinStub(torch.nn.Module):  # Q1 = sum(a), Q2 = -sum(a): min(Q1, Q2) = -|sum(a)|
        def forward(self, obs, actions):
            return torch.stack([actions.sum(-1), -actions.sum(-1)])

    actor = perturbed_actor(4, 3).float()
    obs = torch.randn(5, 4)
    torch.manual_seed(1)
    chosen = som.best_of_n(actor, TwinStub(), obs, n=16)
    torch.manual_seed(1)  # the same noise, all candidates
    noise = torch.randn(5 * 16, 3)
    candidates = som.one_step_action(actor, obs.repeat_interleave(16, 0), noise).view(5, 16, 3)
    best = candidates[torch.arange(5), candidates.sum(-1).abs().argmin(1)]
    torch.testing.assert_close(chosen, best)


def test_actor_lr_schedule_and_alpha_e_tuning():
    agent = som.Agent(3, 2, som.Args(alpha_e_lr=0.05, **TINY), torch.device("cpu"))
    lr = {s: 3e-4 * agent.actor_lr_factor(s) for s in (0, 25_000, 50_000, 75_000, 1_000_000)}
    for step, want in ((0, 3e-4), (25_000, 3e-4), (50_000, 1.65e-4), (75_000, 3e-5), (1_000_000, 3e-5)):
        assert abs(lr[step] - want) < 1e-9, (step, lr[step])
    # alpha_e settles where the exploration entropy |A|/2 log(2 pi e (0.1 alpha_e)^2) equals -0.9 |A|
    equilibrium = 10 * np.exp(-0.9) / np.sqrt(2 * np.pi * np.e)  # ≈ 0.984
    history = []
    for _ in range(300):
        agent.update_alpha_e()
        history.append(agent.log_alpha_e.exp().item())
    assert history[0] < 5.0 and history[30] < history[0]
    assert abs(np.mean(history[-50:]) - equilibrium) < 0.1 * equilibrium
    args = som.Args(temperature_mode="dpmd", alpha_inv=2.0, **TINY)
    agent = som.Agent(3, 2, args, torch.device("cpu"))
    with torch.no_grad():
        agent.log_alpha_e.fill_(np.log(2.5))
    assert abs(float(agent.inv_temp()) - 2.0 * 5.0 / 2.5) < 1e-5


def test_a_compiled_run_never_trains_at_actor_lr_zero():
    """The compiled Adam divides by the learning rate (a zero gradient at lr 0 gives NaN): under --compile the actor's
    schedule to --actor-lr-end 0 stops at 1e-8 of the peak; eager runs reach 0."""
    for compile_, floor in ((False, 0.0), (True, 1e-8)):
        agent = som.Agent(3, 2, som.Args(actor_lr_end=0.0, compile=compile_, **TINY), torch.device("cpu"))
        assert agent.actor_lr_factor(1_000_000) == floor and agent.actor_lr_factor(50_000) == pytest.approx(0.5)


def test_cli_smoke_on_inverted_pendulum(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(som, ["--env-id", "InvertedPendulum-v5", "--total-timesteps", "300", "--learning-starts", "100",
                  "--eval-interval", "150", "--eval-episodes", "1", "--log-interval", "100", "--save-model",
                  "--no-cuda", "--alpha-e-interval", "20", *TINY_FLAGS], monkeypatch)  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_id"] == "InvertedPendulum-v5" and config["action_dim"] == 1 and config["num_mc_samples"] == 4
    train = read_jsonl(run_dir / "train.jsonl")
    assert [row["step"] for row in train] == [100, 200, 300]
    assert [row["updates"] for row in train] == [1, 101, 201]
    for row in train[1:]:
        assert all(np.isfinite(row[k]) for k in som.METRICS), row
        assert row["alpha_e"] < 5.0 and row["score_norm"] > 0 and row["episodic_return"] > 0
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert [row["step"] for row in evals] == [150, 300]
    assert all(row["episodic_return"] > 0 and row["episodic_length"] >= 1 for row in evals)
    assert torch.load(run_dir / "model.pt", weights_only=False)["loop"]["global_step"] == 300


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    """N steps + resume + N steps == 2N steps: parameters, optimisers, alpha_e, buffer and evaluation. The mid
    checkpoint is captured when save_checkpoint writes it (model.pt is overwritten at every evaluation)."""
    monkeypatch.chdir(tmp_path)
    common = dict(env_id="InvertedPendulum-v5", total_timesteps=90, learning_starts=25, eval_interval=45,
                  eval_episodes=1, log_interval=15, save_model=True, cuda=False, alpha_e_interval=4)  # fmt: skip
    common.update(TINY)
    mid = tmp_path / "mid"
    mid.mkdir()
    save = som.save_checkpoint

    def save_and_copy(path, step, *rest, **state):
        save(path, step, *rest, **state)
        if step == 45:
            shutil.copy(path, mid / "model.pt")

    monkeypatch.setattr(som, "save_checkpoint", save_and_copy)
    som.main(som.Args(exp_name="full", **common))
    ckpt = torch.load(mid / "model.pt", weights_only=False)
    assert ckpt["loop"]["episode_length"] > 0  # the checkpoint interrupts an episode: the env state is restored
    assert ckpt["agent"]["step"] % 2 == 1  # ... and sits between a critic step and the delayed actor step
    som.main(som.Args(exp_name="full", resume=str(mid / "model.pt"), **common))

    (full_dir,) = (tmp_path / "runs").iterdir()
    full = torch.load(full_dir / "model.pt", weights_only=False)
    resumed = torch.load(mid / "model.pt", weights_only=False)

    def assert_equal(x, y, where="") -> None:
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                assert_equal(x[k], y[k], f"{where}/{k}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), where
        elif isinstance(x, (list, tuple)):
            for i, (xi, yi) in enumerate(zip(x, y)):
                assert_equal(xi, yi, f"{where}[{i}]")
        else:
            assert np.array_equal(x, y), where

    assert_equal(full["agent"], resumed["agent"], "agent")
    assert_equal(full["buffer"], resumed["buffer"], "buffer")
    assert_equal(full["loop"], resumed["loop"], "loop")
    assert_equal(full["rng"]["torch"], resumed["rng"]["torch"], "torch rng")
    assert read_jsonl(full_dir / "eval.jsonl")[-1] == read_jsonl(mid / "eval.jsonl")[-1]
    assert [row["step"] for row in read_jsonl(mid / "train.jsonl")] == [60, 75, 90]


def test_save_dataset_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    dataset_id = "test/som-pendulum-v0"
    som.main(
        som.Args(
            env_id="InvertedPendulum-v5",
            total_timesteps=150,
            learning_starts=100,
            eval_interval=150,
            eval_episodes=1,
            log_interval=50,
            cuda=False,
            save_dataset=dataset_id,
            **TINY,
        )  # fmt: skip
    )
    ds = minari.load_dataset(dataset_id)
    assert ds.total_steps == 150 and ds.total_episodes > 1
    lengths = []
    for ep in ds.iterate_episodes():
        steps = len(ep.actions)
        lengths.append(steps)
        assert ep.observations.shape == (steps + 1, 4) and ep.actions.shape == (steps, 1)
        assert np.all(np.abs(ep.actions) <= 3.0) and np.abs(ep.actions).max() > 1.0  # env units, not [-1, 1]
        assert np.array_equal(ep.rewards, 1.0 - ep.terminations)  # InvertedPendulum-v5: 1 per step, 0 when it falls
        # every episode ends exactly once: terminated (pole fell) or truncated (timeout, or the run ended)
        assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
        assert ep.terminations[-1] != ep.truncations[-1]
    assert sum(lengths) == 150
    env = ds.recover_environment()
    assert env.spec.id == "InvertedPendulum-v5"
    env.close()
    # the offline scripts read it: transitions with masks = 1 - terminations, actions mapped from [-3, 3] to [-1, 1]
    task = import_algo("meanflowql").load_dataset(dataset_id, "", "observe", 1.0, 0.0)
    n_terminal = sum(bool(ep.terminations[-1]) for ep in ds.iterate_episodes())
    assert len(task.data["rewards"]) == 150 and task.data["masks"].sum() == 150 - n_terminal
    actions = np.concatenate([ep.actions for ep in ds.iterate_episodes()])
    assert np.allclose(task.data["actions"], np.clip(actions / 3, -1 + 1e-5, 1 - 1e-5), atol=1e-6)
    assert np.allclose(task.env_action(task.data["actions"]), actions, atol=1e-4)  # back to the env's units
    # the same id again is refused before training
    with pytest.raises(som.ConfigError, match="already exists"):
        som.check_dataset_id(dataset_id)
    # two runs given the same id both pass that check: the second one's run is saved before the dataset is written,
    # and the finished run writes its dataset under another id from its checkpoint
    monkeypatch.setattr(som, "check_dataset_id", lambda dataset_id: None)
    args = dict(env_id="InvertedPendulum-v5", total_timesteps=30, learning_starts=20, eval_episodes=0, cuda=False)
    with pytest.raises(som.ConfigError, match=r"--resume .*model\.pt --save-dataset ANOTHER_ID"):
        som.main(som.Args(**args, **TINY, save_dataset=dataset_id, exp_name="clash"))
    (checkpoint,) = (tmp_path / "runs").glob("*__clash__*/model.pt")
    som.main(som.Args(resume=str(checkpoint), save_dataset="test/som-pendulum-v1"))
    assert minari.load_dataset("test/som-pendulum-v1").total_steps == 30


def test_bad_input_gives_a_clear_error_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    proc = run_main(SCRIPT, ["--env-id", "NoSuchEnv-v0", "--total-timesteps", "10"], monkeypatch, capsys)
    assert proc.returncode == 1
    assert "error: cannot make --env-id 'NoSuchEnv-v0'" in proc.stderr and "HalfCheetah-v4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
    with pytest.raises(som.ConfigError, match="Malformed"):
        som.check_dataset_id("not a dataset id")
    with pytest.raises(som.ConfigError, match="Box"):
        som.make_env("CartPole-v1")  # discrete actions
