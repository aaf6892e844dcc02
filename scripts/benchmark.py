"""Training and evaluation speed of a model's train step, printed as one JSON object.

    python scripts/benchmark.py --model shallow --batch_size 128 --dtype float32 [--compare_torch]
        [--no_cpu_tuning] [--compilation_cache_dir DIR] [--flops_only] [--tiny]
    python scripts/benchmark.py --config configs/fast_muon.py --batch_size 2000 --dtype bfloat16

--model times one of the original project's models with Adam (default_config's
optimizer); --config a config file's model and optimizer (the fast recipes' Muon,
parameter groups, lookahead), whose PyTorch side this script does not have.

Times the jitted train step (forward, backward, Adam update, on random data already
on the device) and the eval forward on JAX's default backend, and reports
first-step compile seconds, model FLOPs per image from XLA's cost analysis
(of the step lowered for the CPU, whatever the backend; --flops_only prints just that),
achieved FLOP/s, peak host RSS and, where the backend reports it, device memory.
With --compare_torch it times the same model in PyTorch (the test-only
reference in tests/torch_reference.py; channels_last; autocast for bfloat16) in
the same run and on the same device (the GPU when JAX has one: AMP), alternating
JAX and PyTorch rounds, and reports the ratio.

The JAX steps use the project's defaults, XLA:CPU speed settings included
(config.cpu, docs/performance.md); --no_cpu_tuning measures without them. With
--compilation_cache_dir it compiles the train step a second time through jax's
persistent compilation cache and reports that time as cached_compile_s.
--tiny times the model's layout at a few channels and one block a stage, on both
sides: seconds on a CPU, for tests of this script and of scripts/device_check.py; its
numbers measure nothing.
"""

import argparse
import ast
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

from resnet_jax import (default_config, main as resnet_main, model_setup, models, optim, train,
                        xla_cpu)
from resnet_jax.data import batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bf16 dense peak FLOP/s of accelerators whose utilisation we report.
PEAK_BF16_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
                   "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12}
# --tiny's models: the full-width steps take 5-20 s each to compile on a CPU.
TINY_FIELDS = {"shallow": dict(stem_width=8, stage_widths=(8, 16, 32), stage_blocks=(1, 1, 1)),
               "deep": dict(stem_width=8, stage_widths=(8, 8, 16, 16),
                            stage_blocks=(1, 1, 1, 1)),
               **dict.fromkeys(("fast", "fast_large", "frontier"), dict(widths=(8, 16, 16)))}


def _config(args):
  """--config's get_config(), or the defaults with --model."""
  if not args.config:
    return default_config.get_config(args.model)
  if REPO not in sys.path:  # configs/*.py import each other as the package `configs`
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("benchmarked_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _jax_setup(config, batch_size: int, dtype: str, cpu_tuning: bool, tiny: bool,
               overrides: tuple[str, ...] = ()):
  config.dtype, config.batch_size = dtype, batch_size
  if tiny:
    config.model.update(TINY_FIELDS[config.model.name])
  if not cpu_tuning:
    config.cpu.xla_options, config.cpu.bfloat16_xla_options = {}, {}
    config.cpu.fusion_barriers = False
  for override in overrides:
    _apply(config, override)
  model = model_setup.build_model(config)
  steps = train.Steps(config, model, total_steps=100 * config.num_epochs)
  tx, _ = optim.create_optimizer(config.optimizer, 100, config.num_epochs, batch_size=batch_size,
                                 param_labels=models.family_of(model).param_labels)
  state = steps.place_state(train.create_train_state(config, model, tx,
                                                     optim.plateau_from_config(config.optimizer),
                                                     total_steps=100 * config.num_epochs))
  rng = np.random.default_rng(0)
  batch = batches.place({
      "image": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
      "label": rng.integers(0, 10, batch_size).astype(np.int32),
      "mask": np.ones(batch_size, bool)}, steps.data)
  return steps, state, batch


# Where a new key is a setting, not a typo: XLA's options, by their own names.
OPEN_SECTIONS = ("cpu.xla_options", "cpu.bfloat16_xla_options")


