"""The speed benchmark (scripts/speed.py, run by benchmark.sh) runs for every algorithm it knows, at each script's own
precision, and makes its evaluation workers before anything can touch CUDA."""

import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import import_script

speed = import_script("speed")


@pytest.mark.parametrize("algo", sorted(speed.SETUPS))
def test_speed_benchmark_prints_a_csv_row(algo, monkeypatch, capsys):
    """In-process (speed.main() on its command line): tests/test_benchmark.py runs the script itself."""
    monkeypatch.setattr(sys, "argv", ["speed.py", algo, "--device", "cpu", "--batch-size", "8", "--seconds", "0.2"])
    speed.main()
    name, device, mode, batch, updates_per_s, ms_per_action, precision = (
        capsys.readouterr().out.splitlines()[-1].split(",")
    )
    assert (name, device, mode, batch, precision) == (algo, "cpu", "eager", "8", "fp32")
    assert float(updates_per_s) > 0 and float(ms_per_action) > 0


@pytest.mark.parametrize("algo", sorted(speed.SETUPS))
def test_cuda_rows_use_the_scripts_own_tf32_default(algo, monkeypatch):
    for flags in (torch.backends.cuda.matmul, torch.backends.cudnn):
        monkeypatch.setattr(flags, "allow_tf32", False)
    module = speed.load_algo(algo)
    assert module.Args().tf32 and speed.set_precision(module, torch.device("cuda")) == "tf32"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    no_tf32 = SimpleNamespace(Args=lambda: SimpleNamespace(tf32=False))
    assert speed.set_precision(no_tf32, torch.device("cuda")) == "fp32"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert speed.set_precision(module, torch.device("cpu")) == "fp32"


def test_eval_workers_are_made_before_the_agent(monkeypatch):
    """Forking a process that has initialised CUDA is unsupported: every vector env first, then the agent."""
    events = []
    module = SimpleNamespace(
        Args=lambda: SimpleNamespace(tf32=True),
        make_eval_envs=lambda make_env, episodes, workers: events.append(f"envs {workers}"),
    )
    monkeypatch.setattr(speed, "load_algo", lambda name: module)
    monkeypatch.setattr(speed, "antmaze", lambda steps: None)
    monkeypatch.setitem(speed.SETUPS, "ofql", lambda *args: events.append("agent") or (None, None))
    monkeypatch.setattr(speed, "eval_speed", lambda *args: events.append("evaluate"))
    monkeypatch.setattr(sys, "argv", ["speed.py", "ofql", "--eval", "--device", "cpu", "--eval-workers", "0", "4"])
    speed.main()
    assert events == ["envs 0", "envs 4", "agent", "evaluate"]
