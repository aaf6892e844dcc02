"""Checks a training config before any compute: one-line errors naming key and value."""

import jax

from resnet_jax import default_config, model_setup, models, optim, selection, tta, xla_cpu
from resnet_jax.data import augmentations, batches, datasets, sources, splits
from resnet_jax.models import layers

# Keys that moved: where a config that sets the old one must set it now.
MOVED_KEYS = {"model.fusion_barriers": "cpu.fusion_barriers",
              "optimizer.bn_bias_lr_multiplier": "optimizer.groups.bn_bias.lr_multiplier",
              "optimizer.whiten_bias_lr_multiplier": "optimizer.groups.whiten_bias.lr_multiplier",
              "optimizer.whiten_bias_epochs": "optimizer.groups.whiten_bias.epochs"}


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


def _non_negative(config, *keys: str) -> None:
  for key in keys:
    value = default_config.lookup(config, key)
    if not value >= 0:
      raise ConfigError(f"config.{key}={value!r} must be >= 0")


def _fraction(config, *keys: str) -> None:
  for key in keys:
    value = default_config.lookup(config, key)
    if not 0 <= value < 1:
      raise ConfigError(f"config.{key}={value} is not in [0, 1)")


def _check_moved_keys(config) -> None:
  for old, new in MOVED_KEYS.items():
    parent, _, leaf = old.rpartition(".")
    if leaf in default_config.lookup(config, parent):
      raise ConfigError(f"config.{old} is not a key of config.{parent}; set config.{new}")


def _check_optimizer(config) -> None:
  _choice(config, "optimizer.name", optim.OPTIMIZERS)
  _choice(config, "optimizer.schedule", optim.SCHEDULES)
  _choice(config, "optimizer.decay", optim.DECAY_TARGETS)
  _choice(config, "optimizer.plateau.metric", optim.PLATEAU_METRICS)
  _positive(config, "optimizer.learning_rate", "optimizer.accumulation_steps",
            "optimizer.muon.learning_rate", "optimizer.muon.ns_steps",
            *(f"optimizer.groups.{label}.lr_multiplier" for label in config.optimizer.groups))
  for label, settings in config.optimizer.groups.items():
    if not settings.epochs >= 0:
      raise ConfigError(f"config.optimizer.groups.{label}.epochs={settings.epochs} must be >= 0 "
                        "(0: the whole run)")
  if config.optimizer.per_examples and config.optimizer.name != "sgd":
    raise ConfigError(f"config.optimizer.per_examples={config.optimizer.per_examples} is for "
                      f"optimizer.name='sgd' (airbench's), not {config.optimizer.name!r}")
  _positive(config, "optimizer.eps", "optimizer.step_epochs", "optimizer.gamma")
  # Momentum 1 never forgets (and per_examples divides by 1 - momentum); decays are rates.
  _fraction(config, "optimizer.muon.momentum", "optimizer.ema_decay", "optimizer.momentum",
            "optimizer.b1", "optimizer.b2", "optimizer.lookahead_decay")
  # A negative per_examples or factor would climb the loss instead of descending it.
  _non_negative(config, "optimizer.weight_decay", "optimizer.per_examples",
                "optimizer.warmup_epochs", "optimizer.start_factor", "optimizer.end_factor",
                "optimizer.lookahead_every", "optimizer.plateau.patience",
                "optimizer.plateau.cooldown", "optimizer.plateau.rtol")
  if not 0 < config.optimizer.plateau.factor < 1:
    raise ConfigError(f"config.optimizer.plateau.factor={config.optimizer.plateau.factor} "
                      "is not in (0, 1)")


def _check_data(config) -> None:
  _choice(config, "data.dataset", datasets.DATASETS)
  _choice(config, "data.source", sources.SOURCES)
  _choice(config, "data.pipeline", batches.PIPELINES)
  _choice(config, "data.normalization", datasets.NORMALIZATIONS)
  try:
    augmentations.check(config.data.augment)
  except ValueError as e:  # its messages already name config.data.augment.<key>
    raise ConfigError(str(e)) from e
  side = min(datasets.get(config.data).image_shape[:2])
  if config.data.augment.reflect_crop >= side:  # a mirror of the image needs an image to mirror
    raise ConfigError(f"config.data.augment.reflect_crop={config.data.augment.reflect_crop} "
                      f"must be below the images' side, {side} pixels")
  for key in ("train_split", "eval_split"):
    try:
      splits.check_split(config.data[key], datasets.get(config.data))
    except datasets.DataError as e:
      raise ConfigError(f"config.data.{key}: {e}") from e


