"""The four scripts' vectorised evaluation (one shared block, tests/test_cli.py checks it is identical): the same
returns, lengths and successes as one env stepped episode by episode, with the same seeds; seeded policy noise; and
--capture-video's recording of the first episode."""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT, import_algo, run_script

mf = import_algo("meanflowql")
CPU = torch.device("cpu")


class Walk(gym.Env):
    """A deterministic 1-D walk from a seeded start: reward -|x|, success (reported every step) once |x| < 0.1,
    terminated at |x| > 2, truncated after a seed-dependent number of steps, so that episodes end at different
    steps, some by termination and some by truncation."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def render(self):  # a 16 x 16 frame whose brightness shows x
        return np.full((16, 16, 3), int(np.clip(128 + 50 * self.x, 0, 255)), dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t, self.limit = self.np_random.uniform(-1.5, 1.5), 0, int(self.np_random.integers(3, 12))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x, self.t = self.x + float(action[0]), self.t + 1
        obs = np.array([self.x], np.float32)
        return obs, -abs(self.x), abs(self.x) > 2, self.t >= self.limit, {"success": float(abs(self.x) < 0.1)}


def policy(obs: np.ndarray) -> np.ndarray:
    """Deterministic; it walks some starts to the origin and others off the edge."""
    return np.clip(np.sin(3 * obs) * 0.7, -1, 1).astype(np.float32)


def sequential(num_episodes: int, seed: int, horizon: int) -> dict:
    """What the scripts did before: one env, episode after episode, a chunk of `horizon` actions executed open-loop."""
    env, out = Walk(), {"episodic_return": [], "episodic_length": [], "success_rate": []}
    for i in range(num_episodes):
        obs, _ = env.reset(seed=seed + 10_000 + i)
        done, ret, length, success, queue = False, 0.0, 0, 0.0, []
        while not done:
            if not queue:
                queue = [policy(obs)] * horizon  # the chunk is planned from the observation it starts at
            obs, reward, terminated, truncated, info = env.step(queue.pop(0))
            ret, length, done = ret + reward, length + 1, terminated or truncated
            success = max(success, info["success"])
        for key, value in zip(out, (ret, length, success)):
            out[key].append(value)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("workers", [0, 3])
@pytest.mark.parametrize("horizon", [1, 4])
def test_vectorised_evaluation_matches_the_sequential_loop(workers, horizon):
    expected = sequential(7, seed=5, horizon=horizon)
    assert len(set(expected["episodic_length"])) > 2 and 0 < expected["success_rate"].mean() < 1  # a real mix
    envs = mf.make_eval_envs(Walk, 7, workers)
    assert envs.num_envs == (7 if workers == 0 else 3)  # workers 3: waves of 3, 3 and 1 episodes
    chunk = lambda o: np.repeat(policy(o)[:, None], horizon, axis=1)  # noqa: E731  [n, h, action_dim]
    result = mf.evaluate(chunk if horizon > 1 else policy, envs, 7, seed=5, device=CPU)
    envs.close()
    assert result.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-6, err_msg=key)


def test_evaluation_calls_the_policy_once_per_step_for_all_episodes():
    calls = []
    envs = mf.make_eval_envs(Walk, 5, 0)
    mf.evaluate(lambda o: calls.append(o.shape) or policy(o), envs, 5, seed=0, device=CPU)
    envs.close()
    assert set(calls) == {(5, 1)} and len(calls) == max(sequential(5, 0, 1)["episodic_length"])


def test_eval_workers_must_be_nonnegative():
    with pytest.raises(mf.UsageError, match="--eval-workers must be >= 0"):
        mf.check_args(mf.Args(eval_workers=-1))


def test_evaluation_noise_is_seeded_and_leaves_the_training_stream_alone():
    """--eval-only must reproduce a run's evaluation of a checkpoint: the policy's noise depends on the seed only."""
    noisy = lambda o: policy(o) + 0.3 * torch.randn(o.shape).numpy()  # noqa: E731
    envs = mf.make_eval_envs(Walk, 4, 0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = mf.evaluate(noisy, envs, 4, seed=5, device=CPU)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(7)  # training moves on
    second = mf.evaluate(noisy, envs, 4, seed=5, device=CPU)
    other = mf.evaluate(noisy, envs, 4, seed=6, device=CPU)
    envs.close()
    np.testing.assert_array_equal(first["episodic_return"], second["episodic_return"])
    assert not np.array_equal(first["episodic_return"], other["episodic_return"])


@pytest.mark.parametrize("horizon", [1, 4])
def test_evaluation_depends_on_the_seed_not_on_the_number_of_workers(horizon):
    """The policy's noise is a function of (seed, episode, call within the episode): waves of any size draw it alike."""

    def noisy(obs):  # [num_episodes, h, action_dim]: the policy sees every episode's row
        assert obs.shape == (5, 1)
        return np.repeat((policy(obs) + 0.3 * torch.randn(obs.shape).numpy())[:, None], horizon, axis=1)

    results = []
    for workers in (0, 1, 2, 4):
        envs = mf.make_eval_envs(Walk, 5, workers)
        results.append(mf.evaluate(noisy, envs, 5, seed=3, device=CPU))
        envs.close()
    for result in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(result[key], results[0][key], err_msg=key)


