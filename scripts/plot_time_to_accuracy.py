"""Accuracy against training time for every recipe measured: docs/time_to_accuracy.png.

    python scripts/plot_time_to_accuracy.py [--index docs/measurements/time_to_accuracy.json]
        [--out docs/time_to_accuracy.png]

Reads the index (each run's recipe, machine, history file and command), draws one
panel per machine (hold-out accuracy per epoch against minutes since the run's start,
the final test-time-augmented accuracy as a star), and prints a Markdown table of each
run's last point with its command, for README and docs/recipes.md.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

MACHINES = {"cpu": "2-core AMD EPYC CPUs (float32 to 2026-12-01, then bfloat16)",
            "h200": "one NVIDIA H200, bfloat16"}


def _lookup(tree, keys):
  for key in keys:
    tree = tree[key]
  return tree


def load_run(run: dict, root: str) -> dict:
  """The run's points: minutes, accuracies (eval_accuracy per recorded epoch), final TTA."""
  with open(os.path.join(root, run["history"])) as f:
    data = json.load(f)
  epochs = _lookup(data, run.get("key", []))
  tta = _lookup(data, run["tta_key"]) if "tta_key" in run else epochs[-1].get(
      "eval_tta_accuracy")
  return {**run, "minutes": [e["elapsed_s"] / 60 for e in epochs],
          "accuracy": [100 * e["eval_accuracy"] for e in epochs],
          "tta": None if tta is None else 100 * tta}


def plot(runs: list[dict], out: str) -> None:
  machines = [m for m in MACHINES if any(r["machine"] == m for r in runs)]
  recipes = list(dict.fromkeys(r["recipe"] for r in runs))  # one colour a recipe, both panels
  # tab20: the default cycle's 10 colours ran out at the 11th recipe
  colours = {recipe: plt.get_cmap("tab20")(i % 20) for i, recipe in enumerate(recipes)}
  figure, axes = plt.subplots(1, len(machines), figsize=(6.5 * len(machines), 4.8),
                              squeeze=False)
  for ax, machine in zip(axes[0], machines):
    for run in (r for r in runs if r["machine"] == machine):
      colour = colours[run["recipe"]]
      ax.plot(run["minutes"], run["accuracy"], "o-", markersize=3, color=colour,
              label=f"{run['recipe']} ({run['when']})")
      if run["tta"] is not None:
        ax.plot(run["minutes"][-1], run["tta"], "*", markersize=11, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("minutes since the run's start (log scale)")
    ax.set_ylabel("hold-out accuracy, train[45000:] (%)")
    ax.set_title(MACHINES[machine])
    ax.set_ylim(40, 95)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
  figure.suptitle("CIFAR-10 (JPEG q75 copy): accuracy against time; a star is the final "
                  "accuracy with TTA", fontsize=10)
  figure.tight_layout()
  figure.savefig(out, dpi=110)
  plt.close(figure)


def table(runs: list[dict]) -> str:
  lines = ["| recipe | machine | epochs drawn | last point | with TTA | when, note | command |",
           "|---|---|---|---|---|---|---|"]
  for run in runs:
    tta = "-" if run["tta"] is None else f"{run['tta']:.2f}%"
    lines.append(f"| `{run['recipe']}` | {run['machine']} | {len(run['minutes'])} | "
                 f"{run['accuracy'][-1]:.2f}% at {run['minutes'][-1]:.1f} min | {tta} | "
                 f"{run['when']}, {run['note']} | `{run['command']}` |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--index", default="docs/measurements/time_to_accuracy.json")
  parser.add_argument("--out", default="docs/time_to_accuracy.png")
  args = parser.parse_args()
  with open(args.index) as f:
    index = json.load(f)
  runs = [load_run(run, os.path.dirname(args.index)) for run in index["runs"]]
  unknown = sorted({run["machine"] for run in runs} - set(MACHINES))
  if unknown:  # its runs would be in the table but in no panel of the figure
    raise SystemExit(f"error: {args.index}: machine {unknown[0]!r} is not one of "
                     f"{list(MACHINES)}; add it to MACHINES")
  plot(runs, args.out)
  print(table(runs))
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