def _check_model(config) -> None:
  _choice(config, "model.name", models.PRESET_NAMES)
  name, fields = model_setup.fields(config)
  family = models.family_of(name)
  family_name = f"{family.module.__name__}, the family of config.model.name={name!r}"
  foreign = sorted(set(fields) - set(models.config_fields(family)))
  if foreign:
    raise ConfigError(f"config.model.{foreign[0]} is not a field of {family_name}; its fields "
                      f"are {sorted(models.config_fields(family))}")
  foreign = sorted(set(config.optimizer.groups) - set(family.groups))
  if foreign:
    raise ConfigError(f"config.optimizer.groups.{foreign[0]}: {family_name}, has no such "
                      f"parameter group; its groups are {list(family.groups)}")
  classes = datasets.get(config.data).num_classes
  if fields.get("num_classes", classes) != classes:
    raise ConfigError(f"config.model.num_classes={fields['num_classes']}, but "
                      f"config.data.dataset={config.data.dataset!r} has {classes} classes")
  try:
    # The model every run builds (the dataset's head, its budget); any dtype has its fields.
    model_setup.build_model(config, dtype="float32")
  except models.ParamBudgetError as e:
    raise ConfigError(f"config.model.name={name!r} with its fields: {e}") from e
  except ValueError as e:  # a field's error says "model.<field>"
    raise ConfigError(f"config.{e}" if str(e).startswith("model") else f"config.model: {e}") \
        from e


def _check_selection(config) -> None:
  _fraction(config, "selection.fraction")
  if not selection.enabled(config):
    return
  fraction, (name, fields) = config.selection.fraction, model_setup.fields(config)
  if "widths" not in models.config_fields(models.family_of(name)):
    with_widths = [n for n in models.PRESET_NAMES
                   if "widths" in models.config_fields(models.family_of(n))]
    raise ConfigError(f"config.selection.fraction={fraction} needs a proxy: config.model at "
                      f"other widths, and config.model.name={name!r} has no `widths` field "
                      f"(presets with one: {with_widths})")
  if config.optimizer.accumulation_steps != 1:
    raise ConfigError(f"config.selection.fraction={fraction} chooses examples within a step; "
                      "config.optimizer.accumulation_steps="
                      f"{config.optimizer.accumulation_steps} must be 1 with it")
  widths = tuple(config.selection.proxy_widths)
  model_widths = models.get_model(name, **fields).widths
  if len(widths) != len(model_widths) or not all(isinstance(w, int) and w > 0 for w in widths):
    raise ConfigError(f"config.selection.proxy_widths={widths} must be {len(model_widths)} "
                      f"positive integers, one a group of config.model's {tuple(model_widths)}")


def _check_seed(config) -> None:
  # jax.random.PRNGKey keeps 32 bits of a seed below 2**63 (-1 gives 2**32 - 1's key, 2**32
  # gives 0's) and overflows above it; numpy's data order refuses a negative one mid-run.
  if not 0 <= config.seed < 2**32:
    raise ConfigError(f"config.seed={config.seed} must be an integer in [0, 2**32)")


def validate(config) -> None:
  """Raises ConfigError for the first bad value found."""
  _check_moved_keys(config)
  _choice(config, "dtype", ["auto", *sorted(layers.DTYPES)])
  _choice(config, "eval.tta", tta.LEVELS)
  _check_seed(config)
  _positive(config, "num_epochs", "batch_size", "eval_batch_size", "checkpoint_every_epochs",
            "keep_checkpoints")
  _fraction(config, "label_smoothing")
  if not 0 <= config.checkpoint_every_minutes < float("inf"):
    raise ConfigError(f"config.checkpoint_every_minutes={config.checkpoint_every_minutes} "
                      "must be >= 0 (0: off)")
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % jax.device_count():
      raise ConfigError(f"config.{key}={config[key]} is not divisible by the "
                        f"{jax.device_count()} devices")
  _check_optimizer(config)
  _check_data(config)
  try:
    xla_cpu.check_options(config)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _check_model(config)
  _check_selection(config)
