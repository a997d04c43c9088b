"""--compile compiles each script's whole gradient step: it must compute what the eager step computes, and compile
once (a learning-rate schedule or a step counter must not recompile it). Graphs are captured with the aot_eager
backend (TorchDynamo and AOTAutograd, the same graphs inductor would get), which keeps the test fast on a CPU;
meanflowql also runs through inductor, with eager random numbers so that the two runs draw the same noise."""

import functools

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


@pytest.mark.parametrize("algo", sorted(TINY))
def test_a_resumed_run_keeps_its_compile_setting(algo):
    """A compiled run's optimisers hold their learning rates in tensors, which eager CUDA Adam refuses."""
    module = import_algo(algo)
    saved = {f: getattr(module.Args(compile=True), f) for f in module.Args.__dataclass_fields__}
    with pytest.raises(module.UsageError, match="--compile False differs from the checkpoint's True"):
        module.resume_args(module.Args(resume="x.pt"), saved, {"compile"})
    assert module.resume_args(module.Args(resume="x.pt"), saved, set()).compile
