"""`--mode eval` and `--mode predict`: restore an Orbax checkpoint and use it.

eval:    the checkpoints.choose_step checkpoint (--checkpoint_step N, else the
         best by validation accuracy, else the latest) on config.data.eval_split;
         writes DIR/eval/metrics.json ("accuracy", "per_class_accuracy",
         "confusion_matrix", "top_confusions" (the 20 most frequent mistakes),
         "num_examples", "step", "split", "checkpoint",
         "chosen" (why that one), "tta": config.eval.tta's level, resnet_jax/tta.py,
         "weights": the raw weights or, where the run kept one, their EMA)
         and DIR/eval/confusion_matrix.png, or for more than 20 classes
         (CIFAR-100) DIR/eval/top_confusions.png.
predict: labels for an unlabeled image file (data/unlabeled.py: a pickle, .npz or
         .npy, every value checked), written as the seed's Kaggle-style CSV with
         columns ID,Labels.

Checkpoints converted from PyTorch (resnet_jax.convert_torch) work the same way.
Nothing is written unless the whole command succeeds, and every file is written
beside its target and renamed into place (files.py): a failure leaves an earlier
metrics.json, figure or CSV as it was. Where the output cannot be written is
found before any compute.
"""

import csv
import functools
import json
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from resnet_jax import (checkpoints, config_validation, files, models, plots, train, tta,
                        xla_cpu)
from resnet_jax.data import batches, datasets, sources, unlabeled

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

def restore_for_config(config, workdir: str, step: int | None):
  """(model, variables, step, why, meta) from the workdir, checked against the config's model.

  `why` says how checkpoints.choose_step picked the step.
  """
  config_validation.validate(config)
  with checkpoints.reading_manager(workdir) as manager:
    step, why = checkpoints.choose_step(manager, step)
    meta = checkpoints.read_meta(manager, step)
    # dtype auto evaluates in the dtype the run trained in (its logged accuracies'); any
    # other dtype will do.
    model = train.build_model(config, train.compute_dtype(config, meta["model"].get("dtype"))[0])
    differs = checkpoints.model_differences(meta["model"], config.model.name, model,
                                            ignore=("dtype",))
    if differs:
      expected = models.model_config(config.model.name, model)
      raise checkpoints.CheckpointError(
          f"{manager.directory}/{step} holds model {meta['model']['name']!r}, which differs "
          f"from the config's model {config.model.name!r} in {differs}: "
          + ", ".join(f"{k}={meta['model'].get(k)} vs {expected.get(k)}" for k in differs))
    return model, checkpoints.restore_variables(manager, step, model, meta), step, why, meta


def _predict_fn(config, model: models.Model):
  """The jitted class probabilities of a batch, with config.eval.tta's views."""
  options = xla_cpu.compiler_options(config, model.dtype)
  xla_cpu.quiet_uncacheable(options)

  @functools.partial(jax.jit, compiler_options=options)
  def probabilities(variables, images):
    return tta.probabilities(lambda x: model.apply(variables, x, train=False), images,
                             config.eval.tta)
  return probabilities


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


# Up to this many classes the figure is the confusion matrix with its counts; beyond it
# (CIFAR-100) cells and labels would be unreadable, so it shows the top confusions.
MATRIX_CLASSES = 20
TOP_CONFUSIONS = 20


def top_confusions(matrix: np.ndarray, names, n: int = TOP_CONFUSIONS) -> list[dict]:
  """The `n` most frequent mistakes, most frequent first: {"true", "predicted", "count"}."""
  mistakes = matrix.copy()
  np.fill_diagonal(mistakes, 0)
  order = np.argsort(-mistakes, axis=None, kind="stable")[:n]
  return [{"true": names[i], "predicted": names[j], "count": int(mistakes[i, j])}
          for i, j in zip(*np.unravel_index(order, mistakes.shape)) if mistakes[i, j]]


