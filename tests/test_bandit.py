"""Tests for scripts/bandit.py: the two-hill contextual bandit (env and Minari dataset) and how the offline scripts
read it."""

import re

import minari
import numpy as np
import pytest
from conftest import ROOT, import_algo, import_script, run_script

bandit = import_script("bandit")  # registered as module 'bandit', the env's entry point
ofql, mvp = import_algo("ofql"), import_algo("mvp")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))  # Minari reads it at call time
        bandit.make_dataset(num_episodes=400, seed=0)
    return str(path)


def test_reward_geometry_the_better_hill_depends_on_the_state() -> None:
    a, b = bandit.CENTERS
    for s, better, worse in ((0.8, a, b), (-0.8, b, a)):
        obs = np.array([s], np.float32)
        assert bandit.reward(obs, better) > 0.99 and 0.5 < bandit.reward(obs, worse) < 0.51
    assert bandit.reward(np.array([0.8]), np.zeros(2)) < 1e-10  # the midpoint between the hills earns nothing
    assert bandit.reward(np.array([0.0]), a + [0.1, 0.0]) == pytest.approx(0.75 * np.exp(-0.5), rel=1e-6)  # width 0.1
    s = np.linspace(-1, 1, 10_001)[:, None]
    best = np.maximum(bandit.reward(s, a[None]), bandit.reward(s, b[None])).mean()
    assert bandit.optimal_return() == pytest.approx(best, abs=1e-4) and 0.95 < best < 0.96


def test_env_is_one_step_and_seeded() -> None:
    env = bandit.make_env()
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs) and env.action_space.shape == (2,)
    obs2, r, terminated, truncated, _ = env.step(bandit.CENTERS[0])
    assert terminated and not truncated and r == pytest.approx(float(bandit.reward(obs, bandit.CENTERS[0])))
    np.testing.assert_array_equal(env.reset(seed=3)[0], obs)
    env.close()


def test_dataset_semantics_and_offline_loading(root, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", root)
    ds = minari.load_dataset(bandit.DATASET_ID)
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    assert ds.total_episodes == ds.total_steps == 400
    assert abs(returns.mean() - 0.6) < 0.03  # 0.75 mean height x 0.8 from the behaviour noise
    np.testing.assert_allclose(minari.get_normalized_score(ds, np.array([bandit.optimal_return()])), [1.0])
    task = ofql.load_dataset(bandit.DATASET_ID, "", "observe", 1.0, 0.0)
    d = task.data
    assert d["observations"].shape == (400, 1) and d["actions"].shape == (400, 2)
    assert (d["masks"] == 0).all() and (d["dones"] == 1).all()  # every transition ends its episode
    nearest = np.linalg.norm(d["actions"][:, None] - bandit.CENTERS[None], axis=-1)
    assert nearest.min(1).max() < 0.3 and 0.4 < (nearest.argmin(1) == 0).mean() < 0.6  # both hills, half each
    np.testing.assert_allclose(d["rewards"], bandit.reward(d["observations"], d["actions"]), rtol=1e-5)
    with pytest.raises(mvp.DatasetError, match="shorter than --horizon 5"):  # one-step episodes need --horizon 1
        mvp.main(mvp.Args(env_id=bandit.DATASET_ID, offline_steps=1, online_steps=0, output_dir=str(root)))


def test_without_the_env_module_on_the_path_the_error_says_how(root) -> None:
    proc = run_script(
        [str(ROOT / "algos/ofql.py"), "--env-id", bandit.DATASET_ID, "--offline-steps", "1"],
        cwd=ROOT, env={"MINARI_DATASETS_PATH": root, "PYTHONPATH": ""},
    )  # fmt: skip
    assert proc.returncode == 1 and "PYTHONPATH=scripts" in proc.stderr and "Traceback" not in proc.stderr


def test_probe_prints_the_diagnostics(root, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", root)
    probe = import_script("probe_ofql_bandit")
    probe.main(["4", "--every", "2", "hidden_dim=8", "num_layers=1", "time_emb_dim=8", "batch_size=8", "eta=0.1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("eta 0.1;") and len(lines) == 3
    for line in lines[1:]:
        values = dict(re.findall(r"(\w+) (-?[\d.]+)", line))
        assert 0 <= float(values["one_step"]) <= 1 and 0 <= float(values["near"]) <= 1
        assert re.search(r"argmax_q \(-?[\d.]+, -?[\d.]+\)", line)
