"""Each XLA:CPU speed setting of config.cpu measured alone: the shallow model's step with
every setting (today's defaults), then with one setting changed, each in its own process of
scripts/benchmark.py, as one JSON list.

    python scripts/cpu_settings.py [--model shallow] [--batch_size 128] [--out FILE] [--tiny]

Rows: the float32 and bfloat16 defaults, then each one setting changed from them:
YNNPACK's fusions on, LLVM's -O2, no fusion barriers, BatchNorm's backward by autodiff (instead of models/layers.py's written-out
one), oneDNN's convolutions in float32, and in bfloat16 Eigen's convolutions instead of
oneDNN's (Eigen upcasts to float32). Run it alone on the machine: each row is
a best-of-rounds train and eval speed.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

from resnet_jax import files

BENCHMARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark.py")
# The written-out BatchNorm backward replaced by autodiff of the same forward formula.
_AUTODIFF_BATCHNORM = (
    "import runpy, sys; from resnet_jax.models import layers; "
    "layers.batch_norm_train = lambda x, s, b, e: layers._batch_norm_train_fwd(x, s, b, e)[0]; "
    f"sys.argv[0] = {BENCHMARK!r}; runpy.run_path({BENCHMARK!r}, run_name='__main__')")
_YNN_ON = "cpu.xla_options={'xla_backend_optimization_level': 1}"
_O2 = "cpu.xla_options={'xla_cpu_experimental_ynn_fusion_type': ''}"
VARIANTS = {  # name: (dtype, benchmark overrides, autodiff BatchNorm)
    "float32 defaults": ("float32", [], False),
    "float32, YNNPACK fusions on": ("float32", [_YNN_ON], False),
    "float32, LLVM -O2": ("float32", [_O2], False),
    "float32, no fusion barriers": ("float32", ["cpu.fusion_barriers=False"], False),
    "float32, BatchNorm backward by autodiff": ("float32", [], True),
    "float32, oneDNN convolutions": (
        "float32", ["cpu.xla_options={'xla_cpu_experimental_ynn_fusion_type': '', "
                    "'xla_backend_optimization_level': 1, "
                    "'xla_cpu_experimental_onednn_custom_call': True}"], False),
    "bfloat16 defaults (oneDNN)": ("bfloat16", [], False),
    "bfloat16, no oneDNN (Eigen)": ("bfloat16", ["cpu.bfloat16_xla_options={}"], False),
    "bfloat16, YNNPACK fusions on": ("bfloat16", [_YNN_ON], False),
    "bfloat16, LLVM -O2": ("bfloat16", [_O2], False),
    "bfloat16, no fusion barriers": ("bfloat16", ["cpu.fusion_barriers=False"], False),
    "bfloat16, BatchNorm backward by autodiff": ("bfloat16", [], True),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=["shallow", "deep"], default="shallow")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--out", default="", help="also write the JSON here")
  parser.add_argument("--tiny", action="store_true", help="benchmark.py's toy width, 2 steps")
  parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                      help="only the rows whose name contains TEXT (repeatable)")
  args = parser.parse_args()
  rows = []
  for name, (dtype, overrides, autodiff_batchnorm) in VARIANTS.items():
    if args.only and not any(text in name for text in args.only):
      continue
    flags = ["--model", args.model, "--batch_size", str(args.batch_size), "--dtype", dtype,
             *(["--tiny", "--steps", "2", "--rounds", "1"] if args.tiny else ["--rounds", "3"]),
             *(f"--override={o}" for o in overrides)]
    command = ([sys.executable, "-c", _AUTODIFF_BATCHNORM] if autodiff_batchnorm
               else [sys.executable, BENCHMARK]) + flags
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:  # recorded; the rows after it still run
      rows.append({"setting": name, "error": f"exited with {run.returncode}: "
                                              + " ".join(run.stderr.strip().splitlines()[-1:])})
      print(f"{name}: FAILED ({rows[-1]['error']})", file=sys.stderr)
    else:
      result = json.loads(run.stdout)
      if autodiff_batchnorm:  # benchmark.py's own command would time the other BatchNorm
        result["command"] = shlex.join(["scripts/cpu_settings.py", "--model", args.model,
                                        "--batch_size", str(args.batch_size), "--only", name,
                                        *(["--tiny"] if args.tiny else [])])
      rows.append({"setting": name, "train_images_per_s": result["train_images_per_s"],
                   "eval_images_per_s": result["eval_images_per_s"],
                   "compile_s": result["compile_s"], "benchmark": result})
      print(f"{name}: train {result['train_images_per_s']} img/s, eval "
            f"{result['eval_images_per_s']}, compile {result['compile_s']} s", file=sys.stderr)
    if args.out:  # after every row: an interrupted run keeps those done
      with files.replaced_atomically(args.out) as f:
        f.write(_report(rows))
  print(_report(rows))
  if any("error" in row for row in rows):
    raise SystemExit("some settings failed: see their rows")


def _report(rows: list[dict]) -> str:
  """The report, as JSON text, with the command that made it."""
  return json.dumps({"command": shlex.join(["scripts/cpu_settings.py", *sys.argv[1:]]),
                     "rows": rows}, indent=1)


if __name__ == "__main__":
  main()