def _plot_top_confusions(confusions: list[dict], path: str, title: str) -> None:
  figure, ax = plt.subplots(figsize=(7, 6))
  rows = confusions[::-1]  # the most frequent at the top
  ax.barh(range(len(rows)), [c["count"] for c in rows])
  ax.set_yticks(range(len(rows)), [f"{c['true']} -> {c['predicted']}" for c in rows],
                fontsize=8)
  ax.set_xlabel("images")
  ax.set_title(f"{title}\ntop {len(rows)} confusions (true -> predicted)")
  plots.save_figure(figure, path)


def _plot_confusion(matrix: np.ndarray, names, path: str, title: str) -> None:
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
  plots.save_figure(figure, path)


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """Evaluates a checkpoint and writes DIR/eval/; returns the metrics dict."""
  out = os.path.join(workdir, "eval")
  files.check_writable(os.path.join(out, "metrics.json"), "the evaluation's output")
  model, variables, step, why, meta = restore_for_config(config, workdir, step)
  split = batches.eval_split(config, *sources.load_split(config.data, config.data.eval_split))
  probabilities = _predict_fn(config, model)
  labels, predictions = [], []
  for batch in split.epoch():
    p = np.asarray(probabilities(variables, batch["image"]))
    predictions.append(p.argmax(-1)[batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  labels, predictions = np.concatenate(labels), np.concatenate(predictions)
  matrix = confusion_matrix(labels, predictions, model.num_classes)
  per_class = matrix.diagonal() / np.maximum(matrix.sum(1), 1)
  names = datasets.get(config.data).class_names
  metrics = {"accuracy": float((labels == predictions).mean()),
             "per_class_accuracy": per_class.tolist(), "confusion_matrix": matrix.tolist(),
             "top_confusions": top_confusions(matrix, names),
             "num_examples": int(len(labels)), "step": int(step),
             "split": config.data.eval_split, "tta": config.eval.tta,
             "checkpoint": os.path.join(checkpoints.checkpoint_dir(workdir), str(step)),
             "chosen": why, "source": meta.get("source"),
             "weights": checkpoints.evaluated_weights(meta)}
  os.makedirs(out, exist_ok=True)
  with files.replaced_atomically(os.path.join(out, "metrics.json")) as f:
    json.dump(metrics, f, indent=1)
  title = f"{config.data.eval_split}, step {step}: accuracy {metrics['accuracy']:.4f}"
  if len(names) <= MATRIX_CLASSES:
    _plot_confusion(matrix, names, os.path.join(out, "confusion_matrix.png"), title)
  else:
    _plot_top_confusions(metrics["top_confusions"], os.path.join(out, "top_confusions.png"),
                         title)
  return metrics


def predict(config, workdir: str, input_path: str, output_path: str,
            step: int | None = None, class_names: bool = False) -> dict:
  """Writes ID,Labels predictions for `input_path` to `output_path` (labels 0..classes-1,
  and a Name column with the dataset's class names when `class_names`).

  Returns {"count", "checkpoint", "chosen"}: how many rows, from which checkpoint, and why it.
  """
  images, ids = unlabeled.load(input_path)
  files.check_writable(output_path, "--output")
  model, variables, step, why, meta = restore_for_config(config, workdir, step)
  probabilities = _predict_fn(config, model)
  norm = datasets.normalization(config.data)
  labels = []
  for start in range(0, len(images), config.eval_batch_size):
    x = datasets.normalize_pixels(images[start:start + config.eval_batch_size], norm)
    labels.append(np.asarray(probabilities(variables, jnp.asarray(x, jnp.float32))).argmax(-1))
  labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with files.replaced_atomically(output_path, newline="") as f:
    writer = csv.writer(f)
    names = datasets.get(config.data).class_names
    writer.writerow(["ID", "Labels", "Name"] if class_names else ["ID", "Labels"])
    writer.writerows((i, label, names[label]) if class_names else (i, label)
                     for i, label in zip(ids, labels.tolist()))
  return {"count": len(labels), "chosen": why, "weights": checkpoints.evaluated_weights(meta),
          "checkpoint": os.path.join(checkpoints.checkpoint_dir(workdir), str(step))}
