"""--compile compiles each script's whole gradient step: it must compute what the eager step computes, and compile
once (a learning-rate schedule or a step counter must not recompile it). Graphs are captured with the aot_eager
backend (TorchDynamo and AOTAutograd, the same graphs inductor would get), which keeps the test fast on a CPU;
meanflowql's whole step and the other scripts' JVP losses (forward and backward) also run through inductor, with eager
random numbers so that the two runs draw the same noise. A compiled run resumed from a checkpoint continues exactly."""

import functools
import io
from collections.abc import Callable

import pytest
import torch
from conftest import import_algo, import_script

speed = import_script("speed")
TINY = {  # small networks; schedules short enough that the LR and alpha move within the steps
    "meanflowql": dict(actor_hidden_dim=16, actor_depth=1, critic_hidden_dim=16, critic_layers=2, offline_steps=8,
                       alpha_interval=2, alpha_window=3, alpha_warmup_ratio=0.0, actor_warmup_ratio=0.25),
    "ofql": dict(hidden_dim=16, num_layers=2, offline_steps=8, ema_every=2, ema_start=2, grad_clip=1.0),
    "mvp": dict(actor_hidden_dim=16, actor_layers=2, critic_hidden_dim=16, critic_layers=2, num_samples=4),
    "som": dict(hidden_dims=(16, 16), critic_hidden_dims=(16, 16), num_mc_samples=4, num_samples=4,
                actor_lr_decay=(0, 4)),
}  # fmt: skip


def train(algo: str, compile_: bool, steps: int = 6) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The metrics of `steps` updates and the action for one observation afterwards, from seed 0, and how many frames
    TorchDynamo compiled after the first two updates (which compile everything an update runs)."""
    torch.manual_seed(0)
    update, act = speed.SETUPS[algo](torch.device("cpu"), compile_, 8, **TINY[algo])
    metrics = [update(), update()]
    compiled_before = torch._dynamo.utils.counters["frames"]["ok"]
    metrics += [update() for _ in range(steps - 2)]
    recompiled = torch._dynamo.utils.counters["frames"]["ok"] - compiled_before
    return torch.stack(metrics), act(torch.randn(1, speed.OBS_DIMS[algo])), recompiled


@pytest.mark.parametrize("algo", sorted(TINY))
def test_compiled_update_matches_eager_and_compiles_once(algo, monkeypatch):
    eager = train(algo, compile_=False)
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    *compiled, recompiled = train(algo, compile_=True)
    assert recompiled == 0
    torch.testing.assert_close(compiled, eager[:2], rtol=1e-5, atol=1e-6)


def test_inductor_update_matches_eager(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    eager = train("meanflowql", compile_=False, steps=3)
    torch._dynamo.reset()
    compiled = train("meanflowql", compile_=True, steps=3)
    torch.testing.assert_close(compiled[:2], eager[:2], rtol=1e-4, atol=1e-5)


def jvp_loss(algo: str) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """A tiny actor of the script and a function of it computing its MeanFlow loss, whose du/dt comes from a JVP."""
    module, (obs, noise, t) = import_algo(algo), (torch.randn(8, d) for d in (5, 6, 1))
    actions, r = torch.rand(8, 6) * 2 - 1, t * torch.rand(8, 1)
    if algo == "ofql":
        actor = module.AverageVelocityNet(5, 6, hidden_dim=16, num_layers=2, emb_dim=8)
        return actor, lambda: module.fbc_loss(actor, obs, actions, noise, t, r, adaptive_p=0.5)
    if algo == "mvp":  # chunks of 3 actions of 2 dimensions, the last position past an episode end
        actor, valid = module.MeanVelocityField(5, 6, hidden_dim=16, num_layers=2), torch.ones(8, 3)
        valid[:, -1] = 0
        return actor, lambda: module.meanflow_loss(actor, obs, actions, noise, t, r, valid, adaptive_p=0.5)
    actor = module.MeanFlowActor(5, 6, hidden_dims=(16, 16))
    return actor, lambda: module.meanflow_loss(actor, obs, noise, r, t, actions - noise)[0]


@pytest.mark.parametrize("algo", ["ofql", "mvp", "som"])
def test_inductor_compiles_the_jvp_loss_and_its_gradient(algo):
    """The forward-mode JVP inside the loss, and the backward through it, must lower to inductor's kernels (as on a
    GPU, where --compile uses inductor) and compute what eager computes."""
    torch.manual_seed(0)
    actor, loss = jvp_loss(algo)
    results = []
    for fn in (loss, torch.compile(loss)):
        actor.zero_grad()
        value = fn()
        value.backward()
        results.append([value.detach(), *(p.grad.clone() for p in actor.parameters())])
    assert results[0][0] > 0 and any(g.abs().sum() > 0 for g in results[0][1:])
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-6)


def test_a_compiled_run_resumed_mid_schedule_continues_exactly(monkeypatch):
    """Under --compile the learning rates are float64 tensors on the training device, which the compiled step reads;
    a checkpoint (loaded on the CPU) must not swap them for its own tensors: the resumed run moves its schedule and
    takes the same steps as the uninterrupted one."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    mf, cpu = import_algo("meanflowql"), torch.device("cpu")
    args = mf.resolve_args(mf.Args(compile=True, batch_size=8, **TINY["meanflowql"]), "D4RL/antmaze/umaze-v1")
    buffer = mf.ReplayBuffer(speed.random_dataset(5, 3, size=64), 64, cpu)

    def run(agent: "mf.Agent", steps: int) -> list[torch.Tensor]:
        return [agent.update(buffer.sample(8)) for _ in range(steps)]

    torch.manual_seed(0)
    whole = mf.Agent(5, 3, args, cpu)  # the uninterrupted run: checkpointed after 4 steps, then 4 more
    run(whole, 4)
    saved, rng, saved_lr = io.BytesIO(), torch.get_rng_state(), whole.actor_sched.get_last_lr()[0]
    torch.save(whole.state_dict(), saved)
    saved.seek(0)
    rest = run(whole, 4)
    resumed = mf.Agent(5, 3, args, cpu)
    lrs = [opt.param_groups[0]["lr"] for opt in (resumed.actor_opt, resumed.critic_opt)]
    resumed.load_state_dict(torch.load(saved, map_location="cpu", weights_only=False))
    for opt, lr in zip((resumed.actor_opt, resumed.critic_opt), lrs):
        assert opt.param_groups[0]["lr"] is lr and lr.dtype == torch.float64  # the tensor the compiled step reads
    assert float(lrs[0]) == saved_lr != args.actor_lr  # mid warm-up
    torch.set_rng_state(rng)
    torch.testing.assert_close(torch.stack(run(resumed, 4)), torch.stack(rest), rtol=0, atol=0)
    assert float(lrs[0]) == resumed.actor_sched.get_last_lr()[0] != saved_lr


