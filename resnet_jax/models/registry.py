"""The model families and what the rest of the package asks of a model.

A family is its architecture (a flax module class, in its own file) and the few
things the package needs beside it, gathered in one `Family` record: its presets,
its optimizer parameter groups, its residual blocks (where XLA:CPU's fusion
barriers go, xla_cpu.py) and, optionally, a data-dependent initialisation.
`get_model(name, **fields)` builds a preset with any field overridden,
`check_budget` enforces its parameter budget for the dataset's images; `model_config`
/ `from_config` are the JSON description saved with checkpoints. The input's shape
is the caller's (the dataset's image_shape): nothing here knows the data. No
TensorFlow here.
"""

import dataclasses
import functools
import math
import typing
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import xla_cpu
from resnet_jax.models import fast_resnet, resnet

Model = resnet.ResNet | fast_resnet.FastResNet
ImageShape = tuple[int, int, int]  # (height, width, channels)


class ParamBudgetError(ValueError):
  """A model has more trainable parameters than its `max_params` allows."""


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its module class and what the package needs of it beside the architecture.

  Attributes:
    module: the flax module class.
    presets: name -> fields, the named models of the family.
    param_labels: params -> a tree of optimizer group names ("bn_bias",
      "conv_kernel", "whiten_bias", "other"; optim.py says what each gets).
    groups: the labels among those that a config may give settings of their own
      (config.optimizer.groups.<label>: a learning-rate multiplier and the epochs
      the group trains for, optim.group_config).
    blocks: the module classes whose outputs end a residual block.
    fit_to_data: (model, variables, train_inputs) -> variables, run once before a
      fresh run's first step; `train_inputs(n)` gives the first n training
      images as the network sees them. None: nothing to fit.
  """

  module: type[nn.Module]
  presets: Mapping[str, dict]
  param_labels: Callable[[Any], Any]
  blocks: tuple[type[nn.Module], ...]
  groups: tuple[str, ...]
  fit_to_data: Callable[[Any, dict, Callable[[int], np.ndarray]], dict] | None = None


FAMILIES = (
    Family(resnet.ResNet, resnet.PRESETS, resnet.param_labels, (resnet.ResidualBlock,),
           groups=("bn_bias",)),
    Family(fast_resnet.FastResNet, fast_resnet.PRESETS, fast_resnet.param_labels,
           (fast_resnet.FastGroup,), groups=("bn_bias", "whiten_bias"),
           fit_to_data=fast_resnet.fit_to_data),
)
PRESET_NAMES = tuple(name for family in FAMILIES for name in sorted(family.presets))


def family_of(model_or_name: "Model | str") -> Family:
  """The family of a model, or of a preset name."""
  for family in FAMILIES:
    if (model_or_name in family.presets if isinstance(model_or_name, str)
        else isinstance(model_or_name, family.module)):
      return family
  raise ValueError(f"model name {model_or_name!r} is not one of {list(PRESET_NAMES)}")


def family_fields(module: type[nn.Module]) -> tuple[str, ...]:
  """The fields that describe a model of class `module` (saved with its checkpoints)."""
  return tuple(f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name"))


def config_fields(family: Family) -> dict[str, type]:
  """A family's fields but the compute dtype (config.dtype), each with its type: the keys
  of config.model beside "name" (tuple for sequences)."""
  return {f.name: tuple if typing.get_origin(f.type) else f.type
          for f in dataclasses.fields(family.module)
          if f.name in family_fields(family.module) and f.name != "dtype"}


def init_variables(model: Model, rng: jax.Array, image_shape: ImageShape) -> dict:
  """Initial variables for inputs of `image_shape`: {"params", "batch_stats"} and, for
  families with frozen, data-fitted filters, "constants".

  One jitted program, not an eager random op per parameter shape (each its own
  compile), built with xla_cpu.init_options(): the same values, in a fraction of the
  start-up time (docs/performance.md; tests/test_models.py checks they are equal).
  """
  image_shape = tuple(image_shape)
  if isinstance(rng, jax.core.Tracer):  # traced (eval_shape, jit): the caller compiles
    return _init(model, image_shape, rng)
  return _jitted_init(model, image_shape, xla_cpu.init_options())(rng)


def _init(model: Model, image_shape: ImageShape, rng: jax.Array) -> dict:
  return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)


@functools.cache
def _jitted_init(model: Model, image_shape: ImageShape,
                 options: tuple[tuple[str, Any], ...] | None) -> Callable:
  return jax.jit(functools.partial(_init, model, image_shape),
                 compiler_options=dict(options) if options else None)


def count_params(model: Model, image_shape: ImageShape) -> int:
  """Trainable parameters (the "params" collection) for inputs of `image_shape`, computed
  without allocating."""
  shapes = jax.eval_shape(functools.partial(init_variables, model, image_shape=image_shape),
                          jax.random.key(0))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))


def check_budget(model: Model, image_shape: ImageShape) -> int:
  """The model's trainable parameters for inputs of `image_shape`; ParamBudgetError when
  they exceed its `max_params`."""
  n = count_params(model, image_shape)
  if n > model.max_params:
    raise ParamBudgetError(f"{n:,} trainable parameters, over its budget "
                           f"max_params={model.max_params:,}")
  return n


def get_model(name: str, **overrides: Any) -> Model:
  """The preset `name` (PRESET_NAMES) with any field of its family overridden."""
  family = family_of(name)
  fields = family_fields(family.module)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"unknown model field(s) {unknown}; fields are {sorted(fields)}")
  # Lists (from JSON or config files) become tuples: module fields must be hashable.
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  return family.module(**{**family.presets[name], **overrides})


def fit_to_data(model: Model, variables: dict,
                train_inputs: Callable[[int], np.ndarray]) -> dict:
  """The family's data-dependent initialisation of `variables` (unchanged when it has none)."""
  fit = family_of(model).fit_to_data
  return fit(model, variables, train_inputs) if fit else variables


def model_config(name: str, model: Model) -> dict:
  """A JSON-ready description from which `from_config` rebuilds `model`."""
  return {"name": name,
          **{f: list(v) if isinstance(v, tuple) else v
             for f in family_fields(type(model)) for v in [getattr(model, f)]}}


def from_config(config: dict) -> Model:
  """Inverse of `model_config`; also accepts a preset name with a few overrides."""
  fields = dict(config)
  return get_model(fields.pop("name"), **fields)
