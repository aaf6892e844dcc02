"""A recipe's hold-out accuracy over several seeds and flag variants: mean and spread.

    python scripts/seed_sweep.py --config NAME --data DATA --out OUT [--seeds N]
        [--parallel K] [--variant NAME=FLAGS ...] [--timeout S] [--wheels DIR] [--tiny]

Why: the recipes of docs/recipes.md differ by a few tenths of a point, about the
spread between two seeds, and a 2-core CPU trains one 8-epoch run an hour. On an
accelerator a run takes seconds once compiled, so one short lease can say which
differences are real.

Each variant (default: one named "base", with no flags; FLAGS as on main's command
line, e.g. --variant "bw3=--config.model.branch_weight=3") trains configs/NAME.py on
train[:45000] and validates on train[45000:], with the device pipeline, once per seed
0..N-1, into OUT/VARIANT_seedS (its log OUT/VARIANT_seedS.log, its flags
OUT/VARIANT_seedS.flags.json: a rerun into the same OUT resumes each run, and refuses one
whose variant's flags changed). Each run is stopped after --timeout seconds. K runs go at once:
one run's host work (start-up, compiling, input) overlaps another's device work,
each gets 0.9/K of an accelerator's memory (XLA_PYTHON_CLIENT_MEM_FRACTION, unless
set), and jax's persistent compilation cache (config.compilation_cache_dir) spares
every run after the first of a variant its compile. Runs go seed by seed, so a sweep cut
short still has each variant's first seeds. OUT/seed_sweep.json, rewritten after
every run: each run's accuracy with and without test-time augmentation and its wall
time (longer when runs share the machine), and each variant's mean and standard
deviation; the same as a markdown table on stdout at the end.
DATA and --wheels as in scripts/device_check.py, whose --tiny mode this shares.
"""

import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_check  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
  """{"name": [flag, ...]} from NAME=FLAGS strings; no specs: one variant, "base"."""
  variants = {}
  for spec in specs or ["base="]:
    name, sep, flags = spec.partition("=")
    if not sep or not name or not name.replace("_", "").isalnum():
      raise SystemExit(f"error: --variant {spec!r}: expected NAME=FLAGS, NAME letters, digits, _")
    if name in variants:
      raise SystemExit(f"error: --variant {name!r} is given twice")
    variants[name] = shlex.split(flags)
  return variants


def claim(workdir: str, flags: tuple[str, ...]) -> None:
  """Records the flags a run's workdir trains with (WORKDIR.flags.json); raises RuntimeError
  if it holds a run of other flags: a rerun resumes a workdir, and a finished one would be
  reported under the new flags without training."""
  path = workdir + ".flags.json"
  if os.path.isdir(workdir) and not os.path.exists(path):
    raise RuntimeError(f"{workdir} holds a run whose flags were not recorded: use another "
                       "--out")
  if os.path.exists(path):
    with open(path) as f:
      held = json.load(f)
    if held != list(flags):
      raise RuntimeError(f"{workdir} holds a run of flags {held}, not {list(flags)}: "
                         "use another --out")
  else:
    with open(path, "w") as f:
      json.dump(list(flags), f)


def summarise(runs: dict) -> dict:
  """Each variant's mean and standard deviation over the seeds that finished."""
  summary = {}
  for variant, by_seed in runs.items():
    done = [r for r in by_seed.values() if r.get("ok")]
    summary[variant] = {"seeds": len(done)}
    for key in ("eval_accuracy", "eval_tta_accuracy"):
      values = [r[key] for r in done if r.get(key) is not None]
      if values:
        summary[variant][f"{key}_mean"] = statistics.fmean(values)
        summary[variant][f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
  return summary


def table(summary: dict) -> str:
  lines = ["| variant | seeds | hold-out (mean ± std) | with TTA (mean ± std) |",
           "|---|---|---|---|"]
  for variant, s in summary.items():
    cells = [f"{s[k + '_mean']:.2%} ± {s[k + '_std']:.2%}" if k + "_mean" in s else "-"
             for k in ("eval_accuracy", "eval_tta_accuracy")]
    lines.append(f"| {variant} | {s['seeds']} | {cells[0]} | {cells[1]} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="a name in configs/, e.g. fast_muon")
  parser.add_argument("--data", required=True, help="cifar-10-batches-py directory or the zip")
  parser.add_argument("--out", required=True, help="folder for seed_sweep.json and the runs")
  parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 for each variant")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--variant", action="append", default=[], help="NAME=FLAGS, repeatable")
  parser.add_argument("--wheels", help="folder of wheels for missing pure-Python packages")
  parser.add_argument("--timeout", type=float, default=900,
                      help="seconds a run may take before it is stopped (default 900: a GPU's "
                           "runs take minutes; a CPU's, hours)")
  parser.add_argument("--tiny", action="store_true", help="tiny models and data, for the tests")
  args = parser.parse_args()
  device_check.absolute_paths(args, "data", "out", "wheels")
  if not os.path.isfile(os.path.join(device_check.REPO, "configs", f"{args.config}.py")):
    raise SystemExit(f"error: --config {args.config!r}: no configs/{args.config}.py")
  if args.tiny and args.config not in device_check.TINY_MODELS:
    raise SystemExit(f"error: --tiny has no tiny model for {args.config!r}; one of "
                     f"{sorted(device_check.TINY_MODELS)}")
  if args.seeds < 1 or args.parallel < 1:
    raise SystemExit(f"error: --seeds {args.seeds} and --parallel {args.parallel} must be >= 1")
  if not args.timeout > 0:
    raise SystemExit(f"error: --timeout {args.timeout} must be a positive number of seconds")
  variants = parse_variants(args.variant)
  if args.parallel > 1:  # jax takes 75% of an accelerator's memory per process by default
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.parallel:.2f}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "seed_sweep.log"), "a") as log:
    device_check._install_missing(args.wheels, log)  # pylint: disable=protected-access
    data_dir = device_check._cifar_dir(args.data, args.out, log)  # pylint: disable=protected-access
  report = {"command": " ".join(shlex.quote(a) for a in ["scripts/seed_sweep.py"] + sys.argv[1:]),
            "runs": {v: {} for v in variants}}
  lock = threading.Lock()

  def run(variant: str, seed: int) -> None:
    name = f"{variant}_seed{seed}"
    with open(os.path.join(args.out, f"{name}.log"), "a") as log:
      workdir, flags = os.path.join(args.out, name), (*variants[variant], f"--config.seed={seed}")
      try:
        claim(workdir, flags)
        result = {"ok": True, **device_check.recipe(
            args.config, data_dir, args.out, args.tiny, log, workdir=workdir, flags=flags,
            timeout=args.timeout)}
      except Exception as e:  # pylint: disable=broad-except  # recorded; the rest still run
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    with lock:
      report["runs"][variant][seed] = result
      report["summary"] = summarise(report["runs"])
      with open(os.path.join(args.out, "seed_sweep.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"{name}: {result.get('eval_tta_accuracy', result.get('error'))}", flush=True)

  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    list(pool.map(lambda job: run(*job),
                  [(v, s) for s in range(args.seeds) for v in variants]))
  print(table(report["summary"]))
  if not all(r["ok"] for by_seed in report["runs"].values() for r in by_seed.values()):
    raise SystemExit(f"some runs failed: see {args.out}/*.log")


if __name__ == "__main__":
  main()
