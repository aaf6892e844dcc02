"""Config values that used to end in a traceback: refused before any compute, in one line
naming the key and value and saying what is allowed, from Python and the command line."""

import functools
import importlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import config_validation, default_config, main, optim, train
from resnet_jax.data import datasets
from tests.conftest import REPO, smoke_config

# The smoke config as a FastResNet: that family's keys, unset.
FAST = {"model": "fast"}
# A FastResNet training each step on its hardest half, as a proxy ranks them.
SELECTING = {**FAST, "model.widths": (8, 16, 16), "selection.fraction": 0.5,
             "selection.proxy_widths": (4, 8, 8)}


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
    ({"model.name": "resnet50"}, r"config.model.name='resnet50' is not one of"),
    ({"optimizer.name": "lamb"}, r"config.optimizer.name='lamb' is not one of"),
    ({"optimizer.schedule": "linear"}, r"config.optimizer.schedule='linear' is not one of"),
    ({"optimizer.learning_rate": -1.0}, r"config.optimizer.learning_rate=-1.0 must be positive"),
    ({"num_epochs": 0}, r"config.num_epochs=0 must be positive"),
    ({"batch_size": 0}, r"config.batch_size=0 must be positive"),
    ({"data.augment.hflip": 2.0}, r"config.data.augment.hflip=2.0 is a probability"),
    ({"data.eval_split": "valid"}, r"config.data.eval_split: split 'valid': unknown split"),
    ({"eval.tta": 4}, r"config.eval.tta=4 is not one of \[0, 1, 2, 3\]"),
    ({"optimizer.per_examples": 1024},
     r"config.optimizer.per_examples=1024 is for optimizer.name='sgd' \(airbench's\), not 'adam'"),
    ({"optimizer.groups.bn_bias.lr_multiplier": 0.0},
     r"config.optimizer.groups.bn_bias.lr_multiplier=0.0 must be positive"),
    ({"optimizer.muon.ns_steps": 0}, r"config.optimizer.muon.ns_steps=0 must be positive"),
    ({"optimizer.muon.momentum": 1.0}, r"config.optimizer.muon.momentum=1.0 is not in \[0, 1\)"),
    ({"optimizer.ema_decay": 1.0}, r"config.optimizer.ema_decay=1.0 is not in \[0, 1\)"),
    ({"model.stage_widths": (64, 128, 1024)}, r"over its budget max_params=5,000,000"),
    ({"model.inner_activation": "tanh"}, r"config.model.inner_activation='tanh'"),
    ({"cpu.xla_options": {"xla_cpu_no_such_option": "1"}},
     r"config.cpu.xla_options=\{'xla_cpu_no_such_option': '1'\}: .*xla_cpu_no_such_option"),
    ({"cpu.bfloat16_xla_options": {"xla_cpu_no_such_option": "1"}},  # checked on every CPU
     r"config.cpu.bfloat16_xla_options=\{'xla_cpu_no_such_option': '1'\}: "),
    ({"cpu.xla_options": {"xla_backend_optimization_level": None}},  # jax's TypeError before
     r"config.cpu.xla_options.xla_backend_optimization_level=None \(NoneType\) is not a "
     r"string, bool, int or float"),
    ({"model.fusion_barriers": True},
     r"config.model.fusion_barriers is not a key of config.model; set config.cpu.fusion_barriers"),
    # An old config file setting the keys of before, or another family's field or group.
    ({"optimizer.whiten_bias_epochs": 3.0}, r"config.optimizer.whiten_bias_epochs is not a key "
     r"of config.optimizer; set config.optimizer.groups.whiten_bias.epochs"),
    ({"model.widths": (8, 16, 16)}, r"config.model.widths is not a field of ResNet, the family "
     r"of config.model.name='shallow'; its fields are \['head_pool_size', "),
    ({"model": "fast", "model.name": "shallow"}, r"config.optimizer.groups.whiten_bias: ResNet, "
     r"the family of config.model.name='shallow', has no such parameter group; its groups are "
     r"\['bn_bias'\]"),
    ({"optimizer.groups.bn_bias.epochs": -1.0},
     r"config.optimizer.groups.bn_bias.epochs=-1.0 must be >= 0 \(0: the whole run\)"),
    ({"model.num_classes": 100},
     r"config.model.num_classes=100, but config.data.dataset='cifar10' has 10 classes"),
    ({"data.dataset": "mnist"},
     r"config.data.dataset='mnist' is not one of \['cifar10', 'cifar100'\]"),
    ({"data.dataset": "cifar100", "model.num_classes": 10},
     r"config.model.num_classes=10, but config.data.dataset='cifar100' has 100 classes"),
    ({"data.source": "kaggle"}, r"config.data.source='kaggle' is not one of \['files', "),
    # The budget counts the dataset's head: deep's 100-class one puts it over 5M.
    ({"model": "deep", "data.dataset": "cifar100"}, r"config.model.name='deep' with its "
     r"fields: 5,207,139 trainable parameters, over its budget max_params=5,000,000"),
    ({"optimizer.weight_decay": -5e-4}, r"config.optimizer.weight_decay=-0.0005 must be >= 0"),
    # Values optax would take and train backwards with, or divide by zero on.
    ({"optimizer.name": "sgd", "optimizer.per_examples": -1024},
     r"config.optimizer.per_examples=-1024 must be >= 0"),
    ({"optimizer.momentum": 1.0}, r"config.optimizer.momentum=1.0 is not in \[0, 1\)"),
    ({"optimizer.warmup_epochs": -1.0}, r"config.optimizer.warmup_epochs=-1.0 must be >= 0"),
    ({"optimizer.gamma": 0.0}, r"config.optimizer.gamma=0.0 must be positive"),
    ({"optimizer.plateau.factor": 1.5},
     r"config.optimizer.plateau.factor=1.5 is not in \(0, 1\)"),
    ({"data.augment.alternating_flip": 0.5},
     r"config.data.augment.alternating_flip=0.5 must be 0 or 1"),
    ({"data.augment.brightness": 1.5}, r"config.data.augment.brightness=1.5 must be < 1"),
    ({"data.augment.hue": 0.6}, r"config.data.augment.hue=0.6 must be <= 0.5"),
    ({"data.augment.rotation": -10.0},
     r"config.data.augment.rotation=-10.0 must be a finite number >= 0"),
    # NaN and inf passed every comparison; a fraction of a pixel was truncated to none.
    ({"data.augment.zoom": float("nan")},
     r"config.data.augment.zoom=nan must be a finite number >= 0"),
    ({"data.augment.reflect_crop": float("inf")},
     r"config.data.augment.reflect_crop=inf must be a finite number >= 0"),
    ({"data.augment.reflect_crop": 0.5},
     r"config.data.augment.reflect_crop=0.5 must be a whole number of pixels"),
    # tf.data's mirror padding fails mid-run past the image; jax's wrapped around silently.
    ({"data.augment.reflect_crop": 32.0},
     r"config.data.augment.reflect_crop=32.0 must be below the images' side, 32 pixels"),
    # Hardest-example selection (selection.py) needs a proxy of the model's family.
    ({**SELECTING, "selection.fraction": 1.0}, r"config.selection.fraction=1.0 is not in \[0, 1\)"),
    ({"selection.fraction": 0.5}, r"config.selection.fraction=0.5 needs a proxy: config.model at "
     r"other widths, and config.model.name='shallow' has no `widths` field \(presets with one: "),
    ({**SELECTING, "optimizer.accumulation_steps": 2}, r"config.selection.fraction=0.5 chooses "
     r"examples within a step; config.optimizer.accumulation_steps=2 must be 1 with it"),
    ({**SELECTING, "selection.proxy_widths": (4, 8)}, r"config.selection.proxy_widths=\(4, 8\) "
     r"must be 3 positive integers, one a group of config.model's \(8, 16, 16\)"),
])
def test_bad_value_is_one_line_naming_key_and_value(changes, message):
  with pytest.raises(config_validation.ConfigError, match=message) as info:
    config_validation.validate(smoke_config(**changes))
  assert "\n" not in str(info.value)


