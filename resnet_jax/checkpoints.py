"""Orbax checkpoints of model variables, with the model's description beside them.

Layout: WORKDIR/checkpoints/<step>/ holds two items,
  "model": {"params", "batch_stats"} as an Orbax PyTree,
  "meta":  JSON with "model" (preset name and every ResNet field) and free-form
           provenance ("source").
Evaluation rebuilds the model from "meta" alone, so a checkpoint converted from
PyTorch and one written by training restore the same way.

No TensorFlow here: GPU measurement machines restore from numpy.
"""

import functools
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from resnet_jax import models

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def _manager(workdir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("model", "meta"))


def save_model(workdir: str, step: int, variables: dict, model_config: dict,
               **meta: Any) -> str:
  """Writes {"params", "batch_stats"} and the model config; returns the step's path."""
  with _manager(workdir) as manager:
    manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({"params": variables["params"],
                                     "batch_stats": variables["batch_stats"]}),
        meta=ocp.args.JsonSave({"model": model_config, **meta})))
    manager.wait_until_finished()
  return os.path.join(checkpoint_dir(workdir), str(step))


def restore_model(workdir: str, step: int | None = None) -> tuple[models.ResNet, dict, dict]:
  """(model, variables, meta) of `step`, or of the latest step when None."""
  with _manager(workdir) as manager:
    if step is None:
      step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    model = models.from_config(meta["model"])
    target = jax.eval_shape(functools.partial(models.init_variables, model), jax.random.key(0))
    restored = manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(dict(target))))
  return model, restored["model"], meta
