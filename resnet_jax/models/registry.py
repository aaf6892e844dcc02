"""One CIFAR ResNet family whose fields express both seed models.

`get_model("shallow")` and `get_model("deep")` return the seed's two models
(../shared/SEED_SPEC.md): 2,777,674 and 4,999,689 trainable parameters.
Layers follow PyTorch's semantics so that converted seed weights compute the same
function: explicit padding 1 on 3x3 convolutions (not "SAME", which pads stride-2
layers asymmetrically), BatchNorm with PyTorch's running-variance update, exact
erf GELU, and adaptive pooling with PyTorch's window rule.

Module names mirror the seed's state_dict keys (`conv1`, `bn1`, `layer{i}_{j}`,
`fc`; a block holds `conv1`, `bn1`, `conv2`, `bn2`, `downsample_conv`,
`downsample_bn`) so that `convert_torch` is a plain renaming.

This module imports no TensorFlow: GPU measurement machines drive it from numpy.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import layers

ACTIVATIONS = {
    "relu": nn.relu,
    # flax's gelu defaults to the tanh approximation; PyTorch's nn.GELU is exact.
    "gelu": functools.partial(nn.gelu, approximate=False),
}
POOL_TYPES = ("max", "avg")
KERNEL_INITS = ("torch", "he_normal")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
IMAGE_SHAPE = (32, 32, 3)


class ParamBudgetError(ValueError):
  """A model has more trainable parameters than its `max_params` allows."""


def kernel_initializer(name: str) -> nn.initializers.Initializer:
  """Kernel initialiser for convolutions and the classifier."""
  if name == "torch":
    # PyTorch's default kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)),
    # i.e. variance 1/(3 fan_in).
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  # torchvision's ResNet choice: kaiming_normal(mode="fan_out", relu gain).
  return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default Linear bias: U(+-1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def pool_windows(n: int, m: int) -> list[tuple[int, int]]:
  """PyTorch's adaptive windows: output i covers [floor(i*n/m), ceil((i+1)*n/m))."""
  return [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]


def pool_window_index(n: int, m: int) -> np.ndarray:
  """[m, width] input positions of each adaptive window, a short window repeating its last."""
  windows = pool_windows(n, m)
  width = max(end - start for start, end in windows)
  return np.array([[min(start + j, end - 1) for j in range(width)] for start, end in windows])


