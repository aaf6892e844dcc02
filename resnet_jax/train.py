"""Training and evaluation: create_train_state, train_step, eval_step, train_and_evaluate.

Data parallelism is jax.jit over a 1-D device mesh ("data"): the train state is
replicated, every batch is sharded along its leading axis, and XLA inserts the
gradient all-reduce. The same code runs on one CPU, N GPUs or a multi-host TPU
slice (after jax.distributed.initialize()); BatchNorm statistics are over the
global batch because the model's means are plain jnp reductions under GSPMD.

The model, optimizer and steps import no TensorFlow; only `train_and_evaluate`
(through input_pipeline) does, so GPU machines can drive the steps from numpy.
"""

import dataclasses
import functools
import os
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metrics
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import (checkpoints, config_validation, data_sources, default_config,
                        device_pipeline, models, optim, plots)


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics, plateau state, rng and non-finite record."""

  batch_stats: Any = None
  plateau: Any = None  # optax ReduceLROnPlateauState; its scale multiplies updates
  rng: jax.Array = None  # uint32[2]; dropout keys are fold_in(rng, step)
  skipped_steps: jax.Array = None  # int32: steps whose loss or gradient was not finite
  first_nonfinite_step: jax.Array = None  # int32, -1 until a step is not finite


class NonFiniteError(RuntimeError):
  """A loss or gradient was NaN or infinite; names the step."""


@flax.struct.dataclass
class Metrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Accuracy


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy in float32, with optional label smoothing."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def build_model(config: ml_collections.ConfigDict) -> models.ResNet:
  name, fields = default_config.model_fields(config)
  return models.get_model(name, dtype=config.dtype, **fields,
                          fusion_barriers=config.cpu.fusion_barriers and on_cpu())


def enable_compilation_cache(directory: str) -> None:
  """Jax's persistent compilation cache in `directory` ("" leaves it off)."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def compiler_options(config: ml_collections.ConfigDict) -> dict | None:
  """XLA options for the jitted steps: config.cpu.xla_options, on the CPU backend only."""
  if not on_cpu():
    return None
  return dict(config.cpu.xla_options) or None


