"""Workdirs written before the checkpoint layout changed still resume, evaluate and predict.

tests/data/v1_workdirs holds two runs written by commit c067652 (layout 1, its
README says how): a seed-family and a FastResNet run (whitening, lookahead,
device pipeline, TTA), each stopped by SIGTERM in epoch 2 of 2, beside the final
variables and history of the same runs uninterrupted.
"""

import csv
import json
import os
import pickle
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from configs import smoke
from resnet_jax import checkpoints, config_validation, default_config, evaluate, optim, train
from resnet_jax.data import augmentations, sources
from tests.conftest import REPO, untimed

V1_WORKDIRS = os.path.join(REPO, "tests", "data", "v1_workdirs")
WRITTEN_WITH_JAX = "0.10.2"  # constraints.txt's at commit c067652
WRITTEN_WITH_CPU_FLAG = "avx512f"  # an AMD EPYC with AVX-512: XLA:CPU vectorises sums to its width


def _as_where_written() -> bool:
  """Whether this jax on this CPU computes as the files' writer did: bit for bit."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = f.read().split()
  except OSError:
    flags = []
  return jax.__version__ == WRITTEN_WITH_JAX and WRITTEN_WITH_CPU_FLAG in flags


def _config_from_json(saved: dict, root: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Applies a run's saved config (config.json) to today's, as a user's old config file would
  set it: moved keys at their new place, the other family's unset model fields left out."""
  config = default_config.lookup(root, prefix)
  for key, value in saved.items():
    dotted = prefix + key
    if dotted in config_validation.MOVED_KEYS:
      parent, _, leaf = config_validation.MOVED_KEYS[dotted].rpartition(".")
      group, _, _ = parent.rpartition(".")
      if parent.split(".")[-1] in default_config.lookup(root, group):
        default_config.lookup(root, parent)[leaf] = value
      else:  # the other family's group: the old config held it at its default
        assert value == optim.group_config(("any",)).any[leaf], (dotted, value)
    elif key == "augment":
      config[key] = augmentations.preset("none", **value)
    elif isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
      _config_from_json(value, root, f"{dotted}.")
    elif prefix == "model." and key not in config:
      assert value is None, f"{dotted}={value} is not a field of {config.name!r}"
    else:
      config[key] = tuple(value) if isinstance(value, list) else value


@pytest.fixture(params=["resnet", "fast"])
def v1_run(request, tmp_path):
  """(a copy of the layout-1 workdir, its config as today's, the history it had logged)."""
  workdir = str(tmp_path / request.param)
  shutil.copytree(os.path.join(V1_WORKDIRS, request.param), workdir)
  config = smoke.get_config()
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  default_config.set_model(config, saved["model"]["name"])
  _config_from_json(saved, config)
  with open(os.path.join(workdir, "history.json")) as f:
    return workdir, config, json.load(f)


def test_a_layout_1_workdir_evaluates_and_predicts_as_it_logged(v1_run, tmp_path):
  workdir, config, history = v1_run
  config.eval.tta = 0  # the logged per-epoch accuracy has none
  metrics = evaluate.evaluate_checkpoint(config, workdir)
  assert metrics["step"] == 16  # the one end-of-epoch checkpoint, the best
  assert metrics["accuracy"] == pytest.approx(history[0]["eval_accuracy"], abs=1e-9)
  images, labels = sources.load_synthetic("test", {"train": 512, "test": 256})
  with open(tmp_path / "unlabeled.pkl", "wb") as f:
    pickle.dump({b"data": images}, f)
  result = evaluate.predict(config, workdir, str(tmp_path / "unlabeled.pkl"),
                            str(tmp_path / "p.csv"))
  with open(tmp_path / "p.csv") as f:
    predicted = np.array([int(row[1]) for row in list(csv.reader(f))[1:]])
  assert result["count"] == 256
  assert (predicted == labels).mean() == pytest.approx(metrics["accuracy"], abs=1e-9)


def test_a_layout_1_workdir_resumes_exactly_as_the_run_would_have_gone_on(v1_run):
  workdir, config, _ = v1_run
  state, history = train.train_and_evaluate(config, workdir)
  # Layout 1 kept the whitening filters in batch_stats: compare them there.
  variables = jax.device_get({"params": state.params,
                              "batch_stats": {**state.batch_stats, **(state.constants or {})}})
  got = {jax.tree_util.keystr(path): np.asarray(value)
         for path, value in jax.tree_util.tree_leaves_with_path(variables)}
  expected = np.load(os.path.join(workdir, "expected_final_variables.npz"))
  assert sorted(got) == sorted(expected.files)
  # Bit for bit on the jax and kind of CPU that wrote the files; another XLA (the lowest
  # versions CI tests) or vector width may round a float32 sum otherwise: 3e-8 seen on
  # jax 0.7.2, 1.5e-8 on an AVX2-only EPYC with jax 0.10.2.
  exact = _as_where_written()
  for key in expected.files:
    np.testing.assert_allclose(got[key], expected[key], rtol=0 if exact else 1e-5,
                               atol=0 if exact else 1e-6, err_msg=key)
  with open(os.path.join(workdir, "expected_history.json")) as f:
    expected_history = untimed(json.load(f))
  assert untimed(history) == (expected_history if exact else
                              [pytest.approx(h, rel=1e-4, abs=1e-6) for h in expected_history])
  # The workdir now mixes layouts: both read.
  with checkpoints.reading_manager(workdir) as manager:
    layouts = {step: checkpoints.read_meta(manager, step).get("layout", 1)
               for step in manager.all_steps()}
  assert layouts == {16: 1, 21: 1, 32: checkpoints.LAYOUT}
  for step in (16, 32):
    assert evaluate.evaluate_checkpoint(config, workdir, step=step)["step"] == step
