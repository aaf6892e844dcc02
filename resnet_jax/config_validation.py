"""Checks a training config before any compute: one-line errors naming key and value."""

import jax
import jax.numpy as jnp

from resnet_jax import data_sources, default_config, models, optim, preprocessing, tta

PIPELINES = ("tfdata", "device")


class ConfigError(ValueError):
  """A config value that cannot work; the message names `config.<key>=<value>`."""


def _choice(config, key: str, allowed) -> None:
  value = default_config.lookup(config, key)
  if value not in allowed:
    raise ConfigError(f"config.{key}={value!r} is not one of {list(allowed)}")


def _positive(config, *keys: str) -> None:
  for key in keys:
    value = default_config.lookup(config, key)
    if not value > 0:
      raise ConfigError(f"config.{key}={value!r} must be positive")


def _fraction(config, *keys: str) -> None:
  for key in keys:
    value = default_config.lookup(config, key)
    if not 0 <= value < 1:
      raise ConfigError(f"config.{key}={value} is not in [0, 1)")


def _check_xla_options(config) -> None:
  """Compiles a trivial function with config.cpu.xla_options: XLA names a bad option or value."""
  options = dict(config.cpu.xla_options)
  if not options or jax.default_backend() != "cpu":
    return
  try:
    jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.zeros(())).compile()
  except jax.errors.JaxRuntimeError as e:
    raise ConfigError(f"config.cpu.xla_options={options}: {e}") from e


def validate(config) -> None:
  """Raises ConfigError for the first bad value found."""
  _choice(config, "model.name", models.PRESET_NAMES)
  _choice(config, "optimizer.name", optim.OPTIMIZERS)
  _choice(config, "optimizer.schedule", optim.SCHEDULES)
  _choice(config, "optimizer.decay", optim.DECAY_TARGETS)
  _choice(config, "optimizer.plateau.metric", optim.PLATEAU_METRICS)
  _choice(config, "data.source", data_sources.SOURCES)
  _choice(config, "data.pipeline", PIPELINES)
  _choice(config, "data.normalization", sorted(preprocessing.NORMALIZATIONS))
  _choice(config, "dtype", ["auto", *sorted(models.DTYPES)])
  _choice(config, "eval.tta", tta.LEVELS)
  _positive(config, "optimizer.learning_rate", "num_epochs", "batch_size", "eval_batch_size",
            "optimizer.accumulation_steps")
  if config.optimizer.per_examples and config.optimizer.name != "sgd":
    raise ConfigError(f"config.optimizer.per_examples={config.optimizer.per_examples} is for "
                      f"optimizer.name='sgd' (airbench's), not {config.optimizer.name!r}")
  _positive(config, "optimizer.bn_bias_lr_multiplier", "optimizer.whiten_bias_lr_multiplier",
            "optimizer.muon.learning_rate", "optimizer.muon.ns_steps")
  _fraction(config, "label_smoothing", "optimizer.muon.momentum")
  if config.optimizer.weight_decay < 0:
    raise ConfigError(f"config.optimizer.weight_decay={config.optimizer.weight_decay} "
                      "must be >= 0")
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % jax.device_count():
      raise ConfigError(f"config.{key}={config[key]} is not divisible by the "
                        f"{jax.device_count()} devices")
  try:
    preprocessing.check_augment(config.data.augment)
  except ValueError as e:  # its messages already name config.data.augment.<key>
    raise ConfigError(str(e)) from e
  for key in ("train_split", "eval_split"):
    try:
      data_sources.check_split(config.data[key])
    except data_sources.DataError as e:
      raise ConfigError(f"config.data.{key}: {e}") from e
  _check_xla_options(config)
  for key in models.RUNTIME_FIELDS:
    if key in config.model:
      raise ConfigError(f"config.model.{key} is not a model field; set config.cpu.{key}")
  name, fields = default_config.model_fields(config)
  try:
    models.get_model(name, **fields)  # any compute dtype has the same fields
  except ValueError as e:  # field and budget errors say "model.<field>" or the count
    raise ConfigError(f"config.{e}" if str(e).startswith("model") else f"config.model: {e}") \
        from e