def create_train_state(config, model: models.ResNet, updates_per_epoch: int) -> TrainState:
  """Initial parameters, optimizer and plateau state from `config.seed`."""
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = models.init_variables(model, init_rng)
  tx, _ = optim.create_optimizer(config.optimizer, updates_per_epoch, config.num_epochs)
  plateau = optim.plateau_from_config(config.optimizer)
  return TrainState.create(
      apply_fn=model.apply, params=variables["params"], tx=tx,
      batch_stats=variables["batch_stats"],
      plateau=(plateau or optim.Plateau()).init(), rng=dropout_rng,
      skipped_steps=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch: dict, label_smoothing: float = 0.0,
               skip_nonfinite: bool = False):
  """One optimizer (or accumulation) step; returns the new state and its metrics.

  A step whose loss or gradient is not finite changes nothing but the step
  count and the non-finite record, so no NaN ever reaches parameters,
  statistics or checkpoints. Unless `skip_nonfinite`, every later step is a
  no-op too, until the host sees `first_nonfinite_step` and stops the run.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_rng})
    loss = cross_entropy(logits, batch["label"], label_smoothing)
    return loss.mean(), (logits, loss, updates["batch_stats"])

  grads, (logits, loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  finite = jnp.isfinite(loss).all() & jnp.all(jnp.array(
      [jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  # The plateau scale multiplies the step (not the gradient): the applied lr.
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
  apply = finite & (skip_nonfinite | (state.first_nonfinite_step < 0))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  state = state.replace(
      step=state.step + 1,
      params=keep(optax.apply_updates(state.params, updates), state.params),
      opt_state=keep(opt_state, state.opt_state), batch_stats=keep(batch_stats, state.batch_stats),
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                     state.first_nonfinite_step))
  mask = jnp.broadcast_to(finite, loss.shape)  # a skipped step does not count in the metrics
  return state, Metrics.single_from_model_output(loss=jnp.where(finite, loss, 0.0),
                                                 logits=jnp.where(finite, logits, 0.0),
                                                 labels=batch["label"], mask=mask)


def eval_step(state: TrainState, batch: dict) -> Metrics:
  """Deterministic evaluation (running BN statistics, no dropout), honouring the mask."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"], train=False)
  loss = cross_entropy(logits, batch["label"])
  return Metrics.single_from_model_output(loss=loss, logits=logits, labels=batch["label"],
                                          mask=batch["mask"])


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all, every process's) with one "data" axis.

  Auto axis type: XLA's partitioner places the collectives (gradient all-reduce,
  BatchNorm's global-batch means) from the input and output shardings alone.
  """
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


class Steps:
  """The jitted steps over a data-parallel mesh, and host-to-device batch placement."""

  def __init__(self, config, mesh: jax.sharding.Mesh | None = None):
    self.mesh = mesh or data_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data = NamedSharding(self.mesh, P("data"))
    self.label_smoothing = config.label_smoothing
    self.skip_nonfinite = config.skip_nonfinite_steps
    self.compiler_options = compiler_options(config)
    self.train = jax.jit(
        functools.partial(train_step, label_smoothing=config.label_smoothing,
                          skip_nonfinite=config.skip_nonfinite_steps),
        in_shardings=(self.replicated, self.data), out_shardings=self.replicated,
        donate_argnums=0, compiler_options=self.compiler_options)
    self.eval = jax.jit(eval_step, in_shardings=(self.replicated, self.data),
                        out_shardings=self.replicated, compiler_options=self.compiler_options)

  def device_train(self, split):
    """A jitted train step that takes its batch from a device_pipeline.DeviceSplit.

    Called as step(state, split.arrays, order, index): the batch is gathered,
    augmented and sharded on the devices, with no host work per step.
    """

    def step(state, arrays, order, index):
      key = jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step)  # not dropout's
      batch = split.get_batch(arrays, order, index, key)
      batch = jax.lax.with_sharding_constraint(batch, self.data)
      return train_step(state, batch, self.label_smoothing, self.skip_nonfinite)

    return jax.jit(step, in_shardings=(self.replicated, self.replicated, self.replicated, None),
                   out_shardings=self.replicated, donate_argnums=0,
                   compiler_options=self.compiler_options)

  def place_state(self, state: TrainState) -> TrainState:
    return jax.device_put(state, self.replicated)

  def place_batch(self, batch: dict) -> dict:
    """Assembles the global batch from this process's rows."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.data, x), batch)


def evaluate(steps: Steps, state: TrainState, split) -> dict[str, float]:
  total = None
  for batch in split:
    m = steps.eval(state, steps.place_batch(batch))
    total = m if total is None else total.merge(m)
  return {k: float(v) for k, v in total.compute().items()}


class Preempted(SystemExit):
  """Training stopped on SIGTERM/SIGINT after checkpointing; rerunning resumes it."""


class _StopSignals:
  """Turns SIGTERM and SIGINT into a flag checked between steps (main thread only)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class _Run:
  """What a run needs besides the train state, built once by train_and_evaluate."""

  config: ml_collections.ConfigDict
  workdir: str
  model: models.ResNet
  steps: Steps
  train_split: Any
  eval_split: Any
  steps_per_epoch: int
  schedule: Any
  plateau: optim.Plateau | None
  manager: Any
  writer: Any  # clu metric writer, created once the workdir is known to be ours

  def save(self, state: TrainState, history: list[dict], epoch_step: int,
           train_metrics: Metrics | None, eval_accuracy: float | None) -> None:
    """Checkpoints at the state's step, unless that step is already saved."""
    _check_finite(self, state)
    if int(state.step) in self.manager.all_steps():
      return
    meta = {"model": models.model_config(self.config.model.name, self.model),
            "source": "train", "epoch": len(history), "epoch_step": epoch_step,
            "eval_accuracy": eval_accuracy, "config": self.config.to_json_best_effort(),
            "history": history}
    try:
      checkpoints.save_training(self.manager, int(state.step), state,
                                train_metrics or Metrics.empty(), meta)
    except Exception as e:  # pylint: disable=broad-except
      # Disk full, permissions... Orbax raises OSError, or ValueError from its
      # asynchronous writers (a previous save's failure surfaces here), and only
      # ever renames a finished save into place: earlier checkpoints are intact.
      raise _save_failed(self.manager, e) from e