def _apply(config, override: str) -> None:
  """Sets --override KEY=VALUE (VALUE a Python literal) in `config`; a key the config lacks
  (a typo that nothing would read) or a value that is no literal is one error line."""
  key, sep, value = override.partition("=")
  if not sep:
    raise SystemExit(f"error: --override {override!r}: expected KEY=VALUE")
  parent, _, name = key.rpartition(".")
  try:
    section = default_config.lookup(config, parent)
  except (KeyError, AttributeError, TypeError):
    section = None
  if not isinstance(section, ml_collections.ConfigDict) or not (
      name in section or parent in OPEN_SECTIONS):
    raise SystemExit(f"error: --override {override!r}: the config has no key {key!r}")
  try:
    section[name] = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise SystemExit(f"error: --override {override!r}: {value!r} is not a Python literal "
                     "(quote strings: KEY='text')") from None
  except TypeError as e:  # ConfigDict's: another type than the key's
    raise SystemExit(f"error: --override {override!r}: {e}") from None


def _train_flops_per_image(lowered, args) -> float:
  """XLA's FLOP count of one train step, per image, on the HLO before backend passes.

  The compiled module's count is no use on GPU: its convolutions are cuDNN custom calls,
  which it leaves out (0.02 of 2.3 GFLOP for the shallow model, seen on an H200), and GPU
  plugins count no unoptimised HLO. The same step lowered for the CPU is the same
  arithmetic, so there it is counted in a CPU-only subprocess.
  """
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  if cost and cost.get("flops"):
    return float(cost["flops"]) / args.batch_size
  if jax.default_backend() == "cpu":
    raise RuntimeError("XLA:CPU gave no FLOP count for the train step")
  counted = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--model", args.model, "--config", args.config,
       "--dtype", args.dtype,
       "--batch_size", str(args.batch_size), "--flops_only", *(["--tiny"] if args.tiny else []),
       *(f"--override={override}" for override in args.override)],  # the model timed
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, check=True)
  return float(counted.stdout.split()[-1])


