"""Everything a GPU or TPU session should measure, in one command: one JSON file and a log.

    python scripts/device_check.py --data DATA --out OUT [--wheels DIR] [--tiny]

DATA is a cifar-10-batches-py directory, or the shared training zip
(cifar10-train-jpeg-q75.zip), which make_cifar10_batches.py beside it unpacks
into OUT/data. DIR holds wheels of the pure-Python packages a measurement
machine may lack (ml_collections, clu, dm-pix and their dependencies), installed
only when one of them cannot be imported:

    pip download --no-deps -d wheels ml_collections clu dm-pix chex toolz

On the H200 of docs/performance.md they were instead installed beforehand with
`pip install --no-index --no-deps --target DIR` and DIR put on PYTHONPATH.

The parts, in order, each a subprocess with its own time limit (a part that
fails is recorded and the rest still run):
  benchmark_shallow  scripts/benchmark.py in bfloat16 against PyTorch AMP
      (channels_last) on the same device, with the share of the card's bf16 peak
      (issue 14's targets: shallow train >= 1.2x PyTorch and >= 40% of peak;
      eval >= 3x train)
  fast     configs/fast.py (10 epochs, TTA) on train[:45000], validated on
      train[45000:], device pipeline, dtype auto: wall time, images/s, hold-out
      accuracy against issue 13's 90.3% target (airbench94: 3.8 s on an A100)
  benchmark_deep  as benchmark_shallow, for the deep model
  shallow  the original project's shallow recipe, 30 epochs, the same split: wall time,
      hold-out accuracy
OUT/device_check.json has each part's result; OUT/device_check.log every line
the parts printed. On one H200 (2026-11-27) the parts took 49-102 s each, about 5 minutes
in all (docs/performance.md).
--tiny shrinks every part to seconds (tiny models, a few hundred examples, one
epoch) so that the suite runs it on a CPU before a GPU minute is spent on it.
"""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"full": ("train[:45000]", "train[45000:]"), "tiny": ("train[:64]", "train[64:96]")}
TINY_MODELS = {"shallow": ["--config.model.stem_width=8", "--config.model.stage_widths=(8,16,32)",
                           "--config.model.stage_blocks=(1,1,1)"],
               "fast": ["--config.model.widths=(8,16,16)"]}
TINY_MODELS["fast_muon"] = TINY_MODELS["fast"]  # fast_muon trains fast's model
FAST_TARGET = 0.903  # issue 13: hold-out accuracy with TTA


def absolute_paths(args, *names: str) -> None:
  """Makes the path arguments `names` absolute: the commands run in the repository's root
  (REPO), and a relative path must name the same folder there as where the user typed it."""
  for name in names:
    if getattr(args, name):
      setattr(args, name, os.path.abspath(getattr(args, name)))


TIMED_OUT = -1000  # _run's returncode for a command stopped at its timeout: no process's


def _run(command: list[str], log, timeout: float) -> tuple[int, str]:
  """(returncode, stdout) of `command` run in the repo, TIMED_OUT where it ran past
  `timeout` seconds and was stopped; everything it prints goes to `log`."""
  log.write(f"\n$ {' '.join(shlex.quote(c) for c in command)}\n")
  log.flush()
  try:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    log.write(f"(stopped after {timeout:.0f} s)\n{e.stdout or ''}{e.stderr or ''}")
    return TIMED_OUT, ""
  log.write(result.stdout + result.stderr)
  return result.returncode, result.stdout


def _install_missing(wheels: str | None, log) -> None:
  missing = [name for module, name in (("ml_collections", "ml_collections"), ("clu", "clu"),
                                       ("dm_pix", "dm-pix"))
             if importlib.util.find_spec(module) is None]
  if missing and not wheels:
    raise SystemExit(f"error: {missing} cannot be imported here: pass --wheels DIR")
  if missing:
    code, _ = _run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
                    *missing], log, timeout=300)
    if code:
      raise SystemExit(f"error: installing {missing} from {wheels} failed; see the log")


def _cifar_dir(data: str, out: str, log) -> str:
  if os.path.isdir(data):
    return data
  unpack = os.path.join(os.path.dirname(os.path.abspath(data)), "make_cifar10_batches.py")
  target = os.path.join(out, "data", "cifar-10-batches-py")  # it writes the batches into target
  code, _ = _run([sys.executable, unpack, data, target], log, timeout=300)
  if code:
    raise SystemExit(f"error: {unpack} could not unpack {data}; see the log")
  return target


