"""Orbax checkpoints: model variables, training state and a JSON description.

Layout: WORKDIR/checkpoints/<step>/ holds up to three items,
  "model": the model's variables ({"params", "batch_stats"}, and "constants"
           where the family has them), and the weight average that evaluation
           uses instead of them, by name ("ema"), when the run keeps one: all that
           evaluation and prediction need;
  "train": the rest of the train state ("opt_state", "plateau", "step", "rng",
           "averages", "proxy" when a proxy chooses the examples, ...; training
           checkpoints only: converted PyTorch weights have none);
  "meta":  JSON: "model" (preset name and every field of its family, from which
           the model is rebuilt), "source", "layout" (checkpoint_layouts.py: older
           workdirs' checkpoints still restore), and for training "averages" (the
           weight averages' names), "evaluated_average" (None, or the one in
           "model"), "proxy" (whether the train state holds one), "epoch",
           "epoch_seconds" (how long a mid-epoch checkpoint's epoch had run),
           "config", "history" (per-epoch scalars) and "eval_accuracy" (None for
           a checkpoint written mid-epoch: on a preemption signal, or on time,
           config.checkpoint_every_minutes); and
           "checksum" (a hashlib algorithm) with "checksums": {item: {'/'-joined
           array path: hex digest of the array's bytes}} for "model" and "train".
Training numbers checkpoints by train step (meta "epoch" and "epoch_step" say
where in the schedule it is); a converted checkpoint is step 0. The validation
accuracy is also the checkpoint's Orbax metric, by which managers rank them
(`choose_step`): a checkpoint without one is never the best.

Restoring builds an abstract target with the *current* mesh's shardings, so a
checkpoint written on N devices restores on M. No TensorFlow here.

Integrity: Orbax 0.12's arrays (zarr v2 chunks, zstd, in OCDBT data files) carry no
checksum of their own (its zarr3 format checksums only the shard index), so flipped
bytes in a chunk decode silently to other values. The checksums in "meta" catch
that: every restore hashes what it restored and compares. A damaged checkpoint (one
that Orbax cannot read, or whose arrays differ) is a DamagedCheckpointError: resume
sets it aside and resumes the one before; evaluation and prediction refuse it,
naming it (--checkpoint_step picks another). Checkpoints written before checksums
were kept restore unverified, with a warning. "meta" is JSON anyone could have edited:
each value the code reads is checked first (`_check_meta`), and a checkpoint whose
arrays are not the ones the config trains (another optimizer's state) is refused as
such, not set aside as damaged. An unreadable metrics/metrics file
(Orbax's per-step copy of the accuracy) gives way to meta's: see `_Manager`.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from resnet_jax import checkpoint_layouts, files, models

LAYOUT = checkpoint_layouts.LAYOUT
CHECKPOINT_SUBDIR = "checkpoints"
ITEMS = ("model", "train", "meta")
CHECKSUM = "sha256"  # SHA-NI makes it faster than blake2b on today's x86 and ARM CPUs
# The algorithms a checkpoint's meta may name: hashlib's everywhere, but the shake ones,
# whose hex digests need a length.
CHECKSUMS_READ = tuple(sorted(a for a in hashlib.algorithms_guaranteed
                              if not a.startswith("shake")))
TIME_CHECK_EVERY = 10  # steps between asking whether a checkpoint is due on time
# The JSON types of the meta keys the code reads (the module's docstring says what each is).
META_TYPES = {"model": (dict,), "source": (str,), "layout": (int,), "averages": (list,),
              "evaluated_average": (str, type(None)), "proxy": (bool,), "epoch": (int,),
              "epoch_step": (int,), "epoch_seconds": (int, float),
              "eval_accuracy": (int, float, type(None)),
              "config": (str,), "history": (list,), "checksum": (str,), "checksums": (dict,)}
TRAINING_META = ("model", "epoch", "epoch_step", "history", "config")  # resuming needs all


class CheckpointError(ValueError):
  """No usable checkpoint, or one that does not fit the config; names the directory."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint Orbax cannot read, or whose arrays no longer match their checksums."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def _eval_accuracy(metrics: dict) -> float:
  return metrics["eval_accuracy"]


