"""Tests of algos/mvp.py (spec: mvp.md): the mean-flow maths in MVP's time convention (noise at t=0, action at t=1),
chunked n-step targets, generate-and-select, and end-to-end runs on a tiny local OGBench cube-double dataset."""

import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, four_mode_data, import_algo, mode_fractions, read_jsonl, run_cli, run_main

mvp = import_algo("mvp")
SCRIPT = str(ROOT / "algos" / "mvp.py")
TINY = dict(actor_hidden_dim=32, critic_hidden_dim=32, num_samples=4, batch_size=8)  # tiny networks for CLI runs


def perturbed_field(time_embedding: str = "raw", obs_dim: int = 5, chunk_dim: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    actor = mvp.MeanVelocityField(obs_dim, chunk_dim, 32, 2, time_embedding).double()
    for p in actor.parameters():  # non-zero biases, so that every path of the network is exercised
        p.data.add_(0.2 * torch.randn_like(p))
    return actor


@pytest.mark.parametrize("time_embedding", ["raw", "sinusoidal"])
def test_jvp_total_derivative_matches_central_finite_differences(time_embedding):
    actor = perturbed_field(time_embedding)
    obs, a, v = (torch.randn(8, n, dtype=torch.float64) for n in (5, 6, 6))
    t, r = torch.rand(8, 1, dtype=torch.float64).sort(0).values, torch.rand(8, 1, dtype=torch.float64)
    u, du_dt = mvp.u_and_total_derivative(actor, obs, a, t, r, v)
    h = 1e-6  # d/dh u(a + h v, t + h, r, s) at h = 0: tangents (v, 1, 0) on (a, t, r)
    fd = (actor(obs, a + h * v, t + h, r) - actor(obs, a - h * v, t - h, r)) / (2 * h)
    torch.testing.assert_close(u, actor(obs, a, t, r))
    assert du_dt.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(du_dt, fd, rtol=1e-6, atol=1e-8)
    fd_r = (actor(obs, a, t, r + h) - actor(obs, a, t, r - h)) / (2 * h)  # r must get no tangent
    assert not torch.allclose(du_dt, fd + fd_r, rtol=1e-3, atol=1e-5)


def test_ivc_is_flow_matching_on_the_diagonal_and_mf_reduces_to_it_at_r_equal_t():
    actor = perturbed_field()
    obs, actions, noise = (torch.randn(16, n, dtype=torch.float64) for n in (5, 6, 6))
    t = torch.rand(16, 1, dtype=torch.float64)
    valid = torch.ones(16, 3, dtype=torch.float64)
    valid[:4, 2] = 0  # chunks (h = 3, action_dim = 2) whose last position is past an episode end
    a_t = (1 - t) * noise + t * actions  # noise at t = 0, action at t = 1
    err = (actor(obs, a_t, t, t) - (actions - noise)).pow(2).view(16, 3, 2) * valid[:, :, None]
    flow_matching = err.flatten(1).mean(1).mean()
    ivc = mvp.ivc_loss(actor, obs, actions, noise, t, valid)
    torch.testing.assert_close(ivc, flow_matching, rtol=1e-12, atol=0)
    torch.testing.assert_close(mvp.meanflow_loss(actor, obs, actions, noise, t, t, valid), flow_matching)
    r = (t + 0.3).clamp(max=1)  # off the diagonal L_MF is a different loss
    assert not torch.isclose(mvp.meanflow_loss(actor, obs, actions, noise, t, r, valid), flow_matching, rtol=1e-3)
    assert mvp.ivc_loss(actor, obs, actions, noise, t, torch.ones_like(valid)) > ivc  # the masked entries count


def test_analytic_single_point_solution_is_a_fixed_point_and_ivc_removes_the_c_over_r_minus_t_family():
    torch.manual_seed(0)
    c = torch.rand(1, 3, dtype=torch.float64) * 2 - 1  # the single data point
    obs, noise = torch.zeros(512, 1, dtype=torch.float64), torch.randn(512, 3, dtype=torch.float64)
    t = torch.rand(512, 1, dtype=torch.float64) * 0.5
    r = t + 0.1 + 0.4 * torch.rand(512, 1, dtype=torch.float64)  # t < r <= 1
    actions, valid = c.expand(512, 3), torch.ones(512, 1, dtype=torch.float64)

    def u_star(
        obs, a, t, r
    ):  # the flow to a point: a(tau) = c + (a - c)(1 - tau)/(1 - t), mean velocity (c - a)/(1 - t)
        return (c - a) / (1 - t) + 0 * r

    def u_perturbed(obs, a, t, r):
        return u_star(obs, a, t, r) + 0.1 * torch.sin(3 * a)

    def u_c_family(obs, a, t, r):  # u* + C(r)/(r - t) also satisfies the identity u = v + (r - t) du/dt (Theorem 2)
        return u_star(obs, a, t, r) + 0.1 * (1 + r) / (r - t)

    assert mvp.meanflow_loss(u_star, obs, actions, noise, t, r, valid) < 1e-20
    assert mvp.ivc_loss(u_star, obs, actions, noise, t, valid) < 1e-20
    assert mvp.meanflow_loss(u_perturbed, obs, actions, noise, t, r, valid) > 1e-3
    assert mvp.ivc_loss(u_perturbed, obs, actions, noise, t, valid) > 1e-3
    assert mvp.meanflow_loss(u_c_family, obs, actions, noise, t, r, valid) < 1e-20  # L_MF cannot see the error ...
    assert not torch.isfinite(mvp.ivc_loss(u_c_family, obs, actions, noise, t, valid))  # ... L_IVC rejects it
    # the one-step action e + u*(e, 0, 1) is the data point
    zero = torch.zeros(512, 1, dtype=torch.float64)
    torch.testing.assert_close(noise + u_star(obs, noise, zero, zero + 1), actions)


def one_step_samples_after_bc(ivc_coef: float, steps: int = 800) -> tuple[torch.Tensor, torch.Tensor]:
    """Train u on a 4-mode 2-D action distribution with L_MF + ivc_coef L_IVC (the default samplers), then draw
    one-step samples e + u(e, 0, 1)."""
    torch.manual_seed(0)
    actor = mvp.MeanVelocityField(1, 2, 64, 3)
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    args, obs, valid = mvp.Args(), torch.zeros(256, 1), torch.ones(256, 1)
    for _ in range(steps):
        actions, centers = four_mode_data(256)
        t, r = mvp.sample_t_r(256, args, "cpu")
        loss = mvp.meanflow_loss(actor, obs, actions, torch.randn(256, 2), t, r, valid) + ivc_coef * mvp.ivc_loss(
            actor, obs, actions, torch.randn(256, 2), mvp.sample_time(256, args, "cpu"), valid
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        noise, zero = torch.randn(4000, 2), torch.zeros(4000, 1)
        return (noise + actor(torch.zeros(4000, 1), noise, zero, zero + 1)).clamp(-1, 1), centers


def test_one_step_samples_reach_every_mode_only_with_the_ivc_term():
    fractions = {}
    for ivc_coef in (1.0, 0.0):
        samples, centers = one_step_samples_after_bc(ivc_coef)
        fractions[ivc_coef] = mode_fractions(samples, centers, radius=0.2)  # within 4 std of a mode
    assert fractions[1.0].sum() > 0.4 and (fractions[1.0] > 0.08).all(), fractions[1.0].tolist()
    # L_MF alone leaves the C(a, r)/(r - t) family free (Theorem 2): the one-step samples land between the modes
    assert fractions[0.0].sum() < 0.5 * fractions[1.0].sum(), fractions[0.0].tolist()


def hand_buffer() -> "mvp.ReplayBuffer":
    """Two episodes: rows 0-2 end in a termination (mask 0 at row 2), rows 3-6 end in a timeout (mask 1)."""
    rows = np.arange(7, dtype=np.float32)
    data = {
        "observations": rows[:, None],
        "next_observations": rows[:, None] + 0.5,
        "actions": np.stack([10 * rows, 10 * rows + 1], 1),
        "rewards": rows + 1,
        "masks": np.array([1, 1, 0, 1, 1, 1, 1], np.float32),
        "dones": np.array([0, 0, 1, 0, 0, 0, 1], np.float32),
    }
    return mvp.ReplayBuffer(data, capacity=10, device=torch.device("cpu"))


def test_chunked_n_step_target_by_hand_with_episode_ends():
    batch = hand_buffer().chunks(torch.tensor([0, 1, 2, 4]), horizon=3)
    torch.testing.assert_close(batch["observations"], torch.tensor([[0.0], [1.0], [2.0], [4.0]]))
    torch.testing.assert_close(batch["next_observations"], torch.tensor([[2.5], [3.5], [4.5], [6.5]]))
    assert batch["actions"][0].tolist() == [0, 1, 10, 11, 20, 21]  # [B, h * action_dim], time-major
    # valid_i = 1 until an episode has ended before position i; a done at the last position keeps the chunk
    assert batch["valid"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    y = mvp.chunk_target(batch["rewards"], batch["masks"], torch.full((4,), 8.0), discount=0.5)
    assert y[0].item() == 1 + 0.5 * 2 + 0.25 * 3  # termination inside the chunk: no bootstrap
    assert y[3].item() == 5 + 0.5 * 6 + 0.25 * 7 + 0.125 * 8  # timeout at the last step bootstraps from s_{+h}
    # rows 1 and 2 cross the episode end at row 2: dropped from the critic loss by valid[:, -1]
    assert batch["valid"][:, -1].tolist() == [1, 0, 0, 1]
    # h = 1 is the one-step TD target r + gamma m Q'
    one = hand_buffer().chunks(torch.tensor([2, 5]), horizon=1)
    assert one["valid"].tolist() == [[1], [1]] and one["actions"].shape == (2, 2)
    assert mvp.chunk_target(one["rewards"], one["masks"], torch.tensor([8.0, 8.0]), 0.5).tolist() == [3, 10]


def test_sample_never_reads_past_the_buffer_end():
    buffer = hand_buffer()
    batch = buffer.sample(2000, horizon=3)
    assert batch["observations"].max() == 4  # start rows 0..size-h
    buffer.add(observations=[7], next_observations=[7.5], actions=[70, 71], rewards=8, masks=1, dones=0)
    assert buffer.sample(2000, horizon=3)["observations"].max() == 5


def test_gen_select_returns_the_candidate_with_the_highest_ensemble_mean_q():
    class HandCritic(torch.nn.Module):  # two members that disagree: the selection must use their mean
        def forward(self, obs, actions):
            return torch.stack([actions.sum(-1) + obs[:, 0], -3 * actions[:, 0]])

    actor = perturbed_field(obs_dim=4, chunk_dim=6).float()
    obs = torch.randn(5, 4)
    torch.manual_seed(1)
    chosen = mvp.gen_select(actor, HandCritic(), obs, num_samples=16)
    torch.manual_seed(1)  # the same noise, all candidates
    noise = torch.randn(5 * 16, 6)
    zero = torch.zeros(5 * 16, 1)
    candidates = (noise + actor(obs.repeat_interleave(16, 0), noise, zero, zero + 1)).clamp(-1, 1).view(5, 16, 6)
    mean_q = (candidates.sum(-1) - 3 * candidates[..., 0]) / 2
    best = candidates[torch.arange(5), mean_q.argmax(1)]
    torch.testing.assert_close(chosen, best)
    assert not torch.equal(best, candidates[torch.arange(5), candidates.sum(-1).argmax(1)])  # members disagree
    assert chosen.abs().max() <= 1


def tiny_agent(horizon: int = 5, **overrides) -> tuple["mvp.Agent", dict]:
    args = mvp.Args(**{**TINY, "horizon": horizon, **overrides})
    torch.manual_seed(0)
    agent = mvp.Agent(4, 2, args, torch.device("cpu"))
    n, rng = 40, np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": -np.ones(n, np.float32),
        "masks": np.ones(n, np.float32),
        "dones": (np.arange(n) % 10 == 9).astype(np.float32),
    }
    return agent, mvp.ReplayBuffer(data, n, torch.device("cpu")).sample(8, horizon)


def test_no_q_gradient_reaches_the_generator():
    agent, batch = tiny_agent()
    grads = []
    for perturb in (False, True):
        if perturb:  # another critic selects other candidates and changes y, but must not change the actor's gradient
            for p in [*agent.critic.parameters(), *agent.critic_target.parameters()]:
                p.data.add_(torch.randn_like(p))
        torch.manual_seed(3)
        total, _ = mvp.compute_losses(agent.actor, agent.critic, agent.critic_target, batch, agent.args)
        grads.append(torch.autograd.grad(total, [*agent.actor.parameters(), *agent.critic.parameters()]))
    n_actor = len(list(agent.actor.parameters()))
    assert sum(g.abs().sum() for g in grads[0][:n_actor]) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads[0][:n_actor], grads[1][:n_actor]))
    assert not all(torch.equal(a, b) for a, b in zip(grads[0][n_actor:], grads[1][n_actor:]))


