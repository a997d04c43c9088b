"""scripts/swingup.py: the swing-up task from suboptimal data (issue 27's probe task) has the semantics it claims:
a controller far better than random, data in between, 200-step episodes that end by truncation (timeouts bootstrap),
actions within the env's bounds, reference scores from random and the controller, loadable by the offline scripts."""

import numpy as np
from conftest import import_algo, import_script

swingup = import_script("swingup")


def test_controller_random_and_mixed_returns_are_ordered():
    controller, mixed, random = (swingup.mean_return(p, num_episodes=4) for p in (0.0, 0.7, 1.0))
    assert controller > -300 and random < -900 and controller > mixed > random


def test_dataset_semantics_and_offline_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setattr(swingup, "mean_return", lambda p: {1.0: -1200.0, 0.0: -140.0}[p])  # the reference scores
    ds = swingup.make_dataset(num_episodes=3, seed=0)
    episodes = list(ds.iterate_episodes())
    assert [len(ep.rewards) for ep in episodes] == [200] * 3
    assert all(ep.truncations[-1] and not ep.terminations.any() for ep in episodes)
    assert all(np.abs(ep.actions).max() <= swingup.MAX_TORQUE for ep in episodes)
    task = import_algo("ofql").load_dataset(swingup.DATASET_ID, "", "observe", 1.0, 0.0)
    assert task.data["observations"].shape == (600, 3) and (task.data["masks"] == 1).all()
    assert np.abs(task.data["actions"]).max() < 1  # [-2, 2] mapped to [-1, 1]
    np.testing.assert_allclose(task.normalized_score(np.array([-1200.0, -140.0])), [0.0, 100.0])