def _is_accuracy(metrics) -> bool:
  return (isinstance(metrics, dict) and isinstance(metrics.get("eval_accuracy"), (int, float))
          and not isinstance(metrics["eval_accuracy"], bool))


class _Manager(ocp.CheckpointManager):
  """A CheckpointManager that reads an unusable metrics file as the step's meta accuracy.

  Orbax reads every step's metrics/metrics when it opens a directory (and on reload),
  and a garbage one raised there, stopping resume and evaluation alike. The step's meta
  holds the same accuracy: without it the step has none, which on resume would also
  let the retention policy delete what may be the best checkpoint.
  """

  def metrics(self, step: int):
    try:
      metrics = super().metrics(step)
    except Exception as e:  # pylint: disable=broad-except  # JSON, Unicode, OS errors
      metrics = e
    if metrics is None or _is_accuracy(metrics):
      return metrics
    step_dir = os.path.join(self.directory, str(step))
    accuracy = _meta_accuracy(step_dir)
    _warn_once(f"ignoring the unusable metrics file {step_dir}/metrics/metrics "
               f"({_one_line(metrics)}); using the step's meta eval_accuracy, {accuracy}")
    return None if accuracy is None else {"eval_accuracy": accuracy}


def _meta_accuracy(step_dir: str) -> float | None:
  try:
    with open(os.path.join(step_dir, "meta", "metadata")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta["eval_accuracy"] if _is_accuracy(meta) else None


def _one_line(reason) -> str:
  """An error or value as one line of at most ~400 characters: Orbax's messages put paths
  first and the OS's reason last, over several lines."""
  text = " ".join(str(reason).split())
  if isinstance(reason, Exception):
    text = f"{type(reason).__name__}: {text}"
  return f"{text[:150]} ... {text[-250:]}" if len(text) > 400 else text


@functools.cache
def _warn_once(message: str) -> None:
  """Logs `message` as a warning once a process, however often it holds (each restore,
  each time a manager loads the steps' metrics)."""
  logging.warning(message)


def training_manager(workdir: str, keep_last: int,
                     every_minutes: float = 0.0) -> ocp.CheckpointManager:
  """Asynchronous saves; retention keeps the last `keep_last` and the best by eval accuracy.

  With `every_minutes`, `should_save` is true when no save is under way and that long has
  passed since the newest checkpoint (at once when there is none); the first process
  decides for all. The saves the loop schedules itself (epochs, signals) pass force=True.
  """
  due = checkpoint_managers.ContinuousCheckpointingPolicy(
      minimum_interval_secs=every_minutes * 60) if every_minutes else None
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(keep_last),
      # Mid-epoch checkpoints (preemption, time) carry no accuracy: only LatestN keeps them.
      checkpoint_managers.BestN(get_metric_fn=_eval_accuracy, n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_eval_accuracy,
                                         best_mode="max", enable_async_checkpointing=True,
                                         save_decision_policy=due)
  return _Manager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def reading_manager(workdir: str) -> ocp.CheckpointManager:
  """A read-only manager; errors when there is nothing to read, creating nothing."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint in {directory} (the directory does not exist)")
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                         best_fn=_eval_accuracy, best_mode="max")
  manager = _Manager(directory, options=options, item_names=ITEMS)
  if not manager.all_steps():
    manager.close()
    raise CheckpointError(f"no checkpoint in {directory}")
  return manager


def choose_step(manager: ocp.CheckpointManager, step: int | None = None) -> tuple[int, str]:
  """(step, why) of the checkpoint to evaluate or predict with.

  `step` when given; else the best by validation accuracy (the latest of equals),
  as the manager ranks them; else, when no checkpoint has an accuracy (only
  mid-epoch or converted ones), the latest.
  """
  steps = manager.all_steps()
  if step is not None:
    if step not in steps:
      raise CheckpointError(f"no checkpoint step {step} in {manager.directory}; it has "
                            f"{sorted(steps)}")
    return step, "as requested"
  best = manager.best_step()
  if best is not None:
    return best, f"best validation accuracy, {manager.metrics(best)['eval_accuracy']:.4f}"
  return manager.latest_step(), "the latest: no checkpoint here has a validation accuracy"


def save_model(workdir: str, step: int, variables: dict, model_config: dict,
               **meta: Any) -> str:
  """Writes model variables and description only (converted weights); returns the path."""
  model = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  with ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS) as manager:
    manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model),
        meta=ocp.args.JsonSave({"model": model_config, "layout": LAYOUT, **meta,
                                **_checksum_meta({"model": model})})))
    manager.wait_until_finished()
  return os.path.join(checkpoint_dir(workdir), str(step))


def _state_items(state, train_metrics) -> dict:
  """The train state as checkpoint items: "model" (what evaluation needs), "train" (the rest).

  Every pytree field of the state that is set (not None) is saved, so a new TrainState
  field needs no edit here, and an unused one (lookahead off) leaves the layout as it was.
  `train_metrics` (a clu Collection) holds a part-finished epoch's running
  averages, so that a run stopped mid-epoch resumes with identical epoch metrics.
  """
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.metadata.get("pytree_node", True) and getattr(state, f.name) is not None}
  model = {name: fields.pop(name) for name in ("params", "batch_stats", "constants")
           if name in fields}
  if state.evaluated_average:  # the weights evaluation uses go with the model's
    averages = dict(fields.pop("averages"))
    model[state.evaluated_average] = averages.pop(state.evaluated_average)
    if averages:
      fields["averages"] = averages
  return {"model": model,
          "train": {**fields, "metrics": flax.serialization.to_state_dict(train_metrics)}}


def save_training(manager: ocp.CheckpointManager, step: int, state, train_metrics,
                  meta: dict) -> None:
  """Starts an asynchronous save of a TrainState (returns once arrays are on the host)."""
  items = _state_items(state, train_metrics)
  items["train"]["metrics"] = _host_values(items["train"]["metrics"])
  manager.save(step, args=ocp.args.Composite(
      model=ocp.args.StandardSave(items["model"]), train=ocp.args.StandardSave(items["train"]),
      meta=ocp.args.JsonSave({**meta, **_checksum_meta(items)})),
      metrics=None if meta["eval_accuracy"] is None else {"eval_accuracy": meta["eval_accuracy"]},
      force=True)


def model_differences(saved: dict, name: str, model: models.Model,
                      ignore: tuple[str, ...] = ()) -> list[str]:
  """Fields in which a checkpoint's "model" description differs from (name, model).

  A field the description lacks was added to the family later: it has its default.
  """
  expected = json.loads(json.dumps(models.model_config(name, model)))  # tuples -> lists
  saved = json.loads(json.dumps(models.model_config(saved["name"], models.from_config(saved))))
  return sorted(k for k in set(expected) | set(saved)
                if k not in ignore and expected.get(k) != saved.get(k))


def _host_values(tree):
  """Small replicated values as numpy: Orbax cannot save host-local arrays multi-process."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))
                      if isinstance(x, jax.Array) else np.asarray(x), tree)


