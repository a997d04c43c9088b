"""Speed benchmark of the algos/ scripts: gradient updates per second at a given batch size with the default networks,
and the latency of one evaluation action (best-of-N for a single observation); with --eval, the time of one
evaluation instead (below).

    python scripts/speed.py meanflowql --device cpu            # eager
    python scripts/speed.py meanflowql --device cpu --compile  # torch.compile'd loss
    python scripts/speed.py meanflowql --eval --eval-workers 0 4  # evaluation: sequential vs vectorised

Random tensors stand in for the dataset (speed does not depend on the data); the shapes follow each paper's setting
(MeanFlowQL and OFQL: AntMaze, observation 29, action 8; MVP: cube-double, observation 37, action 5, chunks of 5;
SOM: HalfCheetah, observation 17, action 6).
Each script's own matmul precision applies (its seed_everything): TF32 on CUDA under its default --tf32, else FP32.
Prints one CSV row: algo, device, mode, batch, updates/s, ms/action, precision ("tf32" or "fp32").

--eval times --eval-episodes episodes of gymnasium-robotics' AntMaze_Large-v4 (the maze of D4RL's antmaze-large, 1000
steps each by default; MeanFlowQL's and OFQL's actors see the data's 29-D layout, torso xy + the ant's 27, MVP and SOM
the first 37 or 17 of those numbers padded with zeros) with the script's policy at its untrained initialisation:
first sequentially, one env and one observation per policy call (how the scripts evaluated before), then with the
scripts' evaluate(), all episodes in one process (0) and in N processes, for each N of --eval-workers (their worker
processes fork before anything touches CUDA, as in the scripts). Prints one CSV row each: algo, device, mode, episodes,
steps, seconds, speed-up over sequential, precision.
"""

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# torch's OpenMP threads sleep, not spin, while they wait: with the cores shared, spinning threads stall the run
# (results/README.md "Threads on a shared machine"). Read when torch loads; OMP_WAIT_POLICY=ACTIVE overrides it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_algo(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "algos" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def random_dataset(obs_dim: int, action_dim: int, size: int = 100_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "observations": rng.standard_normal((size, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (size, action_dim)).astype(np.float32),
        "rewards": rng.standard_normal(size, dtype=np.float32),
        "masks": np.ones(size, dtype=np.float32),
        "next_observations": rng.standard_normal((size, obs_dim), dtype=np.float32),
    }


def setup_meanflowql(device: torch.device, compile_: bool, batch_size: int, **overrides) -> tuple[Callable, Callable]:
    mod = load_algo("meanflowql")
    args = mod.resolve_args(
        mod.Args(compile=compile_, batch_size=batch_size, **overrides), "D4RL/antmaze/large-play-v1"
    )
    agent = mod.Agent(29, 8, args, device)
    buffer = mod.ReplayBuffer(random_dataset(29, 8), 100_000, device)
    with torch.no_grad():  # as in evaluation: the t = 1 conditioning is computed once per evaluation
        modulations = agent.actor.condition(torch.ones(1, 1, device=device))
    return (
        lambda: agent.update(buffer.sample(batch_size)),
        lambda obs: agent.act(obs, modulations),
    )


def setup_mvp(device: torch.device, compile_: bool, batch_size: int, **overrides) -> tuple[Callable, Callable]:
    mod = load_algo("mvp")
    args = mod.Args(compile=compile_, batch_size=batch_size, **overrides)  # horizon 5, 32 candidates
    data = random_dataset(37, 5)  # cube-double: observation 37, action 5
    data["dones"] = (np.arange(len(data["masks"])) % 1000 == 999).astype(np.float32)
    agent = mod.Agent(37, 5, args, device)
    buffer = mod.ReplayBuffer(data, len(data["masks"]), device)
    return lambda: agent.update(buffer.sample(batch_size, args.horizon)), lambda obs: agent.act(obs).view(
        len(obs), 5, 5
    )


def setup_ofql(device: torch.device, compile_: bool, batch_size: int, **overrides) -> tuple[Callable, Callable]:
    mod = load_algo("ofql")
    args = mod.resolve_args(
        mod.Args(compile=compile_, batch_size=batch_size, **overrides), "D4RL/antmaze/large-play-v1"
    )
    agent = mod.Agent(29, 8, args, device)  # AntMaze defaults: max-Q backup over 10 samples, 50 eval candidates
    buffer = mod.ReplayBuffer(random_dataset(29, 8), 100_000, device)
    return lambda: agent.update(buffer.sample(batch_size)), agent.act


def setup_som(device: torch.device, compile_: bool, batch_size: int, **overrides) -> tuple[Callable, Callable]:
    mod = load_algo("som")
    args = mod.Args(
        compile=compile_, batch_size=batch_size, **overrides
    )  # an actor step every --policy-delay (2) updates
    agent = mod.Agent(17, 6, args, device)  # HalfCheetah: observation 17, action 6
    buffer = mod.ReplayBuffer(100_000, 17, 6, device)
    buffer.load_state_dict({k: torch.as_tensor(v).reshape(100_000, -1) for k, v in random_dataset(17, 6).items()})
    return lambda: agent.update(buffer.sample(batch_size)), lambda obs: agent.act(obs, explore=False)


