"""Speed settings for XLA:CPU (`config.cpu`), applied from outside the models.

None changes what a model computes, only how XLA compiles it; on GPU and TPU none
applies. docs/performance.md has the measurements behind each:
- `xla_options`: XLA debug options for the jitted train and eval steps;
- `fusion_barriers`: in the train step, every residual block's output (the
  `blocks` of its family, models/registry.py) passes through `fusion_barrier`,
  inserted by flax's method interception, so a new block needs nothing of its own.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging


def on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def default_config() -> ml_collections.ConfigDict:
  """config.cpu."""
  return ml_collections.ConfigDict({
      # YNNPACK's fusions (jaxlib 0.10's default) are slower than Eigen's kernels for
      # these models' steps on the CPUs measured: "" turns them all off. LLVM -O1 compiles
      # faster than -O2 for the same speed (the convolutions are precompiled kernels).
      "xla_options": {"xla_cpu_experimental_ynn_fusion_type": "",
                      "xla_backend_optimization_level": 1},
      "fusion_barriers": True,
  })


def init_options() -> tuple[tuple[str, object], ...] | None:
  """XLA options for the models' initialisation program, on the CPU backend only: LLVM
  -O1, which compiles its random-number code several times faster than the default -O2,
  to the same values. Not configurable: nothing but the start-up time depends on it."""
  return (("xla_backend_optimization_level", 1),) if on_cpu() else None


@functools.cache
def _compile_error(options: tuple[tuple[str, object], ...]) -> str | None:
  """XLA's complaint about a trivial function compiled with `options`, or None. Cached:
  _usable and check_options ask about the same options, and each compile costs."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
    return None
  except jax.errors.JaxRuntimeError as e:
    return str(e)


@functools.cache
def _usable(options: tuple[tuple[str, object], ...]) -> tuple[tuple[str, object], ...]:
  """`options` without those of the project's own defaults that this jaxlib lacks (older
  ones lack the newer options), each dropped with one warning; a user's option stays,
  for check_options to name if XLA rejects it."""
  if _compile_error(options) is None:
    return options
  defaults = default_config().xla_options
  kept = []
  for key, value in options:
    if defaults.get(key) == value and _compile_error(((key, value),)) is not None:
      logging.warning("config.cpu.xla_options: this jaxlib (%s) has no XLA option %s, one of "
                      "the project's CPU speed defaults; compiling without it",
                      jax.lib.__version__, key)
    else:
      kept.append((key, value))
  return tuple(kept)


def compiler_options(config: ml_collections.ConfigDict) -> dict | None:
  """XLA options for the jitted steps: config.cpu.xla_options, on the CPU backend only."""
  if not on_cpu():
    return None
  return dict(_usable(tuple(sorted(config.cpu.xla_options.items())))) or None


def check_options(config: ml_collections.ConfigDict) -> None:
  """Compiles a trivial function with config.cpu.xla_options: XLA names a bad option or value
  (ValueError naming config.cpu.xla_options)."""
  options = compiler_options(config)
  error = options and _compile_error(tuple(sorted(options.items())))
  if error:
    raise ValueError(f"config.cpu.xla_options={options}: {error}")


def fusion_barrier(x: jax.Array) -> jax.Array:
  """The identity, as an op XLA does not fuse through.

  XLA:CPU computes each weight gradient as a convolution over a transposed copy
  of the layer's input, and fuses into that transpose the whole elementwise
  chain that produced the input: along a stage's residual stream, every earlier
  block's BatchNorm, ReLU and addition, re-read in transposed (cache-hostile)
  order. A conditional is a fusion boundary, so the block output is computed once
  and the transpose reads it (docs/performance.md). Both branches return their
  operand exactly (x * 1 == x for every float), so any predicate works; it must
  not be a compile-time constant, or XLA inlines the branch and the boundary
  goes with it, and the branches must differ as written, or jax drops the
  conditional.
  """
  first = x.reshape(-1)[0]
  return jax.lax.cond(first == first, lambda v: v, lambda v: v * 1, x)


def fusion_barriers(config: ml_collections.ConfigDict, blocks: tuple[type[nn.Module], ...]):
  """A context in which every call of a `blocks` module returns through `fusion_barrier`,
  when config.cpu.fusion_barriers is set and the backend is the CPU; else no-op.

  Meant for the train step only: at inference the barriers would cost, not save.
  """
  if not (config.cpu.fusion_barriers and on_cpu()):
    return contextlib.nullcontext()

  def barrier_after_blocks(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, blocks):
      return fusion_barrier(out)
    return out

  return nn.intercept_methods(barrier_after_blocks)
