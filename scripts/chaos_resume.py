"""Hard-crash test: SIGKILL training at random moments, resume, compare with a clean run.

    python scripts/chaos_resume.py --kills 20 [--epochs 12] [--seed 0] [--workdir DIR]

Trains configs/smoke.py (generated data, CPU) once without interruption, then
again in a second workdir, killing the process with SIGKILL at random moments
(mid-step, mid-save, during start-up) `--kills` times and rerunning the same
command after each kill, until a run completes. Prints one JSON object: the kill
times, how far each killed run got (its newest checkpoint), and whether the final
parameters, BatchNorm statistics, optimizer state and per-epoch metrics are
identical to the uninterrupted run (they must be, bitwise, on CPU).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from resnet_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def _command(workdir: str, epochs: int) -> list[str]:
  return [sys.executable, "-m", "resnet_jax.main", "--config", "configs/smoke.py",
          "--workdir", workdir, f"--config.num_epochs={epochs}",
          "--config.keep_checkpoints=2"]


def _run(workdir: str, epochs: int, kill_after: float | None = None) -> dict:
  """Runs training, SIGKILLing it after `kill_after` seconds; notes when it first checkpointed."""
  start = time.perf_counter()
  process = subprocess.Popen(_command(workdir, epochs), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  first_checkpoint = None
  while process.poll() is None:
    elapsed = time.perf_counter() - start
    if first_checkpoint is None and _latest_step(workdir) is not None:
      first_checkpoint = elapsed
    if kill_after is not None and elapsed >= kill_after:
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  return {"exit_code": process.wait(), "seconds": time.perf_counter() - start,
          "first_checkpoint_s": first_checkpoint}


def _latest_step(workdir: str) -> int | None:
  directory = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) \
      else []
  return max(steps, default=None)


def _final(workdir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from resnet_jax import checkpoints  # pylint: disable=g-import-not-at-top
  with checkpoints.reading_manager(workdir) as manager:
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(), train=ocp.args.StandardRestore()))
  with open(os.path.join(workdir, "history.json")) as f:
    history = [{k: v for k, v in h.items() if k not in train.TIMED_SCALARS} for h in json.load(f)]
  return step, jax.tree.map(np.asarray, {"model": restored["model"], "train": restored["train"]}), \
      history


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
  parser.add_argument("--workdir", help="where both runs go (default: a new temp dir)")
  args = parser.parse_args()
  # Absolute: the runs start in the repository's root, and _latest_step looks from here.
  root = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="chaos_")
  if os.path.isdir(root) and os.listdir(root):  # finished runs would "resume" and match
    sys.exit(f"error: --workdir {args.workdir} is not empty; the runs start from nothing")
  clean, chaotic = os.path.join(root, "uninterrupted"), os.path.join(root, "killed")

  clean_run = _run(clean, args.epochs)
  if clean_run["exit_code"] != 0:
    sys.exit(f"the uninterrupted run failed with exit code {clean_run['exit_code']}")
  # Kill anywhere from start-up to 1.5 epochs past the first checkpoint: start-up,
  # training steps and (asynchronous) saves are all hit, and each killed run
  # advances the checkpointed progress by at most about an epoch.
  startup = clean_run["first_checkpoint_s"]
  epoch_s = (clean_run["seconds"] - startup) / max(args.epochs - 1, 1)
  rng = random.Random(args.seed)
  kills = []
  for _ in range(args.kills):
    after = rng.uniform(0.2, startup + 1.5 * epoch_s)
    result = _run(chaotic, args.epochs, after)
    kills.append({"after_s": round(after, 2), "exit_code": result["exit_code"],
                  "latest_checkpoint_step": _latest_step(chaotic)})
    if result["exit_code"] == 0:  # finished before its kill: nothing left to interrupt
      break
  final = _run(chaotic, args.epochs)
  code = final["exit_code"]

  step_a, arrays_a, history_a = _final(clean)
  step_b, arrays_b, history_b = _final(chaotic)
  leaves_a, leaves_b = jax.tree.leaves(arrays_a), jax.tree.leaves(arrays_b)
  identical = (step_a == step_b and len(leaves_a) == len(leaves_b)
               and all(np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b)))
  report = {"command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
            "epochs": args.epochs, "kills": kills, "uninterrupted_seconds": round(clean_run["seconds"], 1),
            "killed_runs": sum(k["exit_code"] == -signal.SIGKILL for k in kills),
            "final_step": step_b, "final_exit_code": code,
            "arrays_identical": bool(identical), "history_identical": history_a == history_b,
            "workdir": root}
  print(json.dumps(report, indent=1))
  sys.exit(0 if identical and history_a == history_b else 1)


if __name__ == "__main__":
  main()
