"""Tests for scripts/make_pendulum_dataset.py: the InvertedPendulum stand-in of mujoco/invertedpendulum/medium-v0,
a balancing controller with random steps mixed in."""

import minari
import numpy as np
import pytest
from conftest import import_script

mpd = import_script("make_pendulum_dataset")


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # Minari reads it at call time
    return tmp_path


def episode_lengths(random_prob: float) -> list[int]:
    ds = mpd.make_dataset(num_episodes=3, random_prob=random_prob, seed=0, overwrite=True)
    return [len(ep.actions) for ep in ds.iterate_episodes()]


def test_layout_and_eval_env(root) -> None:
    ds = mpd.make_dataset(num_episodes=4, random_prob=0.5, seed=0)
    assert ds.total_episodes == 4 and ds.env_spec.id == "InvertedPendulum-v5"
    for ep in ds.iterate_episodes():
        assert ep.observations.shape == (len(ep.actions) + 1, 4) and ep.actions.shape[1:] == (1,)
        assert np.all(np.abs(ep.actions) <= 3.0)  # the env's units
        assert ep.terminations[-1] and not ep.terminations[:-1].any()  # the pole fell, once, at the end
        assert np.all(ep.rewards[:-1] == 1.0) and ep.rewards[-1] == 0.0  # v5: 1 per step while the pole is up
    eval_env = ds.recover_environment(eval_env=True)
    assert eval_env.spec.id == "InvertedPendulum-v5" and eval_env.spec.max_episode_steps == 1000
    eval_env.close()
    np.testing.assert_allclose(minari.get_normalized_score(ds, np.array([500.0])), [0.5])
    with pytest.raises(FileExistsError, match="overwrite"):
        mpd.make_dataset(num_episodes=1)
    with pytest.raises(ValueError, match="random_prob must be in"):
        mpd.make_dataset(num_episodes=1, random_prob=-0.1, overwrite=True)


def test_controller_balances_and_random_steps_drop_the_pole(root) -> None:
    assert episode_lengths(0.0) == [1000, 1000, 1000]  # truncated at the env's limit: the controller alone balances
    assert max(episode_lengths(1.0)) < 30  # uniform random actions drop it within a few steps
    mixed = episode_lengths(0.5)
    assert 10 < np.mean(mixed) < 300
    ds = mpd.make_dataset(num_episodes=3, random_prob=1.0, seed=0, overwrite=True)
    actions = np.concatenate([ep.actions for ep in ds.iterate_episodes()])
    assert actions.max() > 1.5 and actions.min() < -1.5  # random steps cover the env's [-3, 3], not [-1, 1]


def test_cli(root, capsys) -> None:
    mpd.main(["--num-episodes", "2", "--random-prob", "0.5"])
    assert "wrote mujoco/invertedpendulum/medium-v0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # exists, no --overwrite
        mpd.main(["--num-episodes", "2"])
    assert exc.value.code == 1
