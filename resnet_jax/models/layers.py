"""Speed devices for XLA:CPU that leave what the model computes unchanged.

models.py holds the architecture; these are the pieces it calls whose form is
chosen for how XLA compiles them, not for what they compute: a training-mode
BatchNorm with a written-out backward over fast channel sums (every backend),
and a fusion barrier for block outputs (config.cpu.fusion_barriers, CPU only).
tests/test_models.py and tests/test_parity.py check each against the plain
formula and PyTorch; docs/performance.md has the measurements behind them.
"""

import functools

import jax
import jax.numpy as jnp


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


def fusion_barrier(x: jax.Array) -> jax.Array:
  """The identity, as an op XLA does not fuse through.

  XLA:CPU computes each weight gradient as a convolution over a transposed copy
  of the layer's input, and fuses into that transpose the whole elementwise
  chain that produced the input: along a stage's residual stream, every earlier
  block's BatchNorm, ReLU and addition, re-read in transposed (cache-hostile)
  order: 412 ms of the shallow model's 1.47 s train step at batch 64. A
  conditional is a fusion boundary, so the block output is computed once and
  the transpose reads it (docs/performance.md). Both branches return their
  operand exactly (x * 1 == x for every float), so any predicate works; it must
  not be a compile-time constant, or XLA inlines the branch and the boundary
  goes with it, and the branches must differ as written, or jax drops the
  conditional.
  """
  first = x.reshape(-1)[0]
  return jax.lax.cond(first == first, lambda v: v, lambda v: v * 1, x)
