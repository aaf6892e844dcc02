"""Where a train step's time goes: configs/fast_muon.py in JAX against airbench94_muon's
recipe in PyTorch (tests/airbench_reference.py), each op by kind, as JSON.

    python scripts/profile_step.py --out OUT [--steps 1] [--dtype auto] [--tiny]

Each side trains `--steps` steps of fast_muon's batch (2,000) of random images under
its framework's profiler, after one step outside it (JAX's compile): JAX's jitted
train step in `--dtype` (config.dtype; auto: bfloat16 with oneDNN's convolutions on a
CPU with bfloat16 instructions; the device pipeline's augmentation is a program of its
own, left out) under jax.profiler, whose trace names XLA's thunks; PyTorch's training
loop (bf16 autocast, channels_last: race.py's setting; its batches' flip and translate
included, and the whitening fit, once) under torch.profiler, by aten op, self time.
Every op is put in a kind by its name (KINDS). JAX's time is the wall split among
XLA's thunks: XLA:CPU runs several at once and a convolution's work on its thread
pool outlasts its launch, so each moment is shared evenly by the thunks running then.
PyTorch's is each op's self time on the calling thread (its kernels' threads inside).
OUT/profile.json: per side the wall ms per step, each kind's ms per step and share
("no op running": the rest of the wall), and the ten costliest ops; OUT/jax_trace
holds JAX's trace (TensorBoard's profile plugin or Perfetto open it). The trace keeps
at most a million events: one step of fast_muon's batch on 2 CPU cores made about
350,000 (most of them its thread pool's), three lost some; a cut trace is an error.
--tiny: toy widths and batch 32, for the test suite.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import fast_muon
from resnet_jax import model_setup, models, optim, train
from resnet_jax.data import batches

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from race import TINY  # the race's toy fast_muon, on both sides
TRACE_EVENT_LIMIT = 1_000_000  # jax.profiler's Perfetto trace keeps at most this many
# (kind, pattern on the lower-cased op name), first match wins. XLA names a fusion
# after what it holds (transpose_copy_fusion); PyTorch's backward ops carry their
# forward's name (ConvolutionBackward0, NativeBatchNormBackward0).
KINDS = (("convolution", r"conv(?!ert)"), ("pooling", r"pool|reduce-window|select-and-scatter"),
         ("batchnorm", r"batch_norm|batchnorm"), ("matmul", r"\bdot|mm\b|matmul|linear"),
         ("transpose and copy", r"transpose|copy|permute|contiguous|clone|_to\b|aten::to\b"),
         ("reduction", r"reduce|sum|mean"), ("elementwise and other", r""))


def kind(name: str) -> str:
  return next(k for k, pattern in KINDS if re.search(pattern, name.lower()))


def table(op_us: dict[str, float], steps: int, wall_s: float) -> dict:
  """ms per step by kind and the ten costliest ops, from {op name: total microseconds};
  "no op running" is the rest of the wall time (dispatch, the host)."""
  by_kind = collections.Counter()
  for name, us in op_us.items():
    by_kind[kind(name)] += us
  by_kind["no op running"] = max(0.0, 1e6 * wall_s - sum(by_kind.values()))
  total = sum(by_kind.values()) or 1.0
  return {"wall_ms_per_step": round(1e3 * wall_s / steps, 1),
          "kinds": {k: {"ms_per_step": round(us / 1e3 / steps, 1), "share": round(us / total, 3)}
                    for k, us in by_kind.most_common()},
          "top_ops": {n: round(us / 1e3 / steps, 1)
                      for n, us in collections.Counter(op_us).most_common(10)}}


def _thunk_intervals(events: list[dict]) -> list[tuple[str, float, float]]:
  """(name, start, end) of each thunk XLA:CPU ran. A thunk's event covers its launch; one
  that runs on the thread pool ends at its "end: NAME" event (the n-th with the n-th)."""
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for e in sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"]):
    name = e["name"]
    if name.startswith("end: "):
      ends[name[5:]].append(e["ts"] + e["dur"])
    elif re.fullmatch(r"[a-z][\w\-.$]*", name):  # HLO's names, not the runtime's; oneDNN's
      # calls are named after their target: custom-call.1.clone__onednn$convolution
      starts[name].append(e)
  return [(name, e["ts"], max([e["ts"] + e["dur"]] + ends[name][i:i + 1]))
          for name, occurrences in starts.items() for i, e in enumerate(occurrences)]


def _thunk_us(trace_dir: str) -> dict[str, float]:
  """{XLA thunk name: microseconds of the wall} from jax.profiler's Perfetto trace: each
  moment is split evenly among the thunks running then, so they add up to the time
  any ran. A conditional (a fusion barrier) counts only while nothing inside it runs."""
  # The newest: each profiled run adds a trace, and a rerun into the same --out must not
  # read an older one.
  traces = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
  with gzip.open(max(traces, key=os.path.getmtime)) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  if len(events) >= TRACE_EVENT_LIMIT:
    raise SystemExit(f"error: the trace in {trace_dir} hit the profiler's {TRACE_EVENT_LIMIT:,} "
                     "events and lost the rest; profile fewer --steps")
  intervals = _thunk_intervals(events)
  # One sweep over the starts and ends (a trace holds some 10^5 thunks): between two
  # consecutive times, the thunks started and not yet ended are the ones running.
  edges = sorted((t, i, step) for i, (_, start, end) in enumerate(intervals)
                 for t, step in ((start, 1), (end, -1)))
  active, us, last = collections.Counter(), collections.Counter(), None
  for t, i, step in edges:
    running = [intervals[j][0] for j, count in active.items() if count > 0]
    inner = [n for n in running if not n.startswith("cond")] or running
    for name in inner:
      us[name] += (t - last) / len(inner)
    active[i] += step
    if not active[i]:
      del active[i]  # ended: the running set stays as small as what runs at once
    last = t
  return dict(us)


def profile_jax(args) -> dict:
  config = fast_muon.get_config()
  config.dtype = args.dtype
  batch_size = TINY["batch_size"] if args.tiny else config.batch_size
  if args.tiny:
    config.model.widths = TINY["widths"]
  model = model_setup.build_model(config)
  steps = train.Steps(config, model, total_steps=100)
  tx, _ = optim.create_optimizer(config.optimizer, 10, config.num_epochs, batch_size=batch_size,
                                 param_labels=models.family_of(model).param_labels)
  state = train.create_train_state(config, model, tx, total_steps=100)
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32)
  state = steps.place_state(state.replace(**models.fit_to_data(
      model, state.variables, lambda n: pixels[:n])))
  batch = batches.place({"image": pixels, "mask": np.ones(batch_size, bool),
                         "label": rng.integers(0, 10, batch_size).astype(np.int32)}, steps.data)
  state = jax.block_until_ready(steps.train(state, batch)[0])  # compiles
  trace_dir = os.path.join(args.out, "jax_trace")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, _ = steps.train(state, batch)
    jax.block_until_ready(state)
    wall_s = time.perf_counter() - start
  return {"dtype": model.dtype, **table(_thunk_us(trace_dir), args.steps, wall_s)}


def profile_torch(args) -> dict:
  import torch
  from tests import airbench_reference as airbench
  size = TINY if args.tiny else {"batch_size": 2000, "epochs": 1}
  rng = np.random.default_rng(0)
  n = size["batch_size"] * args.steps
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(n) % 10
  airbench.train(images[:2 * size["batch_size"]], labels[:2 * size["batch_size"]],
                 autocast=True, **size)  # warm-up: oneDNN's kernels chosen, threads started
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    airbench.train(images, labels, autocast=True, **size)
    wall_s = time.perf_counter() - start
  ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
  return table(ops, args.steps, wall_s)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder for profile.json and the JAX trace")
  parser.add_argument("--steps", type=int, default=1, help="profiled steps a side")
  parser.add_argument("--tiny", action="store_true", help="seconds, for the tests")
  parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                      help="JAX's compute dtype (config.dtype)")
  args = parser.parse_args()
  if args.steps < 1:
    raise SystemExit(f"error: --steps {args.steps}: profile at least one step")
  os.makedirs(args.out, exist_ok=True)
  report = {"command": " ".join(["scripts/profile_step.py"] + sys.argv[1:]), "tiny": args.tiny,
            "jax": profile_jax(args), "torch": profile_torch(args)}
  with open(os.path.join(args.out, "profile.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps({side: report[side]["wall_ms_per_step"] for side in ("jax", "torch")}))


if __name__ == "__main__":
  main()