SETUPS = {"meanflowql": setup_meanflowql, "mvp": setup_mvp, "ofql": setup_ofql, "som": setup_som}
OBS_DIMS = {"meanflowql": 29, "mvp": 37, "ofql": 29, "som": 17}


def rate(fn: Callable, device: torch.device, warmup: int, seconds: float) -> float:
    """Calls per second of fn after `warmup` calls (compilation happens there), timed for about `seconds`."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    sync()
    return n / (time.perf_counter() - start)


def antmaze(steps: int) -> Callable[[], gym.Env]:
    """A maker of AntMaze_Large-v4 episodes of `steps` steps."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    return lambda: gym.make("AntMaze_Large-v4", max_episode_steps=steps)


def eval_speed(
    algo: str, act: Callable, device: torch.device, episodes: int, make_env: Callable, envs: dict, precision: str
) -> None:
    """Seconds per evaluation, sequential and vectorised (module docstring); envs: the vector envs of each N of
    --eval-workers, made before the agent; the first 8 action numbers (zero-padded) drive the ant."""
    mod, obs_dim = sys.modules[algo], OBS_DIMS[algo]

    def policy(raw_obs: dict) -> np.ndarray:  # [n, 8] env actions for one observation or a batch
        obs = np.concatenate([raw_obs["achieved_goal"], raw_obs["observation"]], axis=-1).reshape(-1, 29)
        obs = np.pad(obs, ((0, 0), (0, max(0, obs_dim - 29))))[:, :obs_dim]
        action = act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        chunk = action.reshape(len(obs), -1, action.shape[-1])  # [n, h, action_dim]
        return np.pad(chunk, ((0, 0), (0, 0), (0, max(0, 8 - chunk.shape[-1]))))[..., :8]

    with torch.no_grad():
        env, start = make_env(), time.perf_counter()
        for i in range(episodes):
            obs, done = env.reset(seed=10_000 + i)[0], False
            while not done:
                for action in policy(obs)[0]:  # a chunk runs open-loop
                    obs, _, terminated, truncated, _ = env.step(action)
                    if done := terminated or truncated:
                        break
        env.close()
        sequential = time.perf_counter() - start
        row = f"{episodes},{env.spec.max_episode_steps}"
        print(f"{algo},{device.type},sequential,{row},{sequential:.1f},1.00,{precision}", flush=True)
        for n, vector_env in envs.items():
            start = time.perf_counter()
            mod.evaluate(policy, vector_env, episodes, seed=0, device=device)
            seconds = time.perf_counter() - start
            vector_env.close()
            mode = "vector" if n == 0 else f"async-{n}"
            print(f"{algo},{device.type},{mode},{row},{seconds:.1f},{sequential / seconds:.2f},{precision}", flush=True)


def set_precision(mod: ModuleType, device: torch.device) -> str:
    """The script's own matmul precision, as its seed_everything sets it: TF32 on CUDA under its default --tf32."""
    if device.type != "cuda":
        return "fp32"
    tf32 = mod.Args().tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    return "tf32" if tf32 else "fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algo", choices=sorted(SETUPS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0, help="timing window per measurement")
    parser.add_argument("--start-at", type=float, help="start timing at this UNIX time (processes side by side)")
    parser.add_argument("--eval", action="store_true", help="time an evaluation instead (module docstring)")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--eval-steps", type=int, default=1000, help="steps per episode")
    parser.add_argument("--eval-workers", type=int, nargs="+", default=[0], help="0: one process; N: N processes")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    mod = load_algo(opts.algo)
    precision = set_precision(mod, device)
    if opts.eval:  # the worker processes fork before anything touches CUDA (forking after it is unsupported)
        make_env = antmaze(opts.eval_steps)
        envs = {n: mod.make_eval_envs(make_env, opts.eval_episodes, n) for n in opts.eval_workers}
    torch.manual_seed(0)
    update, act = SETUPS[opts.algo](device, opts.compile, opts.batch_size)
    if opts.eval:
        return eval_speed(opts.algo, act, device, opts.eval_episodes, make_env, envs, precision)
    obs = torch.randn(1, OBS_DIMS[opts.algo], device=device)
    for _ in range(5):  # warm-up (compilation happens here)
        update()
    time.sleep(max(0.0, (opts.start_at or 0) - time.time()))
    updates_per_s = rate(update, device, warmup=0, seconds=opts.seconds)
    ms_per_action = 1000 / rate(lambda: act(obs).cpu(), device, warmup=20, seconds=min(5.0, opts.seconds))
    mode = "compile" if opts.compile else "eager"
    print(f"{opts.algo},{device.type},{mode},{opts.batch_size},{updates_per_s:.2f},{ms_per_action:.3f},{precision}")


if __name__ == "__main__":
    main()