def _build_run(config, workdir: str) -> tuple[_Run, TrainState]:
  """Validates the config, loads the data and builds model, steps and optimizer."""
  from resnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top

  config_validation.validate(config)
  _check_writable(workdir)
  model = build_model(config)
  steps = Steps(config)
  if config.data.pipeline == "device":
    images, labels = data_sources.load_split(config.data, config.data.train_split)
    train_split = device_pipeline.DeviceSplit(
        images, labels, batch_size=config.batch_size, augment_settings=config.data.augment,
        normalization=config.data.normalization, seed=config.seed, sharding=steps.replicated)
  else:
    train_split = input_pipeline.create_split(config.data, config.data.train_split,
                                              batch_size=config.batch_size, train=True,
                                              seed=config.seed)
  eval_split = input_pipeline.create_split(config.data, config.data.eval_split,
                                           batch_size=config.eval_batch_size, train=False)
  accumulation = config.optimizer.accumulation_steps
  # Whole accumulation groups only, so no gradient is carried across epochs.
  steps_per_epoch = train_split.steps_per_epoch // accumulation * accumulation
  if steps_per_epoch == 0:
    raise data_sources.DataError(
        f"config.data.train_split={config.data.train_split!r} has {train_split.num_examples} "
        f"examples: fewer than one update of batch_size={config.batch_size} x "
        f"accumulation_steps={accumulation}")
  updates_per_epoch = steps_per_epoch // accumulation
  state = steps.place_state(create_train_state(config, model, updates_per_epoch))
  _, schedule = optim.create_optimizer(config.optimizer, updates_per_epoch, config.num_epochs)
  manager = checkpoints.training_manager(workdir, config.keep_checkpoints)
  run = _Run(config, workdir, model, steps, train_split, eval_split, steps_per_epoch, schedule,
             optim.plateau_from_config(config.optimizer), manager, writer=None)
  logging.info("model %s: %s parameters; %d train / %d eval examples; %d steps per epoch",
               config.model.name, f"{models.count_params(model):,}", train_split.num_examples,
               eval_split.num_examples, steps_per_epoch)
  return run, state


def _save_failed(manager, error: Exception) -> checkpoints.CheckpointError:
  manager.reload()
  reason = str(error)
  if len(reason) > 400:  # Orbax's messages put paths first and the OS's reason last
    reason = f"{reason[:150]} ... {reason[-250:]}"
  return checkpoints.CheckpointError(
      f"writing to {os.path.dirname(manager.directory)} failed ({type(error).__name__}: "
      f"{reason}); the complete checkpoints are intact: {sorted(manager.all_steps())}")


