"""Whole run against whole run: configs/fast_muon.py (JAX) and airbench94_muon's recipe in
PyTorch (tests/airbench_reference.py), one after the other on this machine, as JSON.

    python scripts/race.py --data DATA --out OUT [--target 0.905] [--skip_warm] [--tiny]

DATA is a cifar-10-batches-py directory or cifar-10-python.tar.gz. Both train on
train[:45000] and are scored on train[45000:] with TTA level 2 (the same views on
both sides), each in a process of its own, timed by this one from its start:
  jax_cold  `python -m resnet_jax.main --config configs/fast_muon.py` with an empty
            compilation cache (OUT/jax_cache);
  jax_warm  the same config in a fresh workdir with the cache jax_cold filled, as a
            second run on the same machine meets it (--skip_warm leaves it out);
  torch     the reference's training loop, bf16 autocast and channels_last (the
            fastest on a CPU with AVX-512 BF16; an option of the reference), then its
            TTA evaluation. PyTorch runs on the CPU only: the reference has no GPU path.
Each side's recipe runs as it is: ours evaluates the hold-out after every epoch (in
its epoch times), airbench only at the end. A run reaches `--target` only at its end,
where TTA is measured, so its time to the target is its whole wall time or none.
OUT/race.json: per run the command, wall seconds from process start, seconds before
the first step, the training loop's seconds, the first and the median later epoch
(their difference: compiling, for JAX), images/s, the accuracies; the machine; and
the ratio of the JAX runs' wall times to PyTorch's. OUT must be new or empty: runs left
there would resume instead of starting. --tiny: a toy width, 200 images, one epoch, for
the test suite.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"full": ("train[:45000]", "train[45000:]"), "tiny": ("train[:200]", "train[200:300]")}
TINY = {"widths": (8, 16, 16), "batch_size": 100, "epochs": 1}


def _jax_run(args, name: str, cache: str) -> dict:
  train_split, eval_split = SPLITS["tiny" if args.tiny else "full"]
  workdir = os.path.join(args.out, name)
  command = [sys.executable, "-m", "resnet_jax.main", "--config", "configs/fast_muon.py",
             "--workdir", workdir, "--config.data.source=files", f"--config.data.dir={args.data}",
             f"--config.data.train_split={train_split}", f"--config.data.eval_split={eval_split}",
             f"--config.compilation_cache_dir={cache}"]
  if args.tiny:
    command += [f"--config.model.widths={TINY['widths']}".replace(" ", ""),
                f"--config.batch_size={TINY['batch_size']}",
                f"--config.eval_batch_size={TINY['batch_size']}",
                f"--config.num_epochs={TINY['epochs']}"]
  wall_s = _timed(command, os.path.join(args.out, f"{name}.log"))
  with open(os.path.join(workdir, "history.json")) as f:
    history = json.load(f)
  ends = [h["elapsed_s"] for h in history]
  epochs = [b - a for a, b in zip([0.0] + ends, ends)]
  return _summary(command, wall_s, epochs, history[-1]["eval_accuracy"],
                  history[-1].get("eval_tta_accuracy"),
                  max(h["images_per_s"] for h in history), args.target)


def _torch_run(args) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--torch_worker", "--data", args.data,
             "--out", args.out, *(["--tiny"] if args.tiny else [])]
  wall_s = _timed(command, os.path.join(args.out, "torch.log"))
  with open(os.path.join(args.out, "torch_worker.json")) as f:
    worker = json.load(f)
  return _summary(command, wall_s, worker["epoch_s"], worker["eval_accuracy"],
                  worker["eval_tta_accuracy"], worker["images_per_s"], args.target)


def _timed(command: list[str], log_path: str) -> float:
  """Runs `command` in the repo, its output into `log_path`; its wall seconds."""
  start = time.perf_counter()
  with open(log_path, "w") as log:
    code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
  if code:
    raise SystemExit(f"error: {shlex.join(command[1:4])} ... exited with {code}; see {log_path}")
  return time.perf_counter() - start


def _summary(command, wall_s, epoch_s, accuracy, tta_accuracy, images_per_s, target) -> dict:
  loop_s = sum(epoch_s)
  later = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else None
  reached = tta_accuracy is not None and tta_accuracy >= target
  return {"command": shlex.join(command[1:]), "wall_s": round(wall_s, 1),
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
  sys.path.insert(0, REPO)
  from resnet_jax.data import datasets, sources  # pylint: disable=g-import-not-at-top
  from tests import airbench_reference as airbench  # pylint: disable=g-import-not-at-top
  train_split, eval_split = SPLITS["tiny" if args.tiny else "full"]
  cifar10 = datasets.DATASETS["cifar10"]
  images, labels = sources.load_files(args.data, train_split, cifar10)
  eval_images, eval_labels = sources.load_files(args.data, eval_split, cifar10)
  size = dict(widths=TINY["widths"], batch_size=TINY["batch_size"],
              epochs=TINY["epochs"]) if args.tiny else {}
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
  parser.add_argument("--tiny", action="store_true", help="seconds, for the tests")
  parser.add_argument("--torch_worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if not os.path.exists(args.data):
    raise SystemExit(f"error: --data {args.data} does not exist")
  if args.torch_worker:
    return torch_worker(args)
  if os.path.isdir(args.out) and os.listdir(args.out):  # its runs would resume, not start
    raise SystemExit(f"error: --out {args.out} is not empty; a race starts from nothing")
  os.makedirs(args.out, exist_ok=True)
  cache = os.path.join(args.out, "jax_cache")
  shutil.rmtree(cache, ignore_errors=True)  # cold: nothing compiled before
  runs = {"jax_cold": _jax_run(args, "jax_cold", cache)}
  if not args.skip_warm:
    runs["jax_warm"] = _jax_run(args, "jax_warm", cache)
  runs["torch"] = _torch_run(args)
  report = {"command": shlex.join(["scripts/race.py"] + sys.argv[1:]), "tiny": args.tiny,
            "target": args.target, "machine": {"platform": platform.platform(),
                                               "cpus": os.cpu_count()},
            "runs": runs,
            "wall_over_torch": {name: round(run["wall_s"] / runs["torch"]["wall_s"], 2)
                                for name, run in runs.items() if name != "torch"}}
  with open(os.path.join(args.out, "race.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report["wall_over_torch"]))


if __name__ == "__main__":
  main()
