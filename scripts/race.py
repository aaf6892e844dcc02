"""Whole run against whole run: configs/fast_muon.py (JAX) and airbench94_muon's recipe in
PyTorch (tests/airbench_reference.py), one after the other on this machine, as JSON.

    python scripts/race.py --data DATA --out OUT [--target 0.905] [--skip_warm] [--warm_seed N]
        [--tiny]

DATA is a cifar-10-batches-py directory or cifar-10-python.tar.gz. Both train on
train[:45000] and are scored on train[45000:] with TTA level 2 (the same views on
both sides), each in a process of its own, timed by this one from its start:
  jax_cold  `python -m resnet_jax.main --config configs/fast_muon.py` with an empty
            compilation cache (OUT/jax_cache);
  jax_warm  the same config in a fresh workdir with the cache jax_cold filled, as a
            second run on the same machine meets it (--skip_warm leaves it out;
            --warm_seed trains it from another seed, the same work);
  torch     the reference's training loop, bf16 autocast and channels_last (the
            fastest on a CPU with AVX-512 BF16; an option of the reference), then its
            TTA evaluation. PyTorch runs on the CPU only: the reference has no GPU path.
Each side's recipe runs as it is: ours evaluates the hold-out after every epoch (in
its epoch times), airbench only at the end. A run reaches `--target` only at its end,
where TTA is measured, so its time to the target is its whole wall time or none.
OUT/race.json: per run the command (its output: OUT/race.log), wall seconds from
process start, seconds before the first step, the training loop's seconds, the first
and the median later epoch (their difference: compiling, for JAX), images/s, the
accuracies; the machine; and the ratio of the JAX runs' wall times to PyTorch's. OUT
must be new or empty: runs left there would resume instead of starting. --tiny: a toy
width, 64 images, one epoch, for the test suite (scripts/device_check.py's tiny split
and fast_muon model).
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_check  # pylint: disable=g-import-not-at-top,wrong-import-position

TIMEOUT_S = 4 * 3600  # one side's run; about 40 minutes for JAX's alone on 2 CPU cores
TINY = {"widths": (8, 16, 16), "batch_size": 32, "epochs": 1}  # device_check's tiny fast_muon


def _jax_run(args, name: str, cache: str, log, seed: int = 0) -> dict:
  result = device_check.recipe(
      "fast_muon", args.data, args.out, args.tiny, log, workdir=os.path.join(args.out, name),
      flags=(f"--config.compilation_cache_dir={cache}", f"--config.seed={seed}"),
      timeout=TIMEOUT_S)
  ends = [h["elapsed_s"] for h in result["per_epoch"]]
  epochs = [b - a for a, b in zip([0.0] + ends, ends)]
  return _summary(result["command"], result["wall_s"], epochs, result["eval_accuracy"],
                  result["eval_tta_accuracy"], result["images_per_s"], args.target)


def _machine() -> dict:
  """The machine, with the CPU flags that decide JAX's dtype auto (resnet_jax/xla_cpu.py)."""
  from resnet_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
          "cpu_flags": xla_cpu.reported_flags(),
          "jax_dtype_auto": xla_cpu.auto_dtype()[0]}


def _torch_run(args, log) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--torch_worker", "--data", args.data,
             "--out", args.out, *(["--tiny"] if args.tiny else [])]
  start = time.perf_counter()
  code, _ = device_check._run(command, log, timeout=TIMEOUT_S)  # pylint: disable=protected-access
  wall_s = time.perf_counter() - start
  if code:
    raise SystemExit(f"error: the PyTorch side exited with {code}; see {args.out}/race.log")
  with open(os.path.join(args.out, "torch_worker.json")) as f:
    worker = json.load(f)
  return _summary(shlex.join(command[1:]), wall_s, worker["epoch_s"], worker["eval_accuracy"],
                  worker["eval_tta_accuracy"], worker["images_per_s"], args.target)