def test_the_first_episode_is_recorded_frame_by_frame(tmp_path):
    pytest.importorskip("moviepy", reason="--capture-video needs moviepy (requirements-video.txt)")
    from moviepy import VideoFileClip

    envs = mf.make_eval_envs(Walk, 3, 0, render=True)
    result = mf.evaluate(policy, envs, 3, seed=5, device=CPU, video=str(tmp_path / "videos" / "eval_7.mp4"))
    envs.close()
    clip = VideoFileClip(str(tmp_path / "videos" / "eval_7.mp4"))
    frames = list(clip.iter_frames())
    assert len(frames) == result["episodic_length"][0] + 1 and frames[0].shape == (16, 16, 3)  # reset, then each step
    assert clip.fps == 10


def render_problem() -> str:
    """Why MuJoCo cannot render offscreen here ("" if it can)."""
    code = (
        "import gymnasium as gym; e = gym.make('InvertedPendulum-v5', render_mode='rgb_array'); e.reset(); e.render()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=HEADLESS)
    return "" if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


HEADLESS = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}


def test_capture_video_records_each_evaluation_or_says_why_it_cannot(tmp_path):
    pytest.importorskip("moviepy", reason="--capture-video needs moviepy (requirements-video.txt)")
    flags = (
        "--env-id InvertedPendulum-v5 --total-timesteps 20 --learning-starts 10 --eval-interval 10 --eval-episodes 2"
    )
    flags += " --hidden-dims 16 16 --critic-hidden-dims 16 16 --num-mc-samples 4 --num-samples 4 --batch-size 8"
    proc = run_script([str(ROOT / "algos/som.py"), *flags.split(), "--no-cuda", "--capture-video"], cwd=tmp_path,
                      env={"MUJOCO_GL": HEADLESS["MUJOCO_GL"]})  # fmt: skip
    problem = render_problem()
    if problem:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "--capture-video: the env cannot render here" in proc.stderr and "MUJOCO_GL=osmesa" in proc.stderr
        pytest.skip(f"MuJoCo cannot render offscreen on this machine ({problem}); the clear error was checked")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    videos = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert videos == ["eval_10.mp4", "eval_20.mp4"]
    from moviepy import VideoFileClip

    frames = list(VideoFileClip(str(run_dir / "videos" / "eval_20.mp4")).iter_frames())
    assert len(frames) > 1 and frames[0].shape[2] == 3 and frames[0].std() > 0  # a rendered scene, not a blank


def test_capture_video_fails_before_training_where_the_env_cannot_render():
    class NoDisplay(Walk):
        def render(self):
            raise RuntimeError("an OpenGL platform library has not been loaded")

    pytest.importorskip("moviepy", reason="--capture-video needs moviepy (requirements-video.txt)")
    with pytest.raises(mf.UsageError, match="the env cannot render here .*MUJOCO_GL=egl .* MUJOCO_GL=osmesa"):
        mf.check_video(NoDisplay)
    mf.check_video(Walk)  # renders: no error