def _whole_on_host(x) -> np.ndarray | None:
  """x's whole value as numpy, or None where this process holds only part of it."""
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_replicated:  # the train state: one copy, not a gather
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x)) if x.is_fully_addressable else None


def _array_name(path) -> str:
  """An array's tree path as meta's checksums name it: its keys joined by '/'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _checksums(tree, algorithm: str) -> dict[str, str]:
  """{'/'-joined path: hex digest of the bytes} of the arrays of `tree` this process holds
  whole; one sharded across processes (none today: the state is replicated) goes without."""
  digests = {}
  for path, value in jax.tree_util.tree_leaves_with_path(tree):
    host = _whole_on_host(value)
    if host is None:
      _warn_once("arrays sharded across processes are neither checksummed nor verified")
      continue
    digest = hashlib.new(algorithm)
    digest.update(np.ascontiguousarray(host).reshape(-1).view(np.uint8))  # bytes, no copy
    digests[_array_name(path)] = digest.hexdigest()
  return digests


def _checksum_meta(items: dict) -> dict:
  """What meta records of the arrays of `items` (item name: tree) for restores to verify."""
  return {"checksum": CHECKSUM,
          "checksums": {name: _checksums(tree, CHECKSUM) for name, tree in items.items()}}


def _verify(directory: str, restored: dict, meta: dict) -> None:
  """Raises DamagedCheckpointError naming the first restored array (of items by name) whose
  bytes differ from those saved, as the checkpoint's meta records them."""
  if "checksums" not in meta:
    _warn_once("restoring checkpoints written before checksums were kept: their arrays are "
               "not verified")
    return
  for name, tree in restored.items():
    saved = meta["checksums"].get(name, {})
    for path, digest in _checksums(tree, meta["checksum"]).items():
      if saved.get(path, digest) != digest:
        raise DamagedCheckpointError(f"{directory}: array {name}/{path} does not match its "
                                     "checksum: the checkpoint's bytes changed")