def _adaptive_pool_axis(x: jax.Array, axis: int, size: int, kind: str) -> jax.Array:
  n = x.shape[axis]
  reduce = jnp.max if kind == "max" else jnp.mean
  if n % size == 0:  # equal, disjoint windows: a reshape is exact and cheapest
    return reduce(x.reshape(x.shape[:axis] + (size, n // size) + x.shape[axis + 1:]), axis + 1)
  # Windows of unequal width (possibly overlapping, e.g. 16 -> 24 up-samples):
  # gather `width` positions per output, repeating a short window's last one,
  # which max ignores and the average masks out.
  windows = pool_windows(n, size)
  index = pool_window_index(n, size)
  width = index.shape[1]
  g = jnp.take(x, index.reshape(-1), axis=axis)
  g = g.reshape(x.shape[:axis] + (size, width) + x.shape[axis + 1:])
  if kind == "max":
    return g.max(axis + 1)
  counts = np.array([end - start for start, end in windows])
  weights = (np.arange(width)[None, :] < counts[:, None]) / counts[:, None]
  weights = weights.reshape(weights.shape + (1,) * (x.ndim - axis - 1)).astype(x.dtype)
  return (g * weights).sum(axis + 1)


class AdaptivePool(nn.Module):
  """PyTorch's AdaptiveMaxPool2d / AdaptiveAvgPool2d((size, size)) on NHWC input.

  A module (not a function) so that it appears in the layer summary. Both
  reductions are separable over rectangular windows, so H and W are pooled one
  after the other.
  """

  size: int
  kind: str

  def __call__(self, x: jax.Array) -> jax.Array:
    for axis in (1, 2):
      x = _adaptive_pool_axis(x, axis, self.size, self.kind)
    return x


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch's semantics.

  Normalises with the biased batch variance but, like PyTorch, tracks the
  *unbiased* variance in the running average (flax.linen.BatchNorm tracks the
  biased one, which would break parity of the running statistics). Statistics
  are computed in float32 whatever the compute dtype. Under jit with a sharded
  batch the means are over the global batch (sync BN) without an axis name.
  """

  momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  use_scale: bool = True  # False: no trained scale (a fixed 1), only the bias

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = (self.param("scale", nn.initializers.ones, (features,)) if self.use_scale
             else jnp.ones((features,), jnp.float32))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
    x = x.astype(jnp.float32)
    if not train:
      y = (x - running_mean.value) * (
          jax.lax.rsqrt(running_var.value + self.epsilon) * scale) + bias
      return y.astype(self.dtype)
    y, mean, var = layers.batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      n = x.size // features
      m = self.momentum
      running_mean.value = (1 - m) * running_mean.value + m * mean
      running_var.value = (1 - m) * running_var.value + m * var * n / max(n - 1, 1)
    return y.astype(self.dtype)


class ResidualBlock(nn.Module):
  """Basic block: act_out(BN(conv(act_inner(BN(conv(x))))) + shortcut(x))."""

  features: int
  strides: int
  inner_activation: Callable
  outer_activation: Callable
  conv: Callable
  norm: Callable
  fusion_barrier: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = self.inner_activation(self.norm(name="bn1")(y, train))
    y = self.conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
    y = self.norm(name="bn2")(y, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.conv(self.features, (1, 1), self.strides, padding=0, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, train)
    y = self.outer_activation(y + x)
    return layers.fusion_barrier(y) if self.fusion_barrier and train else y


class ResNet(nn.Module):
  """A CIFAR ResNet: stem, stages of residual blocks, adaptive pool, linear head.

  Attributes:
    stem_width: channels of the 3x3 stem convolution.
    stage_widths, stage_blocks, stage_strides: per stage, its channels, number
      of blocks and the stride of its first block.
    stem_activation, inner_activation, outer_activation: names in ACTIVATIONS;
      inner follows a block's first BN, outer follows the residual addition.
    stem_dropout: element-wise dropout rate after the stem.
    stage_dropout: dropout rate after each stage (one per stage).
    mid_pool_after_stage: 1-based stage after which an adaptive pool to
      `mid_pool_size` of type `mid_pool_type` runs; 0 for none.
    head_pool_size: the adaptive average pool before flattening (1 = global).
    num_classes: classifier outputs.
    dtype: compute dtype name; parameters and BN statistics stay float32.
    kernel_init: "torch" (PyTorch's defaults) or "he_normal".
    max_params: the trainable-parameter budget, checked by `get_model`.
    fusion_barriers: in training, end each block with `layers.fusion_barrier` (an
      XLA:CPU speed setting that leaves the function unchanged, so it is not
      part of the saved model description, `FIELDS`).
  """

  stem_width: int
  stage_widths: Sequence[int]
  stage_blocks: Sequence[int]
  stage_strides: Sequence[int]
  stage_dropout: Sequence[float]
  stem_activation: str = "relu"
  inner_activation: str = "relu"
  outer_activation: str = "relu"
  stem_dropout: float = 0.0
  mid_pool_after_stage: int = 0
  mid_pool_type: str = "max"
  mid_pool_size: int = 0
  head_pool_size: int = 1
  num_classes: int = 10
  dtype: str = "float32"
  kernel_init: str = "torch"
  max_params: int = 5_000_000
  fusion_barriers: bool = False

  def __post_init__(self):
    _check_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtype = DTYPES[self.dtype]
    kernel_init = kernel_initializer(self.kernel_init)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, kernel_init=kernel_init)
    norm = functools.partial(BatchNorm, dtype=dtype)
    block = functools.partial(
        ResidualBlock, conv=conv, norm=norm, fusion_barrier=self.fusion_barriers,
        inner_activation=ACTIVATIONS[self.inner_activation],
        outer_activation=ACTIVATIONS[self.outer_activation])

    x = conv(self.stem_width, (3, 3), padding=1, name="conv1")(x.astype(dtype))
    x = ACTIVATIONS[self.stem_activation](norm(name="bn1")(x, train))
    if self.stem_dropout:
      x = nn.Dropout(self.stem_dropout, deterministic=not train, name="stem_dropout")(x)
    stages = zip(self.stage_widths, self.stage_blocks, self.stage_strides, self.stage_dropout)
    for i, (width, blocks, strides, rate) in enumerate(stages, start=1):
      for j in range(blocks):
        x = block(width, strides if j == 0 else 1, name=f"layer{i}_{j}")(x, train)
      if rate:
        x = nn.Dropout(rate, deterministic=not train, name=f"layer{i}_dropout")(x)
      if i == self.mid_pool_after_stage:
        x = AdaptivePool(self.mid_pool_size, self.mid_pool_type, name="mid_pool")(x)
    x = AdaptivePool(self.head_pool_size, "avg", name="head_pool")(x)
    x = x.reshape(x.shape[0], -1)  # flattens (H, W, C); PyTorch flattens (C, H, W)
    x = nn.Dense(self.num_classes, dtype=dtype, kernel_init=kernel_init,
                 bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)
    return x.astype(jnp.float32)  # softmax and loss in float32


def _check_fields(model: ResNet) -> None:
  """Rejects inconsistent fields with a message naming the field and value."""
  num_stages = len(model.stage_widths)
  for name in ("stage_blocks", "stage_strides", "stage_dropout"):
    if len(getattr(model, name)) != num_stages:
      raise ValueError(f"model.{name}={tuple(getattr(model, name))} needs one entry per stage "
                       f"({num_stages}, as stage_widths={tuple(model.stage_widths)})")
  for name in ("stem_activation", "inner_activation", "outer_activation"):
    if getattr(model, name) not in ACTIVATIONS:
      raise ValueError(f"model.{name}={getattr(model, name)!r} is not one of {sorted(ACTIVATIONS)}")
  choices = {"mid_pool_type": POOL_TYPES, "kernel_init": KERNEL_INITS, "dtype": tuple(DTYPES)}
  for name, allowed in choices.items():
    if getattr(model, name) not in allowed:
      raise ValueError(f"model.{name}={getattr(model, name)!r} is not one of {list(allowed)}")
  if not 0 <= model.mid_pool_after_stage <= num_stages:
    raise ValueError(f"model.mid_pool_after_stage={model.mid_pool_after_stage} is not a stage "
                     f"(0 for none, or 1..{num_stages})")
  if model.mid_pool_after_stage and model.mid_pool_size < 1:
    raise ValueError(f"model.mid_pool_size={model.mid_pool_size} must be positive")
  for rate in (model.stem_dropout, *model.stage_dropout):
    if not 0 <= rate < 1:
      raise ValueError(f"model dropout rate {rate} is outside [0, 1)")


PRESETS = {
    # The seed's ModifiedResNet: 3 stages of 2 blocks, ReLU, no dropout.
    "shallow": dict(stem_width=64, stage_widths=(64, 128, 256), stage_blocks=(2, 2, 2),
                    stage_strides=(1, 2, 2), stage_dropout=(0.0, 0.0, 0.0)),
    # The seed's final deep notebook (stage 4 has 2 blocks, not the report's 5).
    "deep": dict(stem_width=16, stage_widths=(32, 64, 115, 256), stage_blocks=(3, 4, 11, 2),
                 stage_strides=(1, 2, 2, 2), stage_dropout=(0.287, 0.0, 0.287, 0.0),
                 stem_dropout=0.432, outer_activation="gelu",
                 mid_pool_after_stage=2, mid_pool_type="max", mid_pool_size=24,
                 head_pool_size=3),
}


def init_variables(model: ResNet, rng: jax.Array) -> dict:
  """Initial {"params", "batch_stats"} for 32x32x3 inputs."""
  return model.init(rng, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)


def count_params(model: ResNet) -> int:
  """Trainable parameters (the "params" collection), computed without allocating."""
  shapes = jax.eval_shape(functools.partial(init_variables, model), jax.random.key(0))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))


def dirac_init(key, shape, dtype=jnp.float32):
  """A convolution kernel [h, w, c_in, c_out] whose first min(c_in, c_out) filters pass
  their input channel through unchanged; the rest keep PyTorch's default init.

  airbench initialises every convolution so: an implicit residual (the first
  filters copy the input) that lets a high learning rate work from the first step.
  """
  h, w, c_in, c_out = shape
  n = min(c_in, c_out)
  identity = jnp.zeros((h, w, c_in, n), dtype).at[h // 2, w // 2].set(jnp.eye(c_in, n, dtype=dtype))
  return kernel_initializer("torch")(key, shape, dtype).at[..., :n].set(identity)


class FastGroup(nn.Module):
  """conv -> max-pool -> BN -> GELU, then an identity path around conv -> BN -> GELU.

  airbench's block, whose second convolution has no shortcut (`shortcut=False`).
  `branch_weight` scales the branch against the path (1: the plain sum).
  Both convolutions start dirac (`dirac_init`): the second as the identity, so at
  initialisation the group is its first half plus twice that.
  """

  features: int
  norm: Callable
  conv: Callable
  shortcut: bool = True
  branch_weight: float = 1.0
  fusion_barrier: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    gelu = ACTIVATIONS["gelu"]
    x = self.conv(self.features, name="conv1")(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = gelu(self.norm(name="bn1")(x, train))
    y = gelu(self.norm(name="bn2")(self.conv(self.features, name="conv2")(x), train))
    y = x + self.branch_weight * y if self.shortcut else y
    return layers.fusion_barrier(y) if self.fusion_barrier and train else y


class Whitening(nn.Module):
  """A k x k convolution with frozen filters (`whitening_kernel`, set from data) and a bias.

  The filters live in "batch_stats", the state that is saved but not trained;
  zeros until train.fit_to_data sets them. 3 x k x k patches give as many filters
  as patch dimensions, and their negations (after GELU both signs survive).
  """

  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    shape = (k, k, 3, 2 * 3 * k * k)
    kernel = self.variable("batch_stats", "kernel", jnp.zeros, shape)
    bias = self.param("bias", nn.initializers.zeros, (shape[-1],))
    x = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.value.astype(self.dtype),
                                     (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return x + bias.astype(self.dtype)


class FastResNet(nn.Module):
  """A compact residual net after airbench94 (Keller Jordan's fast CIFAR-10 recipe).

  A 2x2 patch-whitening convolution (`Whitening`: frozen filters fitted to the
  training data, a trained bias), GELU, then groups of `FastGroup` at each
  width in `widths`, each halving the resolution, a max-pool to 1x1, and a
  bias-free linear head whose logits are scaled by `logit_scale` (airbench's
  1/9: a smaller softmax temperature at init). BatchNorm keeps only its bias
  (`bn_scale=False`), with airbench's eps and its momentum: it keeps 0.6 of the
  running statistics per step, i.e. 0.4 in the PyTorch convention used here.

  `shortcuts=False` drops the groups' identity paths: airbench's plain net, kept
  to measure what the paths cost or bring (docs/recipes.md). `branch_weight`
  weighs each group's branch against its path: h + branch_weight * f(h).

  Attributes mirror those of ResNet where they mean the same: num_classes,
  dtype, max_params, fusion_barriers (a runtime setting, not saved).
  """

  widths: Sequence[int] = (64, 256, 256)
  whiten_kernel_size: int = 2
  bn_momentum: float = 0.4
  bn_epsilon: float = 1e-12
  bn_scale: bool = False
  logit_scale: float = 1 / 9
  shortcuts: bool = True
  branch_weight: float = 1.0
  num_classes: int = 10
  dtype: str = "float32"
  max_params: int = 5_000_000
  fusion_barriers: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtype = DTYPES[self.dtype]
    x = ACTIVATIONS["gelu"](Whitening(self.whiten_kernel_size, dtype, name="whiten")(x))
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=1, use_bias=False,
                             dtype=dtype, kernel_init=dirac_init)
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=dtype, use_scale=self.bn_scale)
    for i, width in enumerate(self.widths, start=1):
      x = FastGroup(width, norm=norm, conv=conv, shortcut=self.shortcuts,
                    branch_weight=self.branch_weight, fusion_barrier=self.fusion_barriers,
                    name=f"group{i}")(x, train)
    x = x.max(axis=(1, 2))  # airbench's final MaxPool2d(3) over the 3x3 map
    x = nn.Dense(self.num_classes, use_bias=False, dtype=dtype,
                 kernel_init=kernel_initializer("torch"), name="fc")(x)
    return x.astype(jnp.float32) * self.logit_scale


def whitening_kernel(images: np.ndarray, kernel_size: int = 2, eps: float = 5e-4) -> np.ndarray:
  """FastResNet's whitening filters [k, k, 3, 2 * 3k^2] fitted to normalised `images`.

  The eigenvectors of the covariance of all k x k patches, each scaled by
  1 / sqrt(eigenvalue + eps), and their negations: the convolution outputs each
  patch's coordinates in the decorrelated, unit-variance basis (eps keeps the
  near-zero components from being blown up).
  """
  images = np.asarray(images, np.float64)
  n, h, w, c = images.shape
  k = kernel_size
  patches = np.stack([images[:, i:h - k + 1 + i, j:w - k + 1 + j]
                      for i in range(k) for j in range(k)], axis=3)  # [n, h', w', k*k, c]
  patches = patches.reshape(-1, k * k * c)  # (kh, kw, c) order: the HWIO kernel's
  eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
  filters = (eigenvectors / np.sqrt(eigenvalues + eps)).T[::-1]  # largest first
  kernel = np.concatenate([filters, -filters]).reshape(-1, k, k, c).transpose(1, 2, 3, 0)
  return kernel.astype(np.float32)


# Settings that change how, not what, the model computes: not saved with it.
RUNTIME_FIELDS = ("fusion_barriers",)


def family_fields(cls) -> tuple[str, ...]:
  """The fields that describe a model of family `cls` (saved with its checkpoints)."""
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in ("parent", "name", *RUNTIME_FIELDS))


FIELDS = family_fields(ResNet)


FAST_PRESETS = {
    # airbench94's widths: 1,971,352 trained parameters (and 288 frozen whitening weights).
    "fast": dict(widths=(64, 256, 256)),
    # airbench95's widths, under the 5M budget.
    "fast_large": dict(widths=(128, 384, 384)),
}
PRESET_NAMES = (*sorted(PRESETS), *sorted(FAST_PRESETS))


def get_model(name: str, **overrides: Any) -> "ResNet | FastResNet":
  """The preset `name` (PRESET_NAMES) with any field of its family overridden.

  Raises ParamBudgetError when the model exceeds its `max_params`.
  """
  if name not in PRESET_NAMES:
    raise ValueError(f"model name {name!r} is not one of {list(PRESET_NAMES)}")
  family, preset = (ResNet, PRESETS[name]) if name in PRESETS else (FastResNet,
                                                                     FAST_PRESETS[name])
  fields = family_fields(family)
  unknown = sorted(set(overrides) - set(fields) - set(RUNTIME_FIELDS))
  if unknown:
    raise ValueError(f"unknown model field(s) {unknown}; fields are {sorted(fields)}")
  # Lists (from JSON or config files) become tuples: module fields must be hashable.
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  model = family(**{**preset, **overrides})
  n = count_params(model)
  if n > model.max_params:
    raise ParamBudgetError(f"model {name!r} has {n:,} trainable parameters, over its budget "
                           f"max_params={model.max_params:,}")
  return model


def model_config(name: str, model: "ResNet | FastResNet") -> dict:
  """A JSON-ready description from which `from_config` rebuilds `model`."""
  return {"name": name,
          **{f: list(v) if isinstance(v, tuple) else v
             for f in family_fields(type(model)) for v in [getattr(model, f)]}}


def from_config(config: dict) -> ResNet:
  """Inverse of `model_config`; also accepts a preset name with a few overrides."""
  fields = dict(config)
  return get_model(fields.pop("name"), **fields)
