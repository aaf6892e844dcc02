"""One 3x3 convolution (NHWC, stride 1, SAME) on XLA:CPU: milliseconds for its forward pass
and its weight gradient, computed each way this project tried, as one JSON object.

    python scripts/benchmark_convolution.py [--size 32] [--channels 64] [--batch 256]

XLA's option `xla_cpu_experimental_onednn_custom_call` applies to a whole jitted program,
so a train step can only route a convolution to Eigen instead of oneDNN if oneDNN's
rewriter declines it (xla/service/cpu/onednn_convolution_rewriter.cc: a kernel operand
that is a reverse, a batch group count above 1, another element type). The weight
gradient's routes timed here, each under both settings:
  autodiff   jax's transpose rule (XLA's weight-gradient convolution);
  float32    the same in float32 (oneDNN takes float32 too);
  dots       nine shifted matrix products, one per kernel tap (dot_general, not a
             convolution, so oneDNN's convolution rewriter never sees it);
  flipped    input and cotangent reversed in space, the result reversed back (a reverse
             as the kernel operand, which the rewriter declines, unless XLA folds it).
Run it alone on the machine; each figure is the best of 3 rounds of 3 calls.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
SETTINGS = {"eigen": NO_YNN, "onednn": {**NO_YNN, "xla_cpu_experimental_onednn_custom_call": True}}


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def weight_grad_autodiff(x, w, g):
  return jax.vjp(lambda w: conv(x, w), w)[1](g)[0]


def weight_grad_float32(x, w, g):
  f32 = lambda a: a.astype(jnp.float32)
  return weight_grad_autodiff(f32(x), f32(w), f32(g)).astype(w.dtype)


def weight_grad_dots(x, w, g):
  size, padded = x.shape[1], jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = [[jax.lax.dot_general(padded[:, i:i + size, j:j + size].reshape(-1, x.shape[-1]),
                               g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32) for j in range(3)]
          for i in range(3)]
  return jnp.array(taps).astype(w.dtype)


def weight_grad_flipped(x, w, g):
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = jax.lax.conv_general_dilated(
      jnp.flip(padded, (1, 2)), jnp.flip(g, (1, 2)), (1, 1), "VALID",
      dimension_numbers=("CHWN", "IHWO", "HWNC"), preferred_element_type=jnp.float32)
  return jnp.flip(out, (0, 1)).astype(w.dtype)


ROUTES = {"forward": lambda x, w, g: conv(x, w), "weight_grad_autodiff": weight_grad_autodiff,
          "weight_grad_float32": weight_grad_float32, "weight_grad_dots": weight_grad_dots,
          "weight_grad_flipped": weight_grad_flipped}


def _milliseconds(fn, options: dict, args) -> tuple[float, bool, np.ndarray]:
  """(best ms per call, whether the compiled program calls oneDNN, its result)."""
  compiled = jax.jit(fn, compiler_options=options).lower(*args).compile()
  result = np.asarray(jax.block_until_ready(compiled(*args)), np.float32)
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(3):
      jax.block_until_ready(compiled(*args))
    best = min(best, (time.perf_counter() - start) / 3)
  return round(best * 1000, 3), "onednn" in compiled.as_text(), result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=32, help="height and width")
  parser.add_argument("--channels", type=int, default=64, help="in and out")
  parser.add_argument("--batch", type=int, default=256)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size, args.channels)
  rows = []
  for dtype in ("float32", "bfloat16"):
    x, g = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(2))
    w = jnp.asarray(rng.normal(size=(3, 3, args.channels, args.channels)), dtype)
    reference = np.asarray(weight_grad_autodiff(*(a.astype(jnp.float32) for a in (x, w, g))))
    for setting, options in SETTINGS.items():
      for route, fn in ROUTES.items():
        if route == "weight_grad_float32" and dtype == "float32":
          continue
        ms, onednn, result = _milliseconds(fn, options, (x, w, g))
        row = {"dtype": dtype, "setting": setting, "route": route, "ms": ms,
               "calls_onednn": onednn}
        if route != "forward":  # the same gradient, to bfloat16's rounding
          error = np.abs(result - reference).max()
          row["max_error_relative"] = float(error / np.abs(reference).max())
        rows.append(row)
  print(json.dumps({"command": "scripts/benchmark_convolution.py " + " ".join(
      f"--{k} {v}" for k, v in vars(args).items()), "jax": jax.__version__, "rows": rows},
                   indent=1))


if __name__ == "__main__":
  main()
