"""Every config key, with defaults; configs/*.py start from `get_config()` and change a few.

Keys (README "Training" has the configs and how to override them):
  model.name           preset (models.PRESET_NAMES: "shallow", "deep", "fast", "fast_large");
                       every other model.<field> is a field of the preset's family
                       (models.ResNet or models.FastResNet), None for the preset's value,
                       set in a config file or on the command line
                       (--config.model.stage_widths='(32,64,128)')
  dtype                compute dtype: "auto" (bfloat16 on GPU and TPU, float32 on CPU),
                       "float32", "bfloat16" (parameters, BatchNorm statistics and the
                       loss stay float32 whatever it is)
  seed                 initialisation, dropout, data order and augmentation
  num_epochs, batch_size (global), eval_batch_size, label_smoothing
  checkpoint_every_epochs, keep_checkpoints, eval.tta, skip_nonfinite_steps
  data.*               source, dir, tfds_data_dir, train_split, eval_split,
                       augment.<field>, normalization, pipeline ("tfdata", "device"),
                       synthetic_train_size, synthetic_test_size
  optimizer.*          see resnet_jax/optim.py
  cpu.xla_options, cpu.fusion_barriers, compilation_cache_dir: speed settings, below
"""

import dataclasses
import typing

import ml_collections

from resnet_jax import models, preprocessing

# Every ResNet field but the compute dtype (config.dtype), as an unset placeholder of its
# type, so that the command line can set any of them (a key must exist to be overridden).
MODEL_FIELDS = {f.name: tuple if typing.get_origin(f.type) else f.type
                for family in (models.ResNet, models.FastResNet)
                for f in dataclasses.fields(family)
                if f.name in models.family_fields(family) and f.name != "dtype"}


def lookup(config: ml_collections.ConfigDict, key: str):
  """The value at a dotted key, e.g. "optimizer.plateau.factor" ("" is the config itself)."""
  for part in filter(None, key.split(".")):
    config = config[part]
  return config


def model_fields(config: ml_collections.ConfigDict) -> tuple[str, dict]:
  """(preset name, the ResNet fields the config sets): unset (None) fields are the preset's."""
  fields = {k: v for k, v in config.model.items() if v is not None}
  return fields.pop("name"), fields


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(
      {"name": "shallow", **{name: ml_collections.config_dict.placeholder(kind)
                             for name, kind in MODEL_FIELDS.items()}})
  config.dtype = "auto"
  config.seed = 0
  config.num_epochs = 30
  config.batch_size = 128
  config.eval_batch_size = 500
  config.label_smoothing = 0.0
  config.skip_nonfinite_steps = False  # True: skip NaN/inf steps instead of stopping
  config.checkpoint_every_epochs = 1
  config.keep_checkpoints = 3  # the last 3, plus the best by validation accuracy

  # Speed settings for XLA:CPU only (ignored on GPU and TPU); measured in
  # docs/performance.md. They change how, not what, the model computes.
  config.cpu = ml_collections.ConfigDict()
  # XLA debug options for the train and eval steps. YNNPACK's fusions (jaxlib
  # 0.10's default) made the shallow train step ~20% slower and eval ~40% slower
  # on the project's CPU than Eigen's kernels; "" turns them all off. LLVM
  # optimisation level 1 instead of 2 compiles the deep model's step in ~14 s
  # instead of ~18 s at the same speed (convolutions are precompiled kernels).
  config.cpu.xla_options = ml_collections.ConfigDict(
      {"xla_cpu_experimental_ynn_fusion_type": "", "xla_backend_optimization_level": 1})
  config.cpu.fusion_barriers = True  # see layers.fusion_barrier
  # Jax's persistent compilation cache: a rerun or resume skips compiling the
  # steps ("" turns it off).
  config.compilation_cache_dir = "~/.cache/resnet_jax/jax"

  config.eval = ml_collections.ConfigDict()
  # Test-time augmentation level (resnet_jax/tta.py): 0 none, 1 mirror, 2 mirror and
  # one-pixel shifts; used by --mode eval and predict and by the final epoch's log.
  config.eval.tta = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "tfds"
  config.data.dir = ""
  config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.augment = preprocessing.augment_settings("shallow")
  config.data.normalization = "seed"
  config.data.pipeline = "tfdata"
  config.data.synthetic_train_size = 512
  config.data.synthetic_test_size = 256

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.optimizer.decay = "all"
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.schedule = "constant"
  config.optimizer.step_epochs = 10
  config.optimizer.gamma = 0.1
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.start_factor = 0.2  # "triangle": the lr starts at this fraction of the peak
  config.optimizer.end_factor = 0.07  # "triangle": and ends at this fraction
  config.optimizer.per_examples = 0  # 0, or lr and weight decay stated per this many examples
  config.optimizer.bn_bias_lr_multiplier = 1.0
  config.optimizer.whiten_bias_epochs = 0.0
  config.optimizer.whiten_bias_lr_multiplier = 1.0
  config.optimizer.lookahead_every = 0  # 0, or train steps between lookahead averages
  config.optimizer.lookahead_decay = 0.95 ** 5
  config.optimizer.accumulation_steps = 1
  config.optimizer.muon = ml_collections.ConfigDict()
  config.optimizer.muon.enabled = False  # convolution kernels with Muon (airbench94_muon's)
  config.optimizer.muon.learning_rate = 0.24
  config.optimizer.muon.momentum = 0.6
  config.optimizer.muon.ns_steps = 3  # Newton-Schulz iterations
  config.optimizer.plateau = ml_collections.ConfigDict()
  config.optimizer.plateau.enabled = False
  config.optimizer.plateau.metric = "train_loss"
  config.optimizer.plateau.factor = 0.1
  config.optimizer.plateau.patience = 2
  config.optimizer.plateau.cooldown = 0
  config.optimizer.plateau.rtol = 1e-4
  return config