def test_an_unknown_augmentation_is_named_in_one_line():
  config = smoke_config()
  config.data.augment.unlock()
  config.data.augment.mixup = 0.2
  with pytest.raises(config_validation.ConfigError,
                     match=r"unknown augmentation\(s\) \['mixup'\]") as info:
    config_validation.validate(config)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(
    p.stem for p in pathlib.Path(REPO, "configs").glob("*.py") if p.stem != "__init__"))
def test_every_shipped_config_validates(name):
  """A typo or an out-of-range value in configs/*.py fails here, not after a user's download."""
  config_validation.validate(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize("name,key,fraction", [
    ("fast", "optimizer.warmup_epochs", 0.23),
    ("fast_large", "optimizer.warmup_epochs", 0.23),
    ("frontier", "optimizer.warmup_epochs", 0.23),
    ("fast_large_muon", "optimizer.groups.whiten_bias.epochs", 0.375),
    ("fast_large_half", "optimizer.groups.whiten_bias.epochs", 0.375),
    ("fast_wide_muon", "optimizer.warmup_epochs", 0.23),
    ("fast_wide_muon", "optimizer.groups.whiten_bias.epochs", 0.375)])
def test_a_recipe_s_epoch_fractions_follow_num_epochs(name, key, fraction):
  """--config.num_epochs=4 on frontier: its warm-up peaks at 0.92 epochs, not at 9.2 (a
  rate that rose all run); a value given explicitly wins over the fraction."""
  config = importlib.import_module(f"configs.{name}").get_config()
  value = lambda: functools.reduce(getattr, key.split("."), config)
  assert value() == pytest.approx(fraction * config.num_epochs)
  config.num_epochs = 4  # what --config.num_epochs=4 does
  assert value() == pytest.approx(fraction * 4)
  assert optim.warmup_problem(config.optimizer, config.num_epochs) is None
  config.update_from_flattened_dict({key: 1.5})
  config.num_epochs = 8
  assert value() == 1.5


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


@pytest.mark.parametrize("args,message", [
    (["--config.optimizer.learning_rate=-0.1"],
     "error: config.optimizer.learning_rate=-0.1 must be positive"),
    (["--config.optimizer.learnig_rate=0.1"],
     "error: --config.optimizer.learnig_rate=0.1: config.optimizer has no key 'learnig_rate'; "
     "did you mean 'learning_rate'?"),
    (["--config.model.depth=9"],
     "error: --config.model.depth=9: config.model has no key 'depth'; no model family has it"),
    # A config holds its own family's keys: the other family's field or group is named.
    (["--config.model.widths=(8,16)"],
     "error: --config.model.widths=(8,16): config.model has no key 'widths'; it belongs to "
     "FastResNet (presets fast, fast_large, frontier): start from a config of that family"),
    (["--config.optimizer.groups.whiten_bias.epochs=2"],
     "error: --config.optimizer.groups.whiten_bias.epochs=2: config.optimizer.groups has no "
     "key 'whiten_bias'; it belongs to FastResNet"),
    # Keys of before name their new place.
    (["--config.optimizer.bn_bias_lr_multiplier=64"],
     "error: --config.optimizer.bn_bias_lr_multiplier=64: config.optimizer has no key "
     "'bn_bias_lr_multiplier'; it is config.optimizer.groups.bn_bias.lr_multiplier now"),
    # Any ResNet field is a key on the command line: this one reaches the budget check.
    (["--config.model.stage_widths=(64,128,1024)"], "over its budget max_params=5,000,000"),
    (["--config.data.source=cifar10_dir", "--config.data.dir=no/such/dir"],
     "error: config.data.dir='no/such/dir' does not exist"),
    (["--config.data.source=files"], "error: config.data.dir is empty; set it to a "
     "cifar-10-batches-py directory or cifar-10-python.tar.gz"),
    (["--config.seed=-1"], "error: config.seed=-1 must be an integer in [0, 2**32)"),
    # absl's own flag errors (their wording absl's), in the same one line.
    (["--config.num_epochs=ten"], "error: flag --config.num_epochs=ten: "),
    (["--mode=predict", "--output=labels.csv"],
     "error: --mode predict needs --input FILE and --output CSV"),
    # Multi-process flags: checked before jax's runtime starts (were its tracebacks).
    (["--num_processes=2"], "error: --num_processes 2 needs --coordinator_address HOST:PORT "
     "(process 0's) and --process_id"),
    (["--num_processes=2", "--coordinator_address=127.0.0.1:1", "--process_id=2"],
     "error: --process_id 2 is not in [0, 2) for --num_processes 2"),
    (["--distributed"], "error: jax.distributed.initialize failed: "),
])
def test_cli_rejects_bad_input_in_one_line_and_leaves_no_workdir(tmp_path, args, message):
  workdir = tmp_path / "runs" / "run"
  result = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main", "--config", "configs/shallow.py", "--workdir",
       str(workdir), *args],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert os.listdir(tmp_path) == []  # not even an empty workdir


@pytest.mark.parametrize("argv", [["--config", "configs/shalow.py"],
                                  ["--config=configs/shalow.py:fast", "--config.seed=1"]])
def test_a_mistyped_config_path_is_named_before_its_overrides(argv):
  """ml_collections goes on with a placeholder: a traceback later, or an error blaming the
  first --config.KEY."""
  with pytest.raises(SystemExit, match=r"^error: --config configs/shalow.py: no such file$"):
    main.parse_flags(["main", *argv, "--workdir", "run"])


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