def _check_writable(workdir: str) -> None:
  """Fails before any compute when checkpoints could not be written, creating nothing.

  The workdir itself is made by the checkpoint manager, after the data and the
  model are known to be usable, so that a failed start leaves no empty workdir.
  """
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    with tempfile.NamedTemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise checkpoints.CheckpointError(f"--workdir {workdir} is not writable: {e}") from e


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> tuple[TrainState, list[dict]]:
  """Trains `config` for config.num_epochs, evaluating on config.data.eval_split each epoch.

  Resumes from the newest checkpoint in `workdir`. On SIGTERM or SIGINT it
  finishes the current step, checkpoints, and raises Preempted (a SystemExit
  whose message says how to resume). Returns the final state and the history:
  one dict of scalars per epoch, as written to TensorBoard.
  """
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  run, state = _build_run(config, workdir)
  state, history, epoch_step, train_metrics = _resume(run, state)
  # Only now, with the workdir known to be ours, is anything written to it.
  run.writer = metric_writers.create_default_writer(workdir,
                                                    just_logging=jax.process_index() > 0)
  if not history and not epoch_step:
    run.writer.write_hparams(_flatten(config.to_dict()))
  progress = periodic_actions.ReportProgress(
      num_train_steps=run.steps_per_epoch * config.num_epochs, writer=run.writer, every_secs=60)
  run_epoch = _epoch_runner(run.steps, run.train_split, run.steps_per_epoch)
  with _StopSignals() as stop:
    for epoch in range(len(history), config.num_epochs):
      start, first_step = time.perf_counter(), epoch_step  # first_step > 0 when resumed
      for state, m in run_epoch(state, epoch, epoch_step):
        train_metrics = m if train_metrics is None else train_metrics.merge(m)
        epoch_step += 1
        progress(int(state.step))
        if epoch_step % 100 == 0:
          _check_finite(run, state)
        if stop.received and epoch_step < run.steps_per_epoch:
          _stop(run, state, history, epoch_step, train_metrics, stop.received)
      images = (run.steps_per_epoch - first_step) * config.batch_size
      state = _end_epoch(run, state, history, train_metrics,
                         images / (time.perf_counter() - start))
      epoch_step, train_metrics = 0, None
      if stop.received and epoch + 1 < config.num_epochs:
        _stop(run, state, history, 0, None, stop.received)
  _close(run)
  if history and jax.process_index() == 0:
    plots.plot_curves(history, os.path.join(workdir, plots.CURVES_FILE))
  return state, history


