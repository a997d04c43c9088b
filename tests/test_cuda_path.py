"""The CUDA path, as far as a CPU machine can check it: a CPU run on a GPU host makes no CUDA call, the evaluation
workers fork before anything could touch CUDA, and a checkpoint's CUDA generator state is the training device's alone
(a resume may see fewer GPUs). What only a GPU can decide is checked by `bash benchmark.sh gpu`."""

from collections.abc import Callable

import pytest
import torch
from conftest import import_algo

ALGOS = ("meanflowql", "ofql", "mvp", "som")
CUDA_CALLS = (
    "get_rng_state",
    "get_rng_state_all",
    "set_rng_state",
    "set_rng_state_all",
    "current_device",
    "_lazy_init",
)
TINY = {
    "meanflowql": dict(actor_hidden_dim=16, actor_depth=1, critic_hidden_dim=16, critic_layers=1),
    "ofql": dict(hidden_dim=16, num_layers=2, time_emb_dim=8, eval_candidates=4),
    "mvp": dict(actor_hidden_dim=16, actor_layers=2, critic_hidden_dim=16, critic_layers=2, num_samples=4),
    "som": dict(hidden_dims=(16, 16), critic_hidden_dims=(16, 16), num_mc_samples=4, num_samples=4),
}


def a_gpu_host_whose_cuda_must_not_be_called(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in CUDA_CALLS:

        def called(*args: object, name: str = name) -> None:
            raise AssertionError(f"torch.cuda.{name} called by a CPU run")

        monkeypatch.setattr(torch.cuda, name, called)


@pytest.mark.parametrize("algo", ALGOS)
def test_a_cpu_run_on_a_gpu_host_makes_no_cuda_call_and_forks_its_eval_workers_first(
    algo, minari_root, tmp_path, monkeypatch
):
    """--no-cuda on a GPU host: training, an evaluation in a worker process and a checkpoint, without one CUDA call
    (many CPU jobs share GPU nodes, some in exclusive-process mode). The workers fork before the agent and the replay
    buffer exist: on CUDA those initialise it, and forking a CUDA-initialised process is unsupported."""
    module, events = import_algo(algo), []
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    monkeypatch.chdir(tmp_path)
    a_gpu_host_whose_cuda_must_not_be_called(monkeypatch)

    def recorded(name: str, make: Callable) -> Callable:
        return lambda *a, **kw: events.append(name) or make(*a, **kw)

    monkeypatch.setattr(module, "make_eval_envs", recorded("eval workers", module.make_eval_envs))
    monkeypatch.setattr(module, "Agent", recorded("agent", module.Agent))
    monkeypatch.setattr(module, "ReplayBuffer", recorded("buffer", module.ReplayBuffer))
    if algo == "som":
        steps = dict(env_id="InvertedPendulum-v5", total_timesteps=12, learning_starts=6, eval_interval=12)
    else:
        steps = dict(env_id="antmaze-umaze", offline_steps=4, online_steps=0, eval_interval=4)
    module.main(module.Args(**steps, **TINY[algo], batch_size=8, eval_episodes=2, eval_workers=1, log_interval=4,
                            save_model=True, cuda=False))  # fmt: skip
    assert events[0] == "eval workers" and {"agent", "buffer"} <= set(events)
    (checkpoint,) = (tmp_path / "runs").glob("*/model.pt")
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["rng"]["cuda"] is None


@pytest.mark.parametrize("algo", ALGOS)
def test_a_checkpoint_from_a_two_gpu_host_resumes_on_one_gpu(algo, monkeypatch):
    """The checkpoint holds the training device's CUDA generator only; restoring it touches that device only (today's
    set_rng_state_all indexed every GPU seen at save time, an IndexError with fewer visible)."""
    module, calls = import_algo(algo), []
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]  # device 0's and device 1's generators
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index or 0])
    saved = module.rng_state(torch.device("cuda"))

    def set_all(new_states: list) -> None:  # one GPU visible now
        if len(new_states) > 1:
            raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((state, device)))
    module.restore_rng(saved, torch.device("cuda"))
    assert len(calls) == 1 and torch.equal(calls[0][0], states[0]) and torch.device(calls[0][1]).type == "cuda"