def test_td_target_picks_the_next_chunk_with_the_online_critic_by_default():
    """QC's best-of-N picks the next chunk with the online critic and values it with the target critic."""
    agent, batch = tiny_agent()
    for p in agent.critic_target.parameters():  # a target critic that ranks the candidates differently
        p.data.add_(torch.randn_like(p))
    obs = batch["next_observations"]
    targets = {}
    for selector in ("online", "target"):
        torch.manual_seed(3)
        chunk = mvp.gen_select(agent.actor, agent.critic if selector == "online" else agent.critic_target, obs, 4)
        next_q = agent.critic_target(obs, chunk).mean(0)
        targets[selector] = mvp.chunk_target(batch["rewards"], batch["masks"], next_q, agent.args.discount).mean()
    assert not torch.isclose(targets["online"], targets["target"])
    for selector, args in (
        ("online", agent.args),
        ("target", mvp.Args(**{**vars(agent.args), "select_critic": "target"})),
    ):
        torch.manual_seed(3)
        _, metrics = mvp.compute_losses(agent.actor, agent.critic, agent.critic_target, batch, args)
        torch.testing.assert_close(metrics[mvp.METRICS.index("target_mean")], targets[selector])


@pytest.mark.parametrize("horizon", [1, 3])
def test_update_moves_the_networks_and_the_target_by_tau(horizon):
    agent, batch = tiny_agent(horizon, time_sampler="logit_normal", mf_diag_ratio=0.25, adaptive_p=0.5)
    target0 = [p.clone() for p in agent.critic_target.parameters()]
    actor0 = [p.clone() for p in agent.actor.parameters()]
    metrics = agent.update(batch)
    assert metrics.shape == (len(mvp.METRICS),) and torch.isfinite(metrics).all()
    assert not all(torch.equal(a, b) for a, b in zip(actor0, agent.actor.parameters()))
    for p0, p, tp in zip(target0, agent.critic.parameters(), agent.critic_target.parameters()):
        torch.testing.assert_close(tp, p0 + 0.005 * (p - p0))  # target = critic at init, lerp by tau
    assert agent.act(batch["observations"]).shape == (8, 2 * horizon)


