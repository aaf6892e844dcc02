"""What checkpoint checksums cost on save and on restore, printed as one JSON object.

    python scripts/benchmark_checksums.py [--repeats 5] [--tiny]

Builds configs/frontier.py's full train state (the largest FastResNet, 4.84M parameters,
with its optimizer state, weight averages and epoch metrics) as training does, on
JAX's default backend, untrained, and times, each the median of --repeats:
  hash_on_save_s:      the checksums that save_training computes (the host copies included)
                       before it hands the arrays to Orbax;
  verify_on_restore_s: restore_training's verification of the arrays it restored;
  save_s, restore_s:   a whole save (until written) and restore of that state in a
                       temporary directory, checksums included, for scale;
and reports bytes_hashed (each of save and restore hashes them once) and the hashlib
throughput of the algorithm (checkpoints.CHECKSUM) and of blake2b on those bytes' size.
--tiny: the smoke model, for a quick look; its numbers measure nothing.
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position,protected-access
from configs import frontier, smoke
from resnet_jax import checkpoints, model_setup, models, optim, train
from resnet_jax.data import datasets

STEPS_PER_EPOCH = 98  # about 50,000 images at batch 512: only schedules read it


def _state(config):
  """(model, train state on the replicated sharding, epoch metrics, that sharding)."""
  model = model_setup.build_model(config)
  steps = train.Steps(config, model, total_steps=STEPS_PER_EPOCH * config.num_epochs)
  tx, _ = optim.create_optimizer(config.optimizer, STEPS_PER_EPOCH, config.num_epochs,
                                 batch_size=config.batch_size,
                                 param_labels=models.family_of(model).param_labels)
  state = steps.place_state(train.create_train_state(
      config, model, tx, optim.plateau_from_config(config.optimizer),
      total_steps=STEPS_PER_EPOCH * config.num_epochs))
  return model, state, train.Metrics.empty(), steps.replicated


def _median_s(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _throughput_gb_s(algorithm: str, size: int) -> float:
  data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
  return size / 1e9 / _median_s(lambda: hashlib.new(algorithm, data).digest(), 3)


def _cpu() -> dict:
  """The CPU's name and the flags that set hashing speed (SHA-NI) and XLA:CPU's vectors."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return {"name": platform.processor(), "flags": []}
  name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
               if line.startswith("model name")), "")
  return {"name": name, "flags": sorted({"avx2", "avx512f", "sha_ni"} & set(text.split()))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args()
  config = smoke.get_config() if args.tiny else frontier.get_config()
  model, state, metrics, sharding = _state(config)
  items = checkpoints._state_items(state, metrics)  # as save_training makes them
  items["train"]["metrics"] = checkpoints._host_values(items["train"]["metrics"])
  hash_on_save = _median_s(lambda: checkpoints._checksum_meta(items), args.repeats)
  size = sum(np.asarray(x).nbytes for x in jax.tree.leaves(jax.device_get(items)))
  meta = train._checkpoint_meta(config, model, [], 0, 0.0, 0.5)
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoints.training_manager(workdir, keep_last=args.repeats)

    def save():
      checkpoints.save_training(manager, len(manager.all_steps()) + 1, state, metrics, meta)
      manager.wait_until_finished()

    save_s = _median_s(save, args.repeats)
    restore = lambda: checkpoints.restore_training(
        manager, 1, state, metrics, sharding, checkpoints.read_meta(manager, 1))
    restore_s = _median_s(restore, args.repeats)
    saved_meta = checkpoints.read_meta(manager, 1)
    restored = checkpoints._state_items(*restore())  # the items as restore_training reads them
    verify_on_restore = _median_s(
        lambda: checkpoints._verify(workdir, restored, saved_meta), args.repeats)
    manager.close()
  print(json.dumps({
      "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
      "model": config.model.name,
      "params": models.count_params(model, datasets.get(config.data).image_shape),
      "algorithm": checkpoints.CHECKSUM, "arrays": len(jax.tree.leaves(items)),
      "bytes_hashed": size, "hash_on_save_s": hash_on_save,
      "verify_on_restore_s": verify_on_restore, "save_s": save_s, "restore_s": restore_s,
      "hash_gb_per_s": {a: _throughput_gb_s(a, size) for a in (checkpoints.CHECKSUM, "blake2b")},
      "machine": {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                  "cpus": os.cpu_count(), "cpu": _cpu(), "jax": jax.__version__}}, indent=1))


if __name__ == "__main__":
  main()
