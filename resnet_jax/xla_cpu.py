"""Speed settings for XLA:CPU (`config.cpu`), applied from outside the models.

None changes what a model computes, only how XLA compiles it; on GPU and TPU none
applies. docs/performance.md has the measurements behind each:
- `xla_options`: XLA debug options for the jitted train and eval steps;
- `bfloat16_xla_options`: more of them where the compute dtype is bfloat16;
- `config.dtype` "auto" (auto_dtype; a top-level key, not `config.cpu`'s) computes in
  bfloat16 on CPUs with bfloat16 hardware whose jaxlib runs bfloat16 convolutions through
  oneDNN, in float32 on the others;
- `fusion_barriers`: in the train step, every residual block's output (the
  `blocks` of its family, models/registry.py) passes through `fusion_barrier`,
  inserted by flax's method interception, so a new block needs nothing of its own.
"""

import contextlib
import functools
import warnings

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
      # In bfloat16, oneDNN's convolutions (jaxlib 0.12; Eigen's upcast to float32): 2.4x
      # faster forward passes where the CPU has bfloat16 instructions. Not in float32,
      # where its weight gradients are 2-4x slower than Eigen's.
      "bfloat16_xla_options": {"xla_cpu_experimental_onednn_custom_call": True},
      "fusion_barriers": True,
  })


# CPU flags (Linux's names) of the instructions that oneDNN's bfloat16 convolutions use.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The host CPU's feature flags as Linux's /proc/cpuinfo lists them; empty elsewhere."""
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return frozenset(line.partition(":")[2].split())
  except OSError:
    pass
  return frozenset()


def reported_flags() -> list[str]:
  """The CPU flags a speed figure is stated with: the vector width and bfloat16 support."""
  return sorted(cpu_flags() & {"avx2", "avx512f", *BFLOAT16_FLAGS})


@functools.cache
def onednn_bfloat16_convolutions() -> bool:
  """Whether this jaxlib turns a bfloat16 convolution into a oneDNN call under the project's
  bfloat16_xla_options (jaxlib 0.12 does; 0.10's wheels were built without oneDNN)."""
  options = dict(default_config().bfloat16_xla_options)
  if _compile_error(tuple(sorted(options.items()))) is not None:
    return False
  x = jnp.zeros((1, 4, 4, 8), jnp.bfloat16)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  with warnings.catch_warnings():  # the probe, like the steps, is not cacheable
    warnings.filterwarnings("ignore", _UNCACHEABLE_WARNING, UserWarning)
    compiled = jax.jit(conv, compiler_options=options).lower(
        x, jnp.zeros((3, 3, 8, 8), jnp.bfloat16)).compile()
  return "onednn" in compiled.as_text()


def auto_dtype() -> tuple[str, str]:
  """(compute dtype, why) for config.dtype "auto" on this backend."""
  if not on_cpu():
    return "bfloat16", f"jax's backend is {jax.default_backend()}, whose matrix units run it fast"
  flags = sorted(cpu_flags().intersection(BFLOAT16_FLAGS))
  if not flags:
    return "float32", "this CPU has no bfloat16 instructions (none of %s)" % ", ".join(
        BFLOAT16_FLAGS)
  if not onednn_bfloat16_convolutions():
    return "float32", (f"jaxlib {jax.lib.__version__} has no oneDNN bfloat16 convolutions "
                       "(jaxlib 0.12 has them)")
  return "bfloat16", (f"this CPU has {', '.join(flags)} and jaxlib {jax.lib.__version__} "
                      "runs bfloat16 convolutions through oneDNN")


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
def _warn_lacking(key: str) -> None:
  """One warning a process for each default option this jaxlib lacks."""
  logging.warning("config.cpu: this jaxlib (%s) has no XLA option %s, one of the project's "
                  "CPU speed defaults; compiling without it", jax.lib.__version__, key)


@functools.cache
def _usable(options: tuple[tuple[str, object], ...]) -> tuple[tuple[str, object], ...]:
  """`options` without those of the project's own defaults that this jaxlib lacks (older
  ones lack the newer options), each dropped with one warning; a user's option stays,
  for check_options to name if XLA rejects it."""
  if _compile_error(options) is None:
    return options
  defaults = {**default_config().xla_options, **default_config().bfloat16_xla_options}
  kept = []
  for key, value in options:
    if defaults.get(key) == value and _compile_error(((key, value),)) is not None:
      _warn_lacking(key)
    else:
      kept.append((key, value))
  return tuple(kept)


def compiler_options(config: ml_collections.ConfigDict, dtype: str) -> dict | None:
  """XLA options for the jitted steps of a model computing in `dtype`: config.cpu.xla_options
  and, for bfloat16 on a CPU with bfloat16 instructions, config.cpu.bfloat16_xla_options
  (elsewhere oneDNN would emulate them); on the CPU backend only."""
  if not on_cpu():
    return None
  bfloat16 = dtype == "bfloat16" and cpu_flags().intersection(BFLOAT16_FLAGS)
  options = {**config.cpu.xla_options, **(config.cpu.bfloat16_xla_options if bfloat16 else {})}
  return dict(_usable(tuple(sorted(options.items())))) or None


_UNCACHEABLE_WARNING = (r"Error writing persistent compilation cache entry for 'jit_\w+': "
                        r"MemoryError: std::bad_alloc")


def quiet_uncacheable(options: dict | None) -> None:
  """Steps compiled with oneDNN's calls do not reach jax's persistent compilation cache:
  XLA:CPU cannot serialise them (jaxlib 0.12.0.1), and jax warns "MemoryError:
  std::bad_alloc" at each such compile. One log line a process says so instead; the
  steps compile anew in each process (seconds; docs/performance.md)."""
  if options and options.get("xla_cpu_experimental_onednn_custom_call"):
    warnings.filterwarnings("ignore", _UNCACHEABLE_WARNING, UserWarning)
    _log_uncacheable()


@functools.cache
def _log_uncacheable() -> None:
  logging.info("steps with oneDNN convolutions compile in each process: XLA:CPU cannot store "
               "them in jax's compilation cache")


def check_options(config: ml_collections.ConfigDict) -> None:
  """Compiles a trivial function with config.cpu's XLA options: XLA names a bad option or
  value (ValueError naming config.cpu.xla_options or bfloat16_xla_options)."""
  if not on_cpu():
    return
  for key in ("xla_options", "bfloat16_xla_options"):  # each on every CPU, used or not
    for option, value in config.cpu[key].items():  # what jax's compiler_options takes
      if not isinstance(value, (str, bool, int, float)):
        raise ValueError(f"config.cpu.{key}.{option}={value!r} ({type(value).__name__}) is "
                         "not a string, bool, int or float")
    options = _usable(tuple(sorted(config.cpu[key].items())))
    error = options and _compile_error(options)
    if error:
      raise ValueError(f"config.cpu.{key}={config.cpu[key].to_dict()}: {error}")


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
