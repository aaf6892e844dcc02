"""The figures: training curves (the original project's Figure 4, made properly) and --mode eval's
confusion figures, each written whole or not at all (`save_figure`).

    python -m resnet_jax.plots DIR

reads DIR/history.json (written by training after every epoch) and writes
DIR/curves.png: train and validation loss on the left, accuracy on the right.
"""

import json
import os
import sys

import matplotlib
import numpy as np

from resnet_jax import files

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import ticker  # pylint: disable=g-import-not-at-top,wrong-import-position

HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"


def write_history(workdir: str, history: list[dict]) -> None:
  """Replaces DIR/history.json atomically, so a reader never sees half a file."""
  with files.replaced_atomically(os.path.join(workdir, HISTORY_FILE)) as f:
    json.dump(history, f, indent=1)


def read_history(workdir: str) -> list[dict]:
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no training history at {path}: is {workdir} a training workdir?")
  with open(path) as f:
    return json.load(f)


def plot_curves(history: list[dict], path: str) -> str:
  epochs = [h["epoch"] for h in history]
  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, metric in zip(axes, ("loss", "accuracy")):
    ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
    ax.plot(epochs, [h[f"eval_{metric}"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_title("cross-entropy loss")
  axes[1].set_title("accuracy")
  save_figure(figure, path)
  return path


def save_figure(figure, path: str) -> None:
  """Writes `figure` as a PNG, replacing `path` only once it is complete, and closes it."""
  figure.tight_layout()
  with files.replaced_atomically(path, "wb") as f:
    figure.savefig(f, format="png", dpi=100)
  plt.close(figure)


def plot_top_confusions(confusions: list[dict], path: str, title: str) -> None:
  """--mode eval's figure for many classes: the most frequent mistakes as bars."""
  figure, ax = plt.subplots(figsize=(7, 6))
  rows = confusions[::-1]  # the most frequent at the top
  ax.barh(range(len(rows)), [c["count"] for c in rows])
  ax.set_yticks(range(len(rows)), [f"{c['true']} -> {c['predicted']}" for c in rows],
                fontsize=8)
  ax.set_xlabel("images")
  ax.set_title(f"{title}\ntop {len(rows)} confusions (true -> predicted)")
  save_figure(figure, path)


def plot_confusion(matrix, names, path: str, title: str) -> None:
  """--mode eval's figure: the confusion matrix with its counts."""
  figure, ax = plt.subplots(figsize=(7, 6))
  image = ax.imshow(matrix, cmap="Blues")
  ax.set_xticks(range(len(matrix)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(matrix)), names)
  for (i, j), n in np.ndenumerate(matrix):
    ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
            color="white" if n > matrix.max() / 2 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  figure.colorbar(image)
  save_figure(figure, path)


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit(__doc__)
  source = os.path.join(argv[1], HISTORY_FILE)
  not_a_history = lambda e: (f"error: {source} is not a training history "
                             f"({type(e).__name__}: {str(e)[:200]})")
  try:
    history = read_history(argv[1])
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: cannot read {source} ({e.strerror or e})")
  except (ValueError, RecursionError) as e:  # not JSON, or nested past the parser's depth
    sys.exit(not_a_history(e))
  try:
    path = plot_curves(history, os.path.join(argv[1], CURVES_FILE))
  except (ValueError, KeyError, TypeError) as e:  # JSON, but not a list of epochs' scalars
    sys.exit(not_a_history(e))
  except OSError as e:
    sys.exit(f"error: cannot write {os.path.join(argv[1], CURVES_FILE)} ({e})")
  print(f"wrote {path}")


if __name__ == "__main__":
  main(sys.argv)