def test_env_id_resolution_and_unsupported_robomimic():
    assert mvp.resolve_dataset_id("antmaze-large") == "D4RL/antmaze/large-play-v1"
    assert mvp.resolve_dataset_id("cube-triple-play-singletask-task4-v0") == "cube-triple-play-singletask-task4-v0"
    with pytest.raises(mvp.DatasetError, match="not supported"):
        mvp.resolve_dataset_id("robomimic-square-mh")
    with pytest.raises(mvp.DatasetError, match="cube-double-play-singletask-task2-v0"):
        mvp.resolve_dataset_id("cube-huge")


def test_minari_episode_ends_become_chunk_boundaries(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    task = mvp.load_dataset("D4RL/antmaze/umaze-v1", "unused", "observe", 1.0, -1.0)
    dones = task.data["dones"]
    assert dones.sum() == 4 and dones[-1] == 1  # 4 episodes of 50 steps
    assert np.all(task.data["rewards"] <= 0)  # antmaze r - 1
    buffer = mvp.ReplayBuffer(task.data, len(dones), torch.device("cpu"))
    batch = buffer.chunks(torch.tensor([45, 46, 50]), horizon=5)
    assert batch["valid"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def cli_args(ogbench_dir, **kw) -> list[str]:
    flags = {**TINY, "dataset_dir": ogbench_dir, "no_cuda": True, **kw}
    out = []
    for k, v in flags.items():
        out += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return out


def test_cli_smoke_offline_online_eval(ogbench_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(mvp, cli_args(ogbench_dir, offline_steps=20, online_steps=20, online_start_steps=5, eval_interval=20,
                          eval_episodes=1, log_interval=10, save_model=True), monkeypatch)  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.iterdir()} == {"config.json", "train.jsonl", "eval.jsonl", "model.pt"}
    train = read_jsonl(run_dir / "train.jsonl")
    assert [(r["step"], r["phase"]) for r in train] == [
        (10, "offline"),
        (20, "offline"),
        (30, "online"),
        (40, "online"),
    ]
    for row in train:
        assert all(np.isfinite(row[k]) and np.isfinite(row[f"val/{k}"]) for k in mvp.METRICS)
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert [r["step"] for r in evals] == [20, 40]
    assert {"episodic_return", "episodic_length", "success_rate"} <= set(evals[0])
    assert evals[0]["episodic_length"] == 500  # cube-double episodes run to the time limit
    ckpt = torch.load(run_dir / "model.pt", weights_only=False)
    online = ckpt["online_buffer"]
    assert ckpt["step"] == 40 and online["actions"].shape == (20, 5) and online["actions"].abs().max() <= 1
    assert online["dones"].sum() == 0  # no episode ended within the 20 online steps


def test_resume_is_equivalent_to_an_uninterrupted_run(ogbench_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "step6"
    saved.mkdir()
    save = mvp.save_checkpoint

    def save_and_keep_step_6(path, step, *rest, **state):
        save(path, step, *rest, **state)
        if step == 6:  # model.pt is overwritten at every evaluation: keep the step-6 checkpoint
            shutil.copy(path, saved / "model.pt")

    monkeypatch.setattr(mvp, "save_checkpoint", save_and_keep_step_6)
    # 8 offline + 4 online steps; the checkpoint at step 6 is offline, so the run continues into the online phase
    kw = dict(**TINY, dataset_dir=str(ogbench_dir), cuda=False, offline_steps=8, online_steps=4, online_start_steps=1,
              eval_interval=6, eval_episodes=1, log_interval=2, save_model=True)  # fmt: skip
    mvp.main(mvp.Args(**kw))
    (run_dir,) = (tmp_path / "runs").iterdir()
    mvp.main(mvp.Args(**kw, resume=str(saved / "model.pt")))

    straight = torch.load(run_dir / "model.pt", weights_only=False)
    resumed = torch.load(saved / "model.pt", weights_only=False)
    assert straight["step"] == resumed["step"] == 12
    for name in ("actor", "critic", "critic_target"):
        for k, v in straight["agent"][name].items():
            assert torch.equal(v, resumed["agent"][name][k]), (name, k)
    for k, v in straight["online_buffer"].items():
        assert torch.equal(v, resumed["online_buffer"][k]), k
    opt_a, opt_b = straight["agent"]["opt"]["state"], resumed["agent"]["opt"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    rows_a, rows_b = read_jsonl(run_dir / "train.jsonl"), read_jsonl(saved / "train.jsonl")
    assert [r["step"] for r in rows_b] == [8, 10, 12]
    for a, b in zip(rows_a[-3:], rows_b):
        assert all(a[k] == b[k] for k in mvp.METRICS)
    assert read_jsonl(run_dir / "eval.jsonl")[-1] == read_jsonl(saved / "eval.jsonl")[-1]


def test_bad_input_exits_with_a_message_and_no_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    proc = run_main(SCRIPT, ["--env-id", "antmaze-huge"], monkeypatch, capsys)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: unknown --env-id 'antmaze-huge'" in proc.stderr
    flags = ["--env-id", "cube-triple-play-singletask-task2-v0", "--dataset-dir", str(tmp_path)]
    proc = run_main(SCRIPT, flags, monkeypatch, capsys)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "OGBench dataset 'cube-triple-play-v0'" in proc.stderr and "README.md, section 'Datasets'" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing is written before the data loads