def _unreadable(manager: ocp.CheckpointManager, step: int,
                error: Exception) -> DamagedCheckpointError:
  return DamagedCheckpointError(f"{manager.directory}/{step} is unreadable ({_one_line(error)})")


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The "meta" item of `step`; DamagedCheckpointError when Orbax cannot read it,
  CheckpointError when a value the code reads is not what this package writes."""
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types
    raise _unreadable(manager, step, e) from e
  _check_meta(f"{manager.directory}/{step}/meta", meta)
  return meta


def _has_type(value, types: tuple) -> bool:
  return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_meta(where: str, meta) -> None:
  """Raises CheckpointError naming the first key of `meta` (JSON read from disk: anyone's
  file) whose value is not what this package writes, before any of it is used. A key
  absent is older layouts' way (see the module's docstring); one this version needs is
  checked where it is needed."""
  if not isinstance(meta, dict):
    raise CheckpointError(f"{where} is a JSON {type(meta).__name__}, not an object")
  for key, types in META_TYPES.items():
    if key in meta and not _has_type(meta[key], types):
      raise CheckpointError(f"{where}: {key}={_one_line(repr(meta[key]))} is not "
                            f"{' or '.join(t.__name__ for t in types)}")
  problem = None
  if meta.get("layout", 1) > LAYOUT:
    problem = (f"layout={meta['layout']}: written by a newer resnet_jax (this one reads "
               f"layouts up to {LAYOUT}); upgrade it")
  elif "checksum" in meta and meta["checksum"] not in CHECKSUMS_READ:
    problem = f"checksum={meta['checksum']!r} is not one of {list(CHECKSUMS_READ)}"
  elif not all(isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())
               for digests in meta.get("checksums", {}).values()):
    problem = "checksums is not {item: {array path: hex digest}}"
  elif not all(isinstance(h, dict) for h in meta.get("history", [])):
    problem = "history is not a list of per-epoch objects"
  elif min(meta.get("epoch", 0), meta.get("epoch_step", 0)) < 0:
    problem = f"epoch={meta.get('epoch')}, epoch_step={meta.get('epoch_step')}: negative"
  elif not 0 <= meta.get("epoch_seconds", 0) < float("inf"):  # NaN too: JSON allows it
    problem = f"epoch_seconds={meta['epoch_seconds']}: not a number of seconds"
  elif "model" in meta:
    try:
      models.from_config(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
      problem = f"model={_one_line(repr(meta['model']))} is no model of this package ({e!r})"
  if problem:
    raise CheckpointError(f"{where}: {problem}")


def trained_dtype(workdir: str) -> str | None:
  """The compute dtype of the newest readable training checkpoint in `workdir`, or None:
  what dtype "auto" keeps when the run resumes (TrainingCheckpoints.restore checks the
  rest, and reports what it cannot read)."""
  try:
    manager = reading_manager(workdir)
  except CheckpointError:  # no checkpoint (or no checkpoint directory) yet
    return None
  with contextlib.closing(manager):
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        dtype = read_meta(manager, step).get("model", {}).get("dtype")
      except DamagedCheckpointError:
        continue
      return dtype if isinstance(dtype, str) else None
  return None


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _restore(manager: ocp.CheckpointManager, step: int, target: dict, meta: dict) -> dict:
  """The items of `target` (abstract, today's layout) from `step`, whose `meta` says its
  layout, verified against meta's checksums."""
  layout = meta.get("layout", 1)
  try:
    saved = checkpoint_layouts.as_saved(target, layout)
  except ValueError as e:
    raise CheckpointError(f"{manager.directory}/{step} cannot be resumed with this config: "
                          f"{e}") from e
  _check_structure(f"{manager.directory}/{step}", saved, meta)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(item) for name, item in saved.items()}))
  except Exception as e:  # pylint: disable=broad-except  # cut, missing or garbled files
    raise _unreadable(manager, step, e) from e
  restored = {name: restored[name] for name in saved}
  _verify(f"{manager.directory}/{step}", restored, meta)
  return checkpoint_layouts.as_today(restored, target, layout)