def benchmark(model: str, tiny: bool, log) -> dict:
  size = ["--batch_size", "8", "--steps", "1", "--rounds", "1", "--tiny"] if tiny else \
      ["--batch_size", "256", "--steps", "20", "--rounds", "3"]
  code, stdout = _run([sys.executable, "scripts/benchmark.py", "--model", model, "--dtype",
                       "bfloat16", "--compare_torch", *size], log, timeout=600)
  if code:
    raise RuntimeError(f"scripts/benchmark.py exited with {code}")
  report = json.loads(stdout)
  report["eval_over_train"] = report["eval_images_per_s"] / report["train_images_per_s"]
  return report


def recipe(name: str, data_dir: str, out: str, tiny: bool, log, flags: tuple[str, ...] = (),
           workdir: str | None = None, timeout: float = 900) -> dict:
  """Trains configs/<name>.py (and `flags`) on the hold-out split; its history summarised.
  `timeout`: seconds it may take (a GPU's run takes minutes; a CPU's, an hour)."""
  workdir = workdir or os.path.join(out, name)
  train_split, eval_split = SPLITS["tiny" if tiny else "full"]
  command = [sys.executable, "-m", "resnet_jax.main", "--config", f"configs/{name}.py",
             "--workdir", workdir, "--config.data.source=files",
             f"--config.data.dir={data_dir}", "--config.data.pipeline=device",
             f"--config.data.train_split={train_split}", f"--config.data.eval_split={eval_split}",
             *flags]
  if tiny:
    command += ["--config.num_epochs=1", "--config.batch_size=32",
                "--config.eval_batch_size=32", *TINY_MODELS[name]]
  start = time.perf_counter()
  code, _ = _run(command, log, timeout=timeout)
  wall_s = time.perf_counter() - start
  if code == TIMED_OUT:
    raise RuntimeError(f"training configs/{name}.py did not finish in its {timeout:.0f} s; "
                       "stopped")
  if code:
    raise RuntimeError(f"training configs/{name}.py exited with {code}")
  with open(os.path.join(workdir, "history.json")) as f:
    history = json.load(f)
  final = history[-1]
  result = {"command": " ".join(shlex.quote(c) for c in command[1:]),
            "wall_s": round(wall_s, 1), "epochs": len(history),
            "eval_accuracy": final["eval_accuracy"],
            "eval_tta_accuracy": final.get("eval_tta_accuracy"),
            "images_per_s": max(h["images_per_s"] for h in history),  # the first compiles
            "per_epoch": [{k: round(h[k], 4) for k in ("eval_accuracy", "elapsed_s")}
                          for h in history]}
  if name == "fast":
    result["reached_target"] = (final.get("eval_tta_accuracy") or 0) >= FAST_TARGET
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="cifar-10-batches-py directory or the zip")
  parser.add_argument("--out", required=True, help="folder for device_check.json, the log, runs")
  parser.add_argument("--wheels", help="folder of wheels for missing pure-Python packages")
  parser.add_argument("--tiny", action="store_true", help="every part in seconds, for the tests")
  args = parser.parse_args()
  absolute_paths(args, "data", "out", "wheels")
  os.makedirs(args.out, exist_ok=True)
  report = {"command": " ".join(shlex.quote(a) for a in ["scripts/device_check.py"]
                                + sys.argv[1:]), "tiny": args.tiny, "parts": {}}
  with open(os.path.join(args.out, "device_check.log"), "a") as log:
    _install_missing(args.wheels, log)
    data_dir = _cifar_dir(args.data, args.out, log)
    import jax  # pylint: disable=g-import-not-at-top  # after any install
    report["device"] = {"backend": jax.default_backend(), "kind": jax.devices()[0].device_kind,
                        "count": jax.device_count(), "jax": jax.__version__}
    # Shortest and most asked-for first: a run cut off by its lease keeps those.
    parts = {"benchmark_shallow": lambda: benchmark("shallow", args.tiny, log),
             "fast": lambda: recipe("fast", data_dir, args.out, args.tiny, log),
             "benchmark_deep": lambda: benchmark("deep", args.tiny, log),
             "shallow": lambda: recipe("shallow", data_dir, args.out, args.tiny, log)}
    for name, part in parts.items():
      start = time.perf_counter()
      try:
        report["parts"][name] = {"ok": True, **part()}
      except Exception as e:  # pylint: disable=broad-except  # recorded; the rest still run
        report["parts"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
      report["parts"][name]["seconds"] = round(time.perf_counter() - start, 1)
      print(f"{name}: {'ok' if report['parts'][name]['ok'] else 'FAILED'} "
            f"({report['parts'][name]['seconds']} s)", flush=True)
      with open(os.path.join(args.out, "device_check.json"), "w") as f:
        json.dump(report, f, indent=1)  # after every part: a killed run keeps what finished
  if not all(p["ok"] for p in report["parts"].values()):
    raise SystemExit(f"some parts failed: see {args.out}/device_check.log")


if __name__ == "__main__":
  main()
