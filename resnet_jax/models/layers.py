"""Layers both model families share, with PyTorch's semantics where it matters for parity.

Converted weights of the original project must compute the same function as in PyTorch, so: explicit
padding 1 on 3x3 convolutions (the families pass `padding=1`; flax's "SAME" pads
stride-2 layers asymmetrically), BatchNorm with PyTorch's running-variance update,
exact-erf GELU, PyTorch's default initialisers, and adaptive pooling with PyTorch's
window rule. BatchNorm's training-mode form has a written-out backward over fast
channel sums (every backend); tests/test_models.py and tests/test_parity.py check it
against autodiff of the plain formula and against PyTorch.
"""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "relu": nn.relu,
    # flax's gelu defaults to the tanh approximation; PyTorch's nn.GELU is exact.
    "gelu": functools.partial(nn.gelu, approximate=False),
}
POOL_TYPES = ("max", "avg")
KERNEL_INITS = ("torch", "he_normal")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def check_positive(module: nn.Module, *fields: str) -> None:
  """Raises ValueError naming the first of `fields` (an int, or a sequence of ints) with a
  value <= 0: such a width, count, stride or size builds nothing, or fails deep in the
  first trace with an error that names no field."""
  for field in fields:
    value = getattr(module, field)
    if isinstance(value, Sequence):
      if not all(v > 0 for v in value):
        raise ValueError(f"model.{field}={tuple(value)}: every entry must be positive")
    elif not value > 0:
      raise ValueError(f"model.{field}={value!r} must be positive")


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
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      n = x.size // features
      m = self.momentum
      running_mean.value = (1 - m) * running_mean.value + m * mean
      running_var.value = (1 - m) * running_var.value + m * var * n / max(n - 1, 1)
    return y.astype(self.dtype)


def channel_sum(x: jax.Array) -> jax.Array:
  """Sum over all axes but the last (channels).

  Two stages, rows of 16 pixels first: XLA:CPU reduces a [M, C] array over M
  with a split reduce-window well below memory bandwidth, while the sum of
  [M/16, 16*C] over its leading axis vectorises over 16*C contiguous floats
  (docs/performance.md has the measurements).
  """
  c = x.shape[-1]
  pixels = x.size // c
  rows = 16 if pixels % 16 == 0 else 1
  return x.reshape(pixels // rows, rows * c).sum(0).reshape(rows, c).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """Training-mode batch norm over all axes but the last: (y, batch mean, biased var).

  The backward pass is written out (the textbook BN gradient: two channel
  sums instead of the seven reductions autodiff derives from the forward) so
  that each reduction runs once, in `channel_sum`'s fast form.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  n = x.size // x.shape[-1]
  mean = channel_sum(x) / n
  centered = x - mean
  var = channel_sum(jnp.square(centered)) / n
  inv = jax.lax.rsqrt(var + epsilon)
  return (centered * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  g, g_mean, g_var = cotangents
  n = x.size // x.shape[-1]
  centered = x - mean
  x_hat = centered * inv
  g_bias = channel_sum(g)
  g_scale = channel_sum(g * x_hat)
  g_x = (scale * inv / n) * (n * g - g_bias - x_hat * g_scale)
  # The batch statistics are outputs too (they feed the running averages).
  g_x = g_x + g_mean / n + g_var * (2 / n) * centered
  return g_x, g_scale, g_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def parameter_group(path, param) -> str:
  """The optimizer's group (optim.py) of a parameter at `path`, for modules named as both
  families name them: "bn_bias" for a BatchNorm's bias (modules named bn*, *_bn),
  "conv_kernel" for a convolution's kernel, "other" for the rest."""
  keys = [getattr(entry, "key", "") for entry in path[-2:]]
  if keys[-1] == "bias" and len(keys) > 1 and "bn" in keys[0]:
    return "bn_bias"
  if keys[-1] == "kernel" and param.ndim == 4:
    return "conv_kernel"
  return "other"