@pytest.mark.parametrize("algo", sorted(TINY))
def test_compiled_optimisers_keep_their_learning_rate_tensors(algo):
    """Optimizer.load_state_dict puts the saved param-group values in place as they are: the checkpoint's CPU tensor,
    where the compiled step reads the one made on the training device. That one must stay, with the saved value."""
    module, saved, cpu = import_algo(algo), io.BytesIO(), torch.device("cpu")
    args = module.Args(compile=True)
    torch.save(module.adam([torch.nn.Parameter(torch.zeros(2))], 5e-4, args, cpu).state_dict(), saved)
    opt = module.adam([torch.nn.Parameter(torch.zeros(2))], 1e-3, args, cpu)
    lr = opt.param_groups[0]["lr"]
    saved.seek(0)
    opt.load_state_dict(torch.load(saved, map_location="cpu", weights_only=False))
    assert opt.param_groups[0]["lr"] is lr and lr.dtype == torch.float64 and float(lr) == 5e-4


@pytest.mark.parametrize("algo", sorted(TINY))
def test_a_resumed_run_keeps_its_compile_setting(algo):
    """A compiled run's optimisers hold their learning rates in tensors, which eager CUDA Adam refuses."""
    module = import_algo(algo)
    ckpt = {"args": {f: getattr(module.Args(compile=True), f) for f in module.Args.__dataclass_fields__}}
    with pytest.raises(module.UsageError, match="--compile False differs from the checkpoint's True"):
        module.resume(module.Args(resume="x.pt"), ckpt)  # --no-compile given on the command line
    assert module.saved_args(module.Args, ckpt).compile  # not given: the checkpoint's
