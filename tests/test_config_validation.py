"""Config values that used to end in a traceback: refused before any compute, in one line
naming the key and value and saying what is allowed."""

import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import config_validation, default_config, train
from resnet_jax.data import datasets
from tests.conftest import REPO, smoke_config

# The smoke config as a FastResNet: that family's keys, unset.
FAST = {"model": "fast"}


@pytest.mark.parametrize("changes,message", [
    ({"seed": -1}, r"config.seed=-1 must be an integer in \[0, 2\*\*32\)"),
    ({"seed": 2**32}, r"config.seed=4294967296 must be an integer in \[0, 2\*\*32\)"),
    ({"seed": 2**70}, r"config.seed=1180591620717411303424 must be an integer in \[0, 2\*\*32\)"),
    ({"model.stage_widths": (0, 16, 32)},
     r"config.model.stage_widths=\(0, 16, 32\): every entry must be positive"),
    ({"model.stem_width": -8}, r"config.model.stem_width=-8 must be positive"),
    ({"model.stage_blocks": (1, 0, 1)},
     r"config.model.stage_blocks=\(1, 0, 1\): every entry must be positive"),
    ({"model.stage_strides": (1, 0, 2)},
     r"config.model.stage_strides=\(1, 0, 2\): every entry must be positive"),
    ({"model.head_pool_size": 0}, r"config.model.head_pool_size=0 must be positive"),
    ({**FAST, "model.widths": (16, -4, 16)},
     r"config.model.widths=\(16, -4, 16\): every entry must be positive"),
    ({**FAST, "model.whiten_kernel_size": 0},
     r"config.model.whiten_kernel_size=0 must be positive"),
    ({**FAST, "model.branch_depth": 0}, r"config.model.branch_depth=0 must be positive"),
    ({"checkpoint_every_epochs": 0}, r"config.checkpoint_every_epochs=0 must be positive"),
    ({"keep_checkpoints": -1}, r"config.keep_checkpoints=-1 must be positive"),
    ({"checkpoint_every_minutes": -1.0},
     r"config.checkpoint_every_minutes=-1.0 must be >= 0 \(0: off\)"),
])
def test_bad_value_is_one_line_naming_key_and_value(changes, message):
  with pytest.raises(config_validation.ConfigError, match=message) as info:
    config_validation.validate(smoke_config(**changes))
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seeds_at_either_end_of_the_range_validate(seed):
  config_validation.validate(smoke_config(seed=seed))


@pytest.mark.parametrize("changes,message", [
    ({"batch_size": 1024}, r"config.batch_size=1024 x config.optimizer.accumulation_steps=1 "
                           r"must be at most the 512 examples of config.data.train_split='train'"),
    ({"batch_size": 256, "optimizer.accumulation_steps": 4},
     r"config.batch_size=256 x config.optimizer.accumulation_steps=4 must be at most the 512 "),
])
def test_batch_larger_than_the_training_split_fails_before_the_workdir(tmp_path, changes,
                                                                       message):
  """The split's size is known only once loaded (synthetic: 512 examples)."""
  workdir = tmp_path / "run"
  with pytest.raises(datasets.DataError, match=message):
    train.train_and_evaluate(smoke_config(**changes), str(workdir))
  assert not workdir.exists()


def test_cli_negative_seed_exits_1_in_one_line_and_makes_no_workdir(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main", "--config", "configs/smoke.py",
       "--workdir", str(workdir), "--config.seed=-1"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert "error: config.seed=-1 must be an integer in [0, 2**32)" in result.stderr
  assert not os.path.exists(workdir)


def test_a_config_holds_and_prints_only_its_family_s_keys():
  shallow, fast = default_config.get_config(), default_config.get_config("fast")
  assert "stage_widths" in shallow.model and "widths" not in shallow.model
  assert "widths" in fast.model and "stage_widths" not in fast.model
  assert "whiten_kernel_size" not in str(shallow) and "stem_width" not in str(fast)
  assert list(shallow.optimizer.groups) == ["bn_bias"]
  assert list(fast.optimizer.groups) == ["bn_bias", "whiten_bias"]


def test_the_old_name_of_the_minus_one_to_one_normalization_still_works():
  """config.data.normalization="seed", its name before, normalises as "minus_one_to_one"."""
  config = smoke_config(**{"data.normalization": "seed"})
  config_validation.validate(config)
  old, new = datasets.normalization(config.data), datasets.normalization(smoke_config().data)
  assert smoke_config().data.normalization == "minus_one_to_one"
  np.testing.assert_array_equal(old, new)