def _check_structure(where: str, saved: dict, meta: dict) -> None:
  """Raises CheckpointError when the arrays meta's checksums list for an item are not those
  of `saved` (the target, as the checkpoint's layout holds it): a config that builds another
  train state (another optimizer, Muon on or off, accumulation, other parameter groups).
  Orbax would refuse such a restore too, in words that read as a damaged checkpoint."""
  for name, tree in saved.items():
    recorded = meta.get("checksums", {}).get(name)
    if recorded is None:  # written before checksums were kept: Orbax's restore checks alone
      continue
    wanted = {_array_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}
    if wanted != set(recorded):
      raise CheckpointError(
          f"{where} cannot be restored with this config: its {name!r} arrays differ from the "
          f"ones this config trains (only in the checkpoint: "
          f"{_few(set(recorded) - wanted)}; only in this config's: {_few(wanted - set(recorded))}"
          "); resume with the run's config.optimizer settings (the checkpoint's meta holds "
          "its config) or use a new --workdir")


def _few(paths: set[str], shown: int = 3) -> str:
  names = sorted(paths) or ["none"]
  return ", ".join(names[:shown]) + (f" and {len(names) - shown} more"
                                     if len(names) > shown else "")


def restore_training(manager: ocp.CheckpointManager, step: int, state, train_metrics,
                     sharding, meta: dict):
  """(state, train metrics) restored from `step` (whose `meta` says its layout and
  checksums) into the structure of the arguments."""
  restored = _restore(manager, step, _abstract(_state_items(state, train_metrics), sharding),
                      meta)
  model, train = dict(restored["model"]), restored["train"]
  metrics_state = train.pop("metrics")
  if state.evaluated_average:
    train["averages"] = {**train.get("averages", {}),
                         state.evaluated_average: model.pop(state.evaluated_average)}
  return (state.replace(**model, **train),
          flax.serialization.from_state_dict(train_metrics, metrics_state))


def restore_variables(manager: ocp.CheckpointManager, step: int, model: models.Model,
                      meta: dict, image_shape: models.ImageShape, sharding=None) -> dict:
  """The variables of `model` for inputs of `image_shape` that evaluation uses at `step`
  (whose `meta` says its layout, checksums and evaluated average), on `sharding` (default:
  one device): the evaluated weight average's params and statistics where the run kept
  one, else the weights'."""
  shapes = dict(jax.eval_shape(functools.partial(models.init_variables, model,
                                                 image_shape=image_shape), jax.random.key(0)))
  average = meta.get("evaluated_average")
  if average:
    shapes[average] = {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"model": _abstract(shapes, sharding)}
  variables = dict(_restore(manager, step, target, meta)["model"])
  if average:
    variables.update(variables.pop(average))
  return variables