def _summary(command, wall_s, epoch_s, accuracy, tta_accuracy, images_per_s, target) -> dict:
  loop_s = sum(epoch_s)
  later = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else None
  reached = tta_accuracy is not None and tta_accuracy >= target
  return {"command": command, "wall_s": round(wall_s, 1),
          "before_first_step_s": round(wall_s - loop_s, 1), "loop_s": round(loop_s, 1),
          "first_epoch_s": round(epoch_s[0], 1),
          "median_later_epoch_s": None if later is None else round(later, 1),
          "first_over_later_s": None if later is None else round(epoch_s[0] - later, 1),
          "images_per_s": round(images_per_s, 1), "eval_accuracy": accuracy,
          "eval_tta_accuracy": tta_accuracy, "reached_target": reached,
          "time_to_target_s": round(wall_s, 1) if reached else None}


def torch_worker(args) -> None:
  """The PyTorch side, in its own process: trains, evaluates, writes torch_worker.json."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, device_check.REPO)
  from resnet_jax.data import datasets, sources  # pylint: disable=g-import-not-at-top
  from tests import airbench_reference as airbench  # pylint: disable=g-import-not-at-top
  train_split, eval_split = device_check.SPLITS["tiny" if args.tiny else "full"]
  cifar10 = datasets.DATASETS["cifar10"]
  images, labels = sources.load_files(args.data, train_split, cifar10)
  eval_images, eval_labels = sources.load_files(args.data, eval_split, cifar10)
  size = TINY if args.tiny else {}  # airbench.train's keywords
  ends = [time.perf_counter()]
  model = airbench.train(images, labels, autocast=True, **size,
                         on_epoch=lambda epoch, model: ends.append(time.perf_counter()))
  x, y = airbench.normalise(eval_images), torch.from_numpy(eval_labels).long()
  tta = airbench.evaluate(model, x, y, tta=True, autocast=True)
  ends[-1] = time.perf_counter()  # the final evaluation belongs to the last epoch, as ours
  epoch_s = [b - a for a, b in zip(ends, ends[1:])]
  batch_size = size.get("batch_size", 2000)  # the reference's default, as airbench's
  result = {"epoch_s": epoch_s, "eval_tta_accuracy": tta,
            "eval_accuracy": airbench.evaluate(model, x, y, tta=False, autocast=True),
            "images_per_s": len(images) // batch_size * batch_size / min(epoch_s),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
  with open(os.path.join(args.out, "torch_worker.json"), "w") as f:
    json.dump(result, f, indent=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="cifar-10-batches-py or its .tar.gz")
  parser.add_argument("--out", required=True, help="folder for race.json, the logs and runs")
  parser.add_argument("--target", type=float, default=0.905, help="hold-out accuracy with TTA")
  parser.add_argument("--skip_warm", action="store_true", help="no second, warm-cache JAX run")
  parser.add_argument("--warm_seed", type=int, default=0,
                      help="config.seed of the warm run: another seed makes it a second "
                           "accuracy sample at the same cost (the cold run trains seed 0)")
  parser.add_argument("--tiny", action="store_true", help="seconds, for the tests")
  parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  device_check.absolute_paths(args, "data", "out")
  if not os.path.exists(args.data):
    raise SystemExit(f"error: --data {args.data} does not exist")
  if args.torch_worker:
    return torch_worker(args)
  if os.path.isdir(args.out) and os.listdir(args.out):  # its runs would resume, not start
    raise SystemExit(f"error: --out {args.out} is not empty; a race starts from nothing")
  os.makedirs(args.out, exist_ok=True)
  cache = os.path.join(args.out, "jax_cache")  # cold: a new folder, nothing compiled before
  with open(os.path.join(args.out, "race.log"), "a") as log:
    runs = {"jax_cold": _jax_run(args, "jax_cold", cache, log)}
    if not args.skip_warm:
      runs["jax_warm"] = _jax_run(args, "jax_warm", cache, log, args.warm_seed)
    runs["torch"] = _torch_run(args, log)
  report = {"command": shlex.join(["scripts/race.py"] + sys.argv[1:]), "tiny": args.tiny,
            "target": args.target, "machine": _machine(),
            "runs": runs,
            "wall_over_torch": {name: round(run["wall_s"] / runs["torch"]["wall_s"], 2)
                                for name, run in runs.items() if name != "torch"}}
  with open(os.path.join(args.out, "race.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report["wall_over_torch"]))


if __name__ == "__main__":
  main()
