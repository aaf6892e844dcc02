"""`--mode eval` and `--mode predict`: restore an Orbax checkpoint and use it.

eval:    the checkpoints.choose_step checkpoint (--checkpoint_step N, else the
         best by validation accuracy, else the latest) on config.data.eval_split;
         writes DIR/eval/metrics.json ("accuracy", "per_class_accuracy" (null for a
         class the split lacks),
         "confusion_matrix", "top_confusions" (the 20 most frequent mistakes),
         "num_examples", "step", "split", "checkpoint", "source" ("train" or "convert_torch"),
         "chosen" (why that one), "tta": config.eval.tta's level, resnet_jax/tta.py,
         "weights": the raw weights or, where the run kept one, their EMA)
         and DIR/eval/confusion_matrix.png, or for more than 20 classes
         (CIFAR-100) DIR/eval/top_confusions.png.
predict: labels for an unlabeled image file (data/unlabeled.py: a pickle, .npz or
         .npy, every value checked), written as the original project's Kaggle-style CSV with
         columns ID,Labels.

Checkpoints converted from PyTorch (resnet_jax.convert_torch) work the same way.
Bad input, a config that cannot work and outputs that cannot be written are all found
before any compute, and nothing is written before the results are complete. Each
file is written beside its target and renamed into place (files.py): a failure
while writing one (a full disk) leaves an earlier metrics.json, figure or CSV as it was
and is one line naming the file.
"""

import csv
import json
import os

import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import checkpoints, config_validation, files, model_setup, models, plots, train
from resnet_jax.data import batches, datasets, sources, unlabeled


def restore_for_config(config, workdir: str, step: int | None):
  """(evaluation steps, variables, step, why, meta): the workdir's checkpoint, checked
  against the config's (validated) model, replicated over the steps' mesh.

  `why` says how checkpoints.choose_step picked the step.
  """
  with checkpoints.reading_manager(workdir) as manager:
    step, why = checkpoints.choose_step(manager, step)
    meta = checkpoints.read_meta(manager, step)
    # dtype auto evaluates in the dtype the run trained in (its logged accuracies'); any
    # other dtype will do.
    dtype, _ = model_setup.compute_dtype(config, meta["model"].get("dtype"))
    model = model_setup.build_model(config, dtype)
    differs = checkpoints.model_differences(meta["model"], config.model.name, model,
                                            ignore=("dtype",))
    if differs:
      expected = models.model_config(config.model.name, model)
      raise checkpoints.CheckpointError(
          f"{manager.directory}/{step} holds model {meta['model']['name']!r}, which differs "
          f"from the config's model {config.model.name!r} in {differs}: "
          + ", ".join(f"{k}={meta['model'].get(k)} vs {expected.get(k)}" for k in differs))
    steps = train.EvalSteps(config, model)
    variables = checkpoints.restore_variables(manager, step, model, meta,
                                              datasets.get(config.data).image_shape,
                                              steps.replicated)
    return steps, variables, step, why, meta


def predictions(steps: train.EvalSteps, variables: dict, images: np.ndarray,
                labels: np.ndarray, config) -> tuple[dict[str, float], np.ndarray]:
  """(loss and accuracy, each example's predicted class) of `variables` on a split, through
  the loop's evaluation step at config.eval.tta's level, over the steps' mesh."""
  total, predicted = train.Metrics.empty(), []
  for batch in batches.eval_batches(config, images, labels, steps.data).epoch(0):
    metrics, classes = steps.eval_tta(variables, batch)
    total = total.merge(metrics)
    mask = multihost_utils.process_allgather(batch["mask"], tiled=True)
    predicted.append(multihost_utils.process_allgather(classes, tiled=True)[mask])
  summary = {k: float(v) for k, v in total.compute().items()} if predicted else {}
  return summary, np.concatenate(predicted) if predicted else np.zeros(0, np.int64)


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


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """Evaluates a checkpoint and writes DIR/eval/; returns the metrics dict."""
  config_validation.validate(config)
  names = datasets.get(config.data).class_names
  out = os.path.join(workdir, "eval")
  figure = os.path.join(out, "confusion_matrix.png" if len(names) <= MATRIX_CLASSES
                        else "top_confusions.png")
  for path in (os.path.join(out, "metrics.json"), figure):
    files.check_writable(path, "the evaluation's output")
  steps, variables, step, why, meta = restore_for_config(config, workdir, step)
  images, labels = sources.load_split(config.data, config.data.eval_split)
  summary, predicted = predictions(steps, variables, images, labels, config)
  matrix = confusion_matrix(labels, predicted, len(names))
  counts = matrix.sum(1)  # a class the split lacks has no accuracy: null, not 0.0
  per_class = [int(right) / int(count) if count else None
               for right, count in zip(matrix.diagonal(), counts)]
  metrics = {"accuracy": summary["accuracy"],
             "per_class_accuracy": per_class, "confusion_matrix": matrix.tolist(),
             "top_confusions": top_confusions(matrix, names),
             "num_examples": len(labels), "step": int(step),
             "split": config.data.eval_split, "tta": config.eval.tta,
             "checkpoint": os.path.join(checkpoints.checkpoint_dir(workdir), str(step)),
             "chosen": why, "source": meta.get("source"),
             "weights": checkpoints.evaluated_weights(meta)}
  title = f"{config.data.eval_split}, step {step}: accuracy {metrics['accuracy']:.4f}"
  # The figure first: drawing it is the likelier failure, and then neither file has changed.
  with files.reported_as("the evaluation's figure", figure):
    os.makedirs(out, exist_ok=True)
    if len(names) <= MATRIX_CLASSES:
      plots.plot_confusion(matrix, names, figure, title)
    else:
      plots.plot_top_confusions(metrics["top_confusions"], figure, title)
  metrics_path = os.path.join(out, "metrics.json")
  with files.reported_as("the evaluation's output", metrics_path), \
      files.replaced_atomically(metrics_path) as f:
    json.dump(metrics, f, indent=1)
  return metrics


def predict(config, workdir: str, input_path: str, output_path: str,
            step: int | None = None, class_names: bool = False) -> dict:
  """Writes ID,Labels predictions for `input_path` to `output_path` (labels 0..classes-1,
  and a Name column with the dataset's class names when `class_names`).

  Returns {"count", "checkpoint", "chosen", "weights"}: how many rows, from which checkpoint,
  why it, and which of its weights (the raw ones or their average).
  """
  config_validation.validate(config)
  images, ids = unlabeled.load(input_path, datasets.get(config.data).image_shape)
  files.check_writable(output_path, "--output")
  steps, variables, step, why, meta = restore_for_config(config, workdir, step)
  _, labels = predictions(steps, variables, images, np.zeros(len(images), np.int32), config)
  names = datasets.get(config.data).class_names
  with files.reported_as("--output", output_path):
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with files.replaced_atomically(output_path, newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["ID", "Labels", "Name"] if class_names else ["ID", "Labels"])
      writer.writerows((i, label, names[label]) if class_names else (i, label)
                       for i, label in zip(ids, labels.tolist()))
  return {"count": len(labels), "chosen": why, "weights": checkpoints.evaluated_weights(meta),
          "checkpoint": os.path.join(checkpoints.checkpoint_dir(workdir), str(step))}
