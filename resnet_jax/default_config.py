"""Every config key, with defaults; configs/*.py start from `get_config()` and change a few.

This file holds what every run uses; each other section comes from the code that
reads it, which documents its keys:
  model.name           a preset (models.PRESET_NAMES); every other model.<field> is a field
                       of its family (models/resnet.py, models/fast_resnet.py), None for the
                       preset's value (--config.model.stage_widths='(32,64,128)')
  optimizer.*          resnet_jax/optim.py (default_config); optimizer.groups.<label> the
                       family's parameter groups (optim.group_config)
  cpu.*                XLA:CPU speed settings, resnet_jax/xla_cpu.py (default_config)
  selection.*          which examples each step trains on, resnet_jax/selection.py
  data.augment.*       resnet_jax/data/augmentations.py
Any key is overridden on the command line as --config.a.b=value.
"""

import ml_collections

from resnet_jax import models, optim, selection, xla_cpu
from resnet_jax.data import augmentations


def lookup(config: ml_collections.ConfigDict, key: str):
  """The value at a dotted key, e.g. "optimizer.plateau.factor" ("" is the config itself)."""
  for part in filter(None, key.split(".")):
    config = config[part]
  return config


def set_model(config: ml_collections.ConfigDict, name: str) -> None:
  """Makes `config` train the preset `name` with its family's keys: config.model its fields,
  unset (a key must exist to be overridden), config.optimizer.groups its parameter groups."""
  family = models.family_of(name)
  config.model = ml_collections.ConfigDict(
      {"name": name, **{field: ml_collections.config_dict.placeholder(kind)
                        for field, kind in models.config_fields(family).items()}})
  config.optimizer.groups = optim.group_config(family.groups)


def get_config(model: str = "shallow") -> ml_collections.ConfigDict:
  """Every key with its default, for the preset `model` (its family's fields and groups)."""
  config = ml_collections.ConfigDict()
  # Compute dtype: "auto" (bfloat16 on GPU, TPU and CPUs with bfloat16 instructions,
  # float32 on other CPUs: xla_cpu.auto_dtype; a resumed run keeps its own), "float32",
  # "bfloat16", "float16"; parameters, BatchNorm statistics and the loss stay float32.
  config.dtype = "auto"
  config.seed = 0  # initialisation, dropout, data order and augmentation
  config.num_epochs = 30
  config.batch_size = 128  # global, over every device and process
  config.eval_batch_size = 500
  config.label_smoothing = 0.0
  config.skip_nonfinite_steps = False  # True: skip NaN/inf steps instead of stopping
  config.checkpoint_every_epochs = 1
  # Minutes (0: off): also checkpoint mid-epoch whenever this long has passed since the
  # newest checkpoint (at the first step when there is none), so that a kill with no signal
  # first (SIGKILL, a lost VM) loses about this much of a long epoch, not all of it.
  config.checkpoint_every_minutes = 0.0
  config.keep_checkpoints = 3  # the last 3, plus the best by validation accuracy
  # Jax's persistent compilation cache: a rerun or resume skips compiling the
  # steps ("" turns it off).
  config.compilation_cache_dir = "~/.cache/resnet_jax/jax"
  config.cpu = xla_cpu.default_config()

  config.eval = ml_collections.ConfigDict()
  # Test-time augmentation level (resnet_jax/tta.py): 0 none, 1 mirror, 2 mirror and
  # two one-pixel shifts, 3 mirror and all eight; used by --mode eval and predict and by
  # the final epoch's log.
  config.eval.tta = 0

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar10"  # data/datasets.py: DATASETS
  config.data.source = "tfds"  # data/sources.py: "tfds", "files" (+ dir), "synthetic"
  config.data.dir = ""
  config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  config.data.train_split = "train"  # TFDS split strings (data/splits.py)
  config.data.eval_split = "test"
  config.data.augment = augmentations.preset("shallow")
  # "minus_one_to_one": (x - 0.5) / 0.5; "cifar": the dataset's statistics (data/datasets.py)
  config.data.normalization = "minus_one_to_one"
  config.data.pipeline = "tfdata"  # "tfdata" (host) or "device" (data/batches.py)
  config.data.synthetic_train_size = 512
  config.data.synthetic_test_size = 256

  config.optimizer = optim.default_config()
  config.selection = selection.default_config()
  set_model(config, model)
  return config
