"""Four CPU devices (XLA_FLAGS in a subprocess): the same train step as one device, the
same evaluation over the four, and a checkpoint they write restores, evaluates and resumes
on one."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from resnet_jax import evaluate, train
from tests.conftest import REPO
from tests.conftest import smoke_config as _smoke


_ON_FOUR_DEVICES = textwrap.dedent("""
    import json, sys, jax, numpy as np
    from resnet_jax import config_validation, default_config, model_setup, optim, train
    from resnet_jax.data import batches
    from configs import smoke
    assert jax.device_count() == 4
    # One train step on 1 and on 4 devices.
    config = smoke.get_config()
    config.batch_size = 8
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int32)}
    def two_steps(config, devices):
      model = model_setup.build_model(config)
      steps = train.Steps(config, model, train.data_mesh(devices), total_steps=10)
      tx, _ = optim.create_optimizer(config.optimizer, 10, config.num_epochs)
      state = train.create_train_state(config, model, tx, total_steps=10)
      state = steps.place_state(train._fit_to_data(config, model, state,
                                                   lambda n: batch["image"][:n]))
      for _ in range(2):
        state, metrics = steps.train(state, batches.place(batch, steps.data))
      return jax.device_get((state.params, (state.batch_stats, state.proxy)))
    # The smoke model, and a FastResNet training on the half of the batch its proxy picks.
    # FastResNet's running statistics differ between 1 and 4 devices by up to ~5e-3 (seen
    # with and without a proxy), and so do the proxy's Muon steps, which follow them; the
    # model's parameters agree, so its proxy picked the same examples on both.
    fast = default_config.get_config("fast")
    fast.model.widths, fast.selection.fraction, fast.selection.proxy_widths = (
        (8, 16, 16), 0.5, (4, 8, 8))
    fast.dtype, fast.batch_size, fast.data.source = "float32", 8, "synthetic"
    for case, rest_tolerance in ((config, 2e-5), (fast, 2e-2)):
      one, four = (two_steps(case, devices) for devices in (jax.devices()[:1], jax.devices()))
      for (a, b), tolerance in ((one[0], four[0]), 2e-5), ((one[1], four[1]), rest_tolerance):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
          np.testing.assert_allclose(x, y, atol=tolerance, rtol=tolerance)
    print("SAME STEP")
    config.batch_size = 30
    try:
      config_validation.validate(config)
    except config_validation.ConfigError as e:
      print("REJECTED:", e)
    # An epoch of the smoke config, checkpointed on 4 devices.
    config = smoke.get_config()
    config.num_epochs = 1
    train.train_and_evaluate(config, sys.argv[1])
    # --mode eval over the 4 devices: the loop's evaluation step, sharded.
    from resnet_jax import evaluate
    print("EVAL", json.dumps(evaluate.evaluate_checkpoint(config, sys.argv[1])))
    print("OK")
""")


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
  """One process on 4 CPU devices: train steps compared with 1 device's (the smoke model's,
  and a FastResNet's on the examples its proxy picks), a batch the 4 do not divide, and a
  1-epoch smoke run. (its CompletedProcess, the run's workdir)."""
  workdir = str(tmp_path_factory.mktemp("on_four_devices"))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  result = subprocess.run([sys.executable, "-c", _ON_FOUR_DEVICES, workdir], env=env, cwd=REPO,
                          capture_output=True, text=True)
  return result, workdir


def test_four_cpu_devices_take_the_same_step_as_one(four_device_run):
  result, _ = four_device_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert "REJECTED: config.batch_size=30 is not divisible by the 4 devices" in result.stdout
  assert "SAME STEP" in result.stdout and result.stdout.strip().endswith("OK")


def test_checkpoint_written_on_four_devices_restores_on_one(four_device_run):
  result, workdir = four_device_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert jax.device_count() == 1
  with open(os.path.join(workdir, "history.json")) as f:
    logged = json.load(f)[0]["eval_accuracy"]
  on_four = json.loads(next(line for line in result.stdout.splitlines()
                             if line.startswith("EVAL "))[5:])
  on_one = evaluate.evaluate_checkpoint(_smoke(), workdir)
  assert on_one["accuracy"] == pytest.approx(logged, abs=1e-6)
  assert on_four["accuracy"] == pytest.approx(logged, abs=1e-6)
  assert on_four["confusion_matrix"] == on_one["confusion_matrix"]  # every example, once
  state, history = train.train_and_evaluate(_smoke(num_epochs=2), workdir)  # resume on 1
  assert int(state.step) == 32 and len(history) == 2
