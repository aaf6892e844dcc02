"""Input pipeline throughput, printed as one JSON object.

    python scripts/benchmark_input.py [--data_dir DIR] [--batch_size 128] [--pipelines tfdata,device]

Measures images/s of the tf.data train pipeline for each augmentation preset, of
the numpy eval batches (batches.EvalSplit), and of the on-device pipeline (get_batch under jit, on JAX's
default backend). Without --data_dir it uses 50,000 random images (the ops cost
the same whatever the pixels). Targets (issue 3): tf.data shallow >= 10,000/s and
deep >= 3,000/s on the 2-core CPU machine; device path >= 100,000/s on a GPU.
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time

import jax
import numpy as np

from resnet_jax.data import augmentations, batches, datasets, device_pipeline, sources

# The original project's Normalize(0.5, 0.5): every normalisation costs the same.
NORMALIZATION = (np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32))


def _rate(batches, batch_size: int, warmup: int, steps: int) -> float:
  iterator = iter(batches)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * batch_size / (time.perf_counter() - start)


def tfdata_results(images, labels, batch_size, steps):
  from resnet_jax.data import tfdata_pipeline  # pylint: disable=g-import-not-at-top
  results = []
  for preset in ("shallow", "deep"):
    split = tfdata_pipeline.InputSplit(
        images, labels, batch_size=batch_size,
        augment_settings=augmentations.preset(preset), normalization=NORMALIZATION)
    rate = _rate(split.epoch(0), batch_size, warmup=10,
                 steps=min(steps, split.steps_per_epoch - 10))
    results.append({"pipeline": "tfdata", "mode": "train", "preset": preset,
                    "batch_size": batch_size, "images_per_s": round(rate)})
  return results


def eval_results(images, labels, batch_size, steps):
  split = batches.EvalSplit(images, labels, batch_size=batch_size, normalization=NORMALIZATION)
  rate = _rate(split.epoch(), batch_size, warmup=10, steps=min(steps, split.steps_per_epoch - 10))
  return [{"pipeline": "numpy", "mode": "eval", "preset": "none", "batch_size": batch_size,
           "images_per_s": round(rate)}]


def device_results(images, labels, batch_size, steps):
  split = device_pipeline.DeviceSplit(
      images, labels, batch_size=batch_size,
      augment_settings=augmentations.preset("shallow"), normalization=NORMALIZATION)
  order = split.epoch_order(0)

  @jax.jit
  def batch_sum(arrays, step, key):  # a reduction forces the whole batch to be computed
    return split.get_batch(arrays, order, step, key)["image"].sum()

  def batches():
    for step in range(split.steps_per_epoch):
      yield batch_sum(split.arrays, step, jax.random.key(step)).block_until_ready()

  rate = _rate(batches(), batch_size, warmup=5, steps=min(steps, split.steps_per_epoch - 5))
  return [{"pipeline": "device", "mode": "train", "preset": "shallow", "batch_size": batch_size,
           "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "images_per_s": round(rate)}]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", help="a cifar-10-batches-py directory or archive")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=200, help="timed batches per measurement")
  parser.add_argument("--pipelines", default="tfdata,device")
  args = parser.parse_args()
  if args.data_dir:
    images, labels = sources.load_files(args.data_dir, "train", datasets.DATASETS["cifar10"])
  else:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 50_000).astype(np.int32)
  results = []
  pipelines = args.pipelines.split(",")
  if "tfdata" in pipelines:
    results += tfdata_results(images, labels, args.batch_size, args.steps)
  results += eval_results(images, labels, args.batch_size, args.steps)
  if "device" in pipelines:
    results += device_results(images, labels, args.batch_size, args.steps)
  print(json.dumps({
      "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": platform.processor()},
      "results": results}, indent=1))


if __name__ == "__main__":
  main()