def _time(fn, steps: int) -> float:
  """Seconds per call of fn(), which must block until its work is done."""
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def _torch_round(model_name: str, batch_size: int, dtype: str, tiny: bool):
  """PyTorch's train and eval steps on the device JAX uses (a GPU's, else the CPU)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  shape = {}
  if tiny:  # the JAX side's toy layout, in the reference's arguments
    fields = TINY_FIELDS[model_name]
    shape = dict(stem=fields["stem_width"], widths=fields["stage_widths"],
                 blocks=fields["stage_blocks"])
  model = (torch_reference.ShallowResNet(**shape) if model_name == "shallow"
           else torch_reference.DeepResNet(**shape)).to(device, memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  x = torch.randn(batch_size, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (batch_size,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  done = torch.cuda.synchronize if device == "cuda" else lambda: None  # GPU work is async

  def train_step():
    model.train()
    opt.zero_grad()
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    done()

  def eval_step():
    model.eval()
    with torch.no_grad(), autocast:
      model(x)
    done()

  return train_step, eval_step


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=["shallow", "deep"], default="shallow")
  parser.add_argument("--config", default="", help="a config file's model and optimizer "
                      "instead of --model's (no --compare_torch)")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=2, help="alternating JAX/PyTorch rounds")
  parser.add_argument("--compare_torch", action="store_true")
  parser.add_argument("--no_cpu_tuning", action="store_true",
                      help="without the XLA:CPU speed settings of config.cpu")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="a config key set to a Python literal, e.g. "
                           "cpu.fusion_barriers=False (repeatable)")
  parser.add_argument("--compilation_cache_dir", default="",
                      help="also time a compile served by jax's persistent cache here")
  parser.add_argument("--flops_only", action="store_true",
                      help="print the train step's FLOPs per image and exit (no timing)")
  parser.add_argument("--tiny", action="store_true",
                      help="a toy width of the model, for tests of this script")
  args = parser.parse_args()
  if args.config and args.compare_torch:
    parser.error("--compare_torch has PyTorch models for --model only, not for --config")
  return args


def _timed_rounds(args, steps, state, batch, compiled) -> tuple[dict[str, list[float]], bool]:
  """Seconds per step of each side's train and eval steps, one entry a round, and whether
  PyTorch was timed. Rounds alternate, so drifting machine load hits both sides alike."""
  holder = {"state": jax.block_until_ready(compiled(state, batch)[0])}

  def jax_train():
    holder["state"], _ = steps.train(holder["state"], batch)
    jax.block_until_ready(holder["state"].params)

  def jax_eval():
    jax.block_until_ready(steps.eval(holder["state"].variables, batch))

  jax_eval()  # compile eval outside the timing
  torch_steps = _torch_round(args.model, args.batch_size, args.dtype, args.tiny) \
      if args.compare_torch else None
  if torch_steps:  # warm-up
    for step in torch_steps:
      step()
  timings = {"jax_train": [], "jax_eval": [], "torch_train": [], "torch_eval": []}
  for _ in range(args.rounds):
    timings["jax_train"].append(_time(jax_train, args.steps))
    timings["jax_eval"].append(_time(jax_eval, args.steps))
    if torch_steps:
      timings["torch_train"].append(_time(torch_steps[0], args.steps))
      timings["torch_eval"].append(_time(torch_steps[1], args.steps))
  return timings, bool(torch_steps)


def _report(args, config, timings: dict[str, list[float]], compared: bool,
            compile_s: dict[str, float], flops_per_image: float) -> dict:
  """The JSON object this script prints: the best round's rates and the run's context."""
  rate = lambda key: args.batch_size / min(timings[key])  # best round
  device = jax.devices()[0]
  result = {
      "command": " ".join(shlex.quote(a) for a in ["scripts/benchmark.py"] + sys.argv[1:]),
      "backend": jax.default_backend(), "device": device.device_kind,
      "devices": jax.device_count(), "cpus": os.cpu_count(), "platform": platform.platform(),
      "model": config.model.name, "config": args.config or None, "tiny": args.tiny,
      "dtype": args.dtype,
      "batch_size": args.batch_size,
      "train_images_per_s": round(rate("jax_train"), 1),
      "eval_images_per_s": round(rate("jax_eval"), 1),
      "cpu_tuning": not args.no_cpu_tuning and xla_cpu.on_cpu(),
      "overrides": args.override,
      "cpu_flags": xla_cpu.reported_flags(),
      **{key: round(seconds, 2) for key, seconds in compile_s.items()},
      "train_flops_per_image": flops_per_image,
      "achieved_flops_per_s": flops_per_image * rate("jax_train"),
      "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    result["peak_device_memory_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
  if device.device_kind in PEAK_BF16_FLOPS:
    result["utilisation_of_bf16_peak"] = result["achieved_flops_per_s"] / PEAK_BF16_FLOPS[
        device.device_kind]
  if compared:
    result.update({"torch_version": __import__("torch").__version__,
                   "torch_train_images_per_s": round(rate("torch_train"), 1),
                   "torch_eval_images_per_s": round(rate("torch_eval"), 1),
                   "train_speed_ratio_jax_over_torch": round(
                       rate("jax_train") / rate("torch_train"), 3)})
  return result


def main() -> None:
  args = _parse_args()
  resnet_main.enable_compilation_cache(args.compilation_cache_dir)
  config = _config(args)
  steps, state, batch = _jax_setup(config, args.batch_size, args.dtype,
                                   cpu_tuning=not args.no_cpu_tuning, tiny=args.tiny,
                                   overrides=tuple(args.override))
  start = time.perf_counter()  # first-step compile: tracing, lowering and XLA
  lowered = steps.train.lower(state, batch)
  if args.flops_only:
    print(_train_flops_per_image(lowered, args))
    return
  compiled = lowered.compile()
  compile_s = {"compile_s": time.perf_counter() - start}
  if args.compilation_cache_dir:  # as a rerun would: nothing in memory, all on disk
    jax.clear_caches()
    start = time.perf_counter()
    steps.train.lower(state, batch).compile()
    compile_s["cached_compile_s"] = time.perf_counter() - start
  flops_per_image = _train_flops_per_image(lowered, args)
  timings, compared = _timed_rounds(args, steps, state, batch, compiled)
  print(json.dumps(_report(args, config, timings, compared, compile_s, flops_per_image),
                   indent=1))


if __name__ == "__main__":
  main()
