"""Two CPU processes under jax.distributed: data-parallel training, and a peer dying."""

import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from resnet_jax import checkpoints, train
from tests.conftest import CIFAR10_IMAGE, REPO
from tests.conftest import smoke_config as _smoke


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, epochs: int, heartbeat: int = 100) -> list[subprocess.Popen]:
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", "resnet_jax.main", "--config", "configs/smoke.py", "--workdir",
       str(workdir), "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
       "--process_id", str(i), f"--heartbeat_timeout={heartbeat}",
       f"--config.num_epochs={epochs}"], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]


def test_two_processes_train_like_one(tmp_path):
  processes = _launch(tmp_path / "two", epochs=1)
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:]
  assert "JAX process 1 of 2" in outputs[1]
  _, two, meta = checkpoints.restore_model(str(tmp_path / "two"), CIFAR10_IMAGE)
  state, history = train.train_and_evaluate(_smoke(num_epochs=1), str(tmp_path / "one"))
  one = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  for a, b in zip(jax.tree.leaves(dict(two)), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=2e-2)  # reduction order differs
  for theirs, ours in zip(meta["history"], history):
    assert abs(theirs["train_loss"] - ours["train_loss"]) < 1e-2
    assert abs(theirs["eval_accuracy"] - ours["eval_accuracy"]) <= 2 / 256


def test_a_dying_process_stops_the_other_instead_of_hanging(tmp_path):
  processes = _launch(tmp_path, epochs=500, heartbeat=5)
  deadline = time.time() + 300
  for line in processes[0].stdout:  # wait until training is under way
    if "epoch 1/500" in line or time.time() > deadline:
      break
  processes[1].send_signal(signal.SIGKILL)
  start = time.time()
  rest = processes[0].communicate(timeout=180)[0]
  assert processes[0].returncode != 0
  assert time.time() - start < 180
  assert "another task died" in rest or "heartbeat" in rest or "Gloo" in rest
  processes[1].wait()