def _end_epoch(run: _Run, state: TrainState, history: list[dict], train_metrics: Metrics,
               images_per_s: float) -> TrainState:
  """Evaluates, drives the plateau, logs, appends to `history` and checkpoints."""
  config = run.config
  train_summary = {k: float(v) for k, v in train_metrics.compute().items()}
  eval_summary = evaluate(run.steps, state, run.eval_split)
  accumulation = config.optimizer.accumulation_steps
  lr = float(run.schedule(int(state.step) // accumulation - 1)) * float(state.plateau.scale)
  if run.plateau:  # once per epoch, on the configured metric
    value = train_summary["loss"] if config.optimizer.plateau.metric == "train_loss" \
        else eval_summary["loss"]
    state = state.replace(plateau=run.plateau.update(state.plateau, value))
  epoch = len(history) + 1
  scalars = {"epoch": epoch, "learning_rate": lr, "skipped_steps": int(state.skipped_steps),
             "images_per_s": images_per_s,
             **{f"train_{k}": v for k, v in train_summary.items()},
             **{f"eval_{k}": v for k, v in eval_summary.items()}}
  run.writer.write_scalars(int(state.step), scalars)
  history.append(scalars)
  if jax.process_index() == 0:
    try:
      plots.write_history(run.workdir, history)  # atomic: the old file survives a failure
    except OSError as e:
      raise _save_failed(run.manager, e) from e
  if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
    run.save(state, history, 0, None, eval_summary["accuracy"])
  logging.info("epoch %d/%d: train loss %.4f acc %.4f | eval loss %.4f acc %.4f | lr %.3g | "
               "%.0f images/s", epoch, config.num_epochs, train_summary["loss"],
               train_summary["accuracy"], eval_summary["loss"], eval_summary["accuracy"], lr,
               scalars["images_per_s"])
  return state


def _check_finite(run: _Run, state: TrainState) -> None:
  """Stops the run at the first non-finite step, unless config.skip_nonfinite_steps."""
  first = int(state.first_nonfinite_step)
  if first < 0 or run.config.skip_nonfinite_steps:
    return
  _close(run)
  latest = run.manager.latest_step()
  raise NonFiniteError(
      f"non-finite loss or gradient at step {first} (epoch {first // run.steps_per_epoch + 1}); "
      f"training stopped before applying it. Last good checkpoint: "
      f"{'none' if latest is None else os.path.join(run.manager.directory, str(latest))}. "
      "Lower the learning rate, or set config.skip_nonfinite_steps=True to skip such steps.")


def _stop(run: _Run, state, history, epoch_step, train_metrics, signal_name: str):
  run.save(state, history, epoch_step, train_metrics, None)
  _close(run)
  code = 130 if signal_name == "SIGINT" else 143  # the shell's 128 + signal number
  message = (f"{signal_name}: stopped at step {int(state.step)} (epoch {len(history) + 1}, "
             f"step {epoch_step} of {run.steps_per_epoch}) and saved a checkpoint to "
             f"{checkpoints.checkpoint_dir(run.workdir)}; rerun the same command to resume")
  logging.warning(message)
  print(message, file=sys.stderr)
  raise Preempted(code)


def _close(run: _Run) -> None:
  try:
    run.manager.wait_until_finished()  # asynchronous saves complete before we exit
  except Exception as e:  # pylint: disable=broad-except  # as in _Run.save
    raise _save_failed(run.manager, e) from e
  run.manager.close()
  run.writer.flush()


def _resume(run: _Run, state: TrainState):
  """(state, history, epoch_step, partial train metrics) from the newest valid checkpoint.

  A checkpoint that cannot be read (truncated files, missing metadata) is moved
  aside as <step>.corrupt, with a warning naming it, and the next older one is
  tried; nothing is deleted.
  """
  for step in sorted(run.manager.all_steps(), reverse=True):
    try:
      meta = checkpoints.read_meta(run.manager, step)
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many types
      _set_aside(run, step, e)
      continue
    _check_same_model(run, meta)
    try:
      state, metrics_state = checkpoints.restore_training(run.manager, step, state,
                                                          Metrics.empty(), run.steps.replicated)
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(run, step, e)
      continue
    epoch_step = meta["epoch_step"]
    train_metrics = flax.serialization.from_state_dict(Metrics.empty(), metrics_state) \
        if epoch_step else None
    logging.info("resuming from %s/%d: epoch %d, step %d of it", run.manager.directory, step,
                 meta["epoch"] + 1, epoch_step)
    return state, meta["history"], epoch_step, train_metrics
  return state, [], 0, None


def _check_same_model(run: _Run, meta: dict) -> None:
  if meta.get("source") != "train":
    raise checkpoints.CheckpointError(
        f"{run.manager.directory} holds {meta.get('source')!r} checkpoints, not a training "
        "run's, so there is nothing to resume; train in a new --workdir")
  diff = checkpoints.model_differences(meta["model"], run.config.model.name, run.model)
  if diff:
    raise checkpoints.CheckpointError(
        f"{run.manager.directory} holds checkpoints of another model (differs in {diff}); "
        "use a new --workdir")


def _set_aside(run: _Run, step: int, error: Exception) -> None:
  path = os.path.join(run.manager.directory, str(step))
  aside = f"{path}.corrupt"
  while os.path.exists(aside):
    aside += "_"
  if jax.process_index() == 0:
    os.rename(path, aside)
  logging.warning("skipping unreadable checkpoint %s (%s: %s); moved it to %s", path,
                  type(error).__name__, str(error)[:300], aside)
  run.manager.reload()


def _epoch_runner(steps: Steps, split, num_steps: int):
  """run(state, epoch, start) yields (state, metrics) after each step from `start` on."""
  if isinstance(split, device_pipeline.DeviceSplit):
    device_step = steps.device_train(split)

    def run(state, epoch, start):
      order = split.epoch_order(epoch)
      for index in range(start, num_steps):
        state, metrics_ = device_step(state, split.arrays, order, index)
        yield state, metrics_
  else:

    def run(state, epoch, start):
      for _, batch in zip(range(start, num_steps), split.epoch(epoch, start)):
        state, metrics_ = steps.train(state, steps.place_batch(batch))
        yield state, metrics_

  return run


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return flat