def evaluated_weights(meta: dict) -> str:
  """Which weights restore_variables gives for a checkpoint's `meta`, in words."""
  average = meta.get("evaluated_average")
  return f"the weights' {average} average" if average else "the weights"


def restore_model(workdir: str, image_shape: models.ImageShape,
                  step: int | None = None) -> tuple[models.Model, dict, dict]:
  """(model, variables, meta) of `step`, or of the latest step when None, for inputs of
  `image_shape` (the dataset's)."""
  with reading_manager(workdir) as manager:
    step = manager.latest_step() if step is None else step
    meta = read_meta(manager, step)
    model = models.from_config(meta["model"])
    return model, restore_variables(manager, step, model, meta, image_shape), meta


class TrainingCheckpoints:
  """A training run's checkpoints and the policy for recovering from them.

  `restore` resumes the newest checkpoint that reads: a damaged one (cut files,
  missing metadata, arrays that differ from their checksums) is moved aside as
  <step>.corrupt with a warning and the next older one tried, nothing deleted; a
  checkpoint of another model, or not from training, stops the run. `save` and
  `close` turn Orbax's failures (a full disk, permissions) into a CheckpointError
  naming the intact checkpoints. `due` says when the time since the last checkpoint
  calls for one mid-epoch. A context manager: leaving it waits for the asynchronous saves.
  """

  def __init__(self, workdir: str, keep_last: int, every_minutes: float = 0.0):
    self.every_minutes = every_minutes
    self.manager = training_manager(workdir, keep_last, every_minutes)

  def __enter__(self) -> "TrainingCheckpoints":
    return self

  def __exit__(self, *exc) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # as in save
      raise self.write_failed(e) from e
    finally:
      self.manager.close()

  def restore(self, state, train_metrics, sharding, model_name: str, model: models.Model,
              steps_per_epoch: int):
    """(state, history, epoch_step, epoch_seconds, train metrics or None): the newest usable
    checkpoint's, or the arguments' with an empty history when there is none.
    `epoch_seconds` is the time its epoch had run when saved mid-epoch (0 in older
    layouts), which the resumed run's clock carries on from."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = read_meta(self.manager, step)
        self._check_resumable(meta, model_name, model, state, steps_per_epoch)
        state, metrics = restore_training(self.manager, step, state, train_metrics, sharding,
                                          meta)
      except DamagedCheckpointError as e:  # other CheckpointErrors stop the run
        self._set_aside(step, e)
        continue
      logging.info("resuming from %s/%d: epoch %d, step %d of it", self.manager.directory, step,
                   meta["epoch"] + 1, meta["epoch_step"])
      mid_epoch = meta["epoch_step"] > 0
      return (state, meta["history"], meta["epoch_step"],
              meta.get("epoch_seconds", 0.0) if mid_epoch else 0.0,
              metrics if mid_epoch else None)
    return state, [], 0, 0.0, None

  def save(self, state, train_metrics, meta: dict) -> None:
    """Checkpoints at the state's step (asynchronously), unless that step is saved already."""
    if int(state.step) in self.manager.all_steps():
      return
    try:
      save_training(self.manager, int(state.step), state, train_metrics, meta)
    except Exception as e:  # pylint: disable=broad-except
      # Disk full, permissions... Orbax raises OSError, or ValueError from its
      # asynchronous writers (a previous save's failure surfaces here), and only
      # ever renames a finished save into place: earlier checkpoints are intact.
      raise self.write_failed(e) from e

  def due(self, step: int) -> bool:
    """Whether to checkpoint at `step` on time alone (every process must ask, at the same
    steps: the first one's answer is everyone's). Orbax is asked every TIME_CHECK_EVERY
    steps only: each asking is a round trip between processes and a key kept for good."""
    return (bool(self.every_minutes) and step % TIME_CHECK_EVERY == 0
            and self.manager.should_save(step))

  def latest_path(self) -> str:
    """The newest complete checkpoint's directory, once pending saves are written."""
    self.manager.wait_until_finished()
    latest = self.manager.latest_step()
    return "none" if latest is None else os.path.join(self.manager.directory, str(latest))

  def write_failed(self, error: Exception) -> CheckpointError:
    """A failed write to the workdir as an error naming the complete checkpoints."""
    self.manager.reload()
    return CheckpointError(
        f"writing to {os.path.dirname(self.manager.directory)} failed ({_one_line(error)}); "
        f"the complete checkpoints are intact: {sorted(self.manager.all_steps())}")

  def _check_resumable(self, meta: dict, model_name: str, model: models.Model, state,
                       steps_per_epoch: int) -> None:
    if meta.get("source") != "train":
      raise CheckpointError(
          f"{self.manager.directory} holds {meta.get('source')!r} checkpoints, not a training "
          "run's, so there is nothing to resume; train in a new --workdir")
    missing = [key for key in TRAINING_META if key not in meta]
    if missing:
      raise CheckpointError(f"{self.manager.directory}: a training checkpoint's meta lacks "
                            f"{missing}, so it cannot be resumed; use a new --workdir")
    if meta["epoch_step"] >= steps_per_epoch:
      raise CheckpointError(
          f"{self.manager.directory} was saved after step {meta['epoch_step']} of an epoch, "
          f"and this config's epochs have {steps_per_epoch} steps (config.batch_size or "
          "config.data.train_split changed); resume with the run's settings or use a new "
          "--workdir")
    averages = sorted(state.averages or {})
    saved_averages = _saved_averages(meta, self.manager.directory)
    if saved_averages != averages:
      raise CheckpointError(
          f"{self.manager.directory} was trained with weight averages {saved_averages}, "
          f"this config keeps {averages} (config.optimizer.ema_decay, lookahead_every); "
          "resume with the run's settings or use a new --workdir")
    proxy = state.proxy is not None
    if meta.get("proxy", False) != proxy:
      raise CheckpointError(
          f"{self.manager.directory} was trained {'with' if meta.get('proxy') else 'without'} a "
          f"proxy choosing its examples, this config {'has' if proxy else 'has none'} "
          "(config.selection.fraction); resume with the run's settings or use a new --workdir")
    diff = model_differences(meta["model"], model_name, model)
    if diff == ["dtype"]:  # e.g. dtype "auto" on another backend: resume needs the same one
      raise CheckpointError(
          f"{self.manager.directory} was trained computing in {meta['model']['dtype']}, not "
          f"{model.dtype}; resume with --config.dtype={meta['model']['dtype']}")
    if diff:
      raise CheckpointError(f"{self.manager.directory} holds checkpoints of another model "
                            f"(differs in {diff}); use a new --workdir")

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.manager.directory, str(step))
    aside = f"{path}.corrupt"
    while os.path.exists(aside):
      aside += "_"
    if jax.process_index() == 0:
      os.rename(path, aside)
    if jax.process_count() > 1:  # every process reloads after the rename: their steps agree
      multihost_utils.sync_global_devices(f"set aside {path}")
    logging.warning("skipping unreadable checkpoint %s (%s: %s); moved it to %s", path,
                    type(error).__name__, str(error)[:300], aside)
    self.manager.reload()


def _saved_averages(meta: dict, where: str) -> list[str]:
  """The names of the weight averages a training checkpoint holds (before the EMA, meta
  did not list them: only lookahead existed)."""
  if "averages" in meta:
    return meta["averages"]
  try:
    return ["lookahead"] if json.loads(meta["config"])["optimizer"].get("lookahead_every") \
        else []
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise CheckpointError(f"{where}: a training checkpoint's meta config is not a run's "
                          f"config ({_one_line(e)})") from e


def check_writable(workdir: str) -> None:
  """Fails before any compute when checkpoints could not be written, creating nothing.

  The workdir itself is made by the checkpoint manager, after the data and the
  model are known to be usable, so that a failed start leaves no empty workdir.
  """
  try:
    files.check_creatable(workdir)
  except OSError as e:
    raise CheckpointError(f"--workdir {workdir} is not writable: {e}") from e
