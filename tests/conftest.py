"""Shared test helpers: import the standalone scripts by path, and build tiny local datasets once per session."""

import importlib.util
import json
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Tiny networks run fastest on one thread, and a second OpenMP thread stalls badly when the cores are shared.
torch.set_num_threads(1)


def import_file(path: Path, name: str) -> ModuleType:
    """Import a standalone script (algos/*.py, scripts/*.py) as a module; it must have no import-time side effects."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def import_algo(name: str) -> ModuleType:
    return import_file(ROOT / "algos" / f"{name}.py", name)


def import_script(name: str) -> ModuleType:
    return import_file(ROOT / "scripts" / f"{name}.py", name)


def run_script(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` from `cwd` (scripts addressed by absolute path), offline and on one thread."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def run_main(path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> subprocess.CompletedProcess:
    """`python <path> <args>` in-process, from the current directory: the file runs as __main__ (runpy), its own error
    handling included, without the start-up of a new interpreter (for messages that need no fresh process: no env var
    read at import, no Ctrl-C). Exit status, stdout and stderr as the interpreter would give them: a SystemExit
    message goes to stderr with status 1, an escaping exception as its traceback with status 1."""
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    capsys.readouterr()
    code, tail = 0, ""
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        code, tail = (e.code or 0, "") if e.code is None or isinstance(e.code, int) else (1, f"{e.code}\n")
    except Exception:
        code, tail = 1, traceback.format_exc()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([str(path), *args], code, out, err + tail)


def run_cli(module: ModuleType, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run an algos/ script in-process as `python <script> <argv>` would (parse_cli, then main), without the start-up
    of a new interpreter: for tests about what a run does rather than about its exit status or messages."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    module.main(*module.parse_cli(module.Args))


def four_mode_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 2-D actions from 4 well-separated Gaussians (std 0.05), and the 4 centres: the expressivity toy."""
    centers = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]])
    return centers[torch.randint(0, 4, (n,))] + 0.05 * torch.randn(n, 2), centers


def mode_fractions(samples: torch.Tensor, centers: torch.Tensor, radius: float) -> torch.Tensor:
    """Fraction of samples within `radius` of each mode centre."""
    return ((samples[:, None] - centers[None]).norm(dim=-1) < radius).float().mean(0)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory) -> Path:
    """A MINARI_DATASETS_PATH holding a tiny random-policy stand-in of D4RL/antmaze/umaze-v1 (4 x 50 steps)."""
    root = tmp_path_factory.mktemp("minari")
    proc = run_script(
        [str(ROOT / "scripts/make_minari_dataset.py"), "--dataset-id", "D4RL/antmaze/umaze-v1", "--num-episodes", "4",
         "--max-episode-steps", "50", "--seed", "0"],
        cwd=root, env={"MINARI_DATASETS_PATH": str(root)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="session")
def ogbench_dir(tmp_path_factory) -> Path:
    """A directory holding a tiny cube-double-play-v0 dataset made with OGBench's scripted oracles."""
    root = tmp_path_factory.mktemp("ogbench")
    proc = run_script(
        [str(ROOT / "scripts/make_ogbench_dataset.py"), "--env-name", "cube-double-play-v0", "--num-episodes", "2",
         "--num-val-episodes", "1", "--max-episode-steps", "60", "--seed", "0", "--dataset-dir", str(root)],
        cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return root
