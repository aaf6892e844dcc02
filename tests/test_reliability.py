"""Preemption (SIGTERM/SIGINT) and determinism."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from resnet_jax import train
from tests.test_checkpoints import REPO, _smoke, trained  # noqa: F401  (fixture)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_checkpoints_and_the_rerun_matches_uninterrupted(
    tmp_path, monkeypatch, trained, signum, code):  # noqa: F811
  _, uninterrupted, full_history = trained
  calls = {"n": 0}
  place = train.Steps.place_batch

  def place_and_signal(self, batch):
    calls["n"] += "mask" not in batch  # train batches only
    if calls["n"] == 21 and "mask" not in batch:  # step 5 of epoch 2
      os.kill(os.getpid(), signum)
    return place(self, batch)

  monkeypatch.setattr(train.Steps, "place_batch", place_and_signal)
  with pytest.raises(train.Preempted) as info:
    train.train_and_evaluate(_smoke(), str(tmp_path))
  assert info.value.code == code
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["16", "21"]
  monkeypatch.setattr(train.Steps, "place_batch", place)
  state, history = train.train_and_evaluate(_smoke(), str(tmp_path))
  for ours, theirs in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))),
                          jax.tree.leaves((uninterrupted.params, uninterrupted.opt_state))):
    np.testing.assert_array_equal(ours, theirs)
  untimed = lambda hs: [{k: v for k, v in h.items() if k != "images_per_s"} for h in hs]
  assert untimed(history) == untimed(full_history)  # epoch 2's metrics span the restart


def test_sigterm_to_the_cli_exits_with_a_resume_message(tmp_path):
  process = subprocess.Popen(
      [sys.executable, "-m", "resnet_jax.main", "--config", "configs/smoke.py", "--workdir",
       str(tmp_path), "--config.num_epochs=200"], cwd=REPO, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  for line in process.stderr:  # wait until training is under way
    if "epoch 1/200" in line or time.time() > deadline:
      break
  process.send_signal(signal.SIGTERM)
  _, rest = process.communicate(timeout=120)
  assert process.returncode == 143
  assert "SIGTERM: stopped at step" in rest and "rerun the same command to resume" in rest
  assert os.listdir(tmp_path / "checkpoints")


def test_same_config_and_seed_give_identical_metrics(tmp_path, trained):  # noqa: F811
  _, _, history = trained
  _, again = train.train_and_evaluate(_smoke(), str(tmp_path))
  untimed = lambda hs: [{k: v for k, v in h.items() if k != "images_per_s"} for h in hs]
  assert untimed(again) == untimed(history)
