"""Training and evaluation: create_train_state, make_train_step, eval_step, train_and_evaluate.

Data parallelism is jax.jit over a 1-D device mesh ("data"): the train state is
replicated, every batch is sharded along its leading axis, and XLA inserts the
gradient all-reduce. The same code runs on one CPU, N GPUs or a multi-host TPU
slice (after jax.distributed.initialize()); BatchNorm statistics are over the
global batch because the model's means are plain jnp reductions under GSPMD.

Nothing here needs TensorFlow: the tf.data pipeline and clu's TensorBoard
writer import it when it is installed (resnet_jax.optional_tf); without it, the
device pipeline, numpy evaluation batches and tensorboard's own event writer serve.

`train_and_evaluate` is the one loop: build, restore, then for each epoch its
steps, evaluation, logging and checkpoint, reading top to bottom.
"""

import contextlib
import functools
import itertools
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metrics
from flax.training import train_state
from flax.traverse_util import flatten_dict
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import (checkpoints, config_validation, logs, model_setup, models, optim,
                        optional_tf, plots, preemption, selection, tta, xla_cpu)
from resnet_jax.data import batches, datasets, sources


# Steps between the host's checks for a non-finite step: reading the device's record
# waits for the step, so each check costs the pipeline's overlap of host and device.
NONFINITE_CHECK_EVERY = 100


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the model's other variables, plateau state, rng, non-finite
  record, weight averages and the proxy that chooses each step's examples."""

  batch_stats: Any = None
  constants: Any = None  # frozen, fitted to the data (FastResNet's whitening); None if none
  plateau: Any = None  # optax ReduceLROnPlateauState; its scale multiplies updates
  rng: jax.Array = None  # uint32[2]; dropout keys are fold_in(rng, step)
  skipped_steps: jax.Array = None  # int32: steps whose loss or gradient was not finite
  first_nonfinite_step: jax.Array = None  # int32, -1 until a step is not finite
  averages: Any = None  # {name: {"params", "batch_stats"}}: optim.weight_averages' state
  proxy: Any = None  # the proxy's state when it chooses the examples (selection.py), or None
  # The average evaluation uses instead of the weights (the EMA), or None.
  evaluated_average: str | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def variables(self) -> dict:
    """The model's variables: what `apply_fn` takes and a checkpoint's "model" item holds."""
    variables = {"params": self.params, "batch_stats": self.batch_stats}
    return variables if self.constants is None else {**variables, "constants": self.constants}

  def evaluated(self) -> "TrainState":
    """This state with the weights evaluation uses: its evaluated average's, or its own."""
    if self.evaluated_average is None:
      return self
    return self.replace(**self.averages[self.evaluated_average])


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


def make_selector(config, model: models.Model, total_steps: int) -> selection.Selector | None:
  """The proxy that chooses each step's examples (config.selection), or None: all of them."""
  if not selection.enabled(config):
    return None
  loss = functools.partial(cross_entropy, label_smoothing=config.label_smoothing)
  return selection.Selector(config, model, total_steps / config.num_epochs, loss)


def create_train_state(config, model: models.Model, tx: optax.GradientTransformation,
                       plateau: optim.Plateau | None = None, *,
                       total_steps: int) -> TrainState:
  """Initial variables (from `config.seed`), optimizer, plateau, weight-average and proxy
  state.

  `total_steps`, the run's length, matters only to weight averages that follow it
  (lookahead's) and to the proxy's schedule.
  """
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  image_shape = datasets.get(config.data).image_shape
  variables = models.init_variables(model, init_rng, image_shape)
  selector = make_selector(config, model, total_steps)
  averages = optim.weight_averages(config.optimizer, total_steps)
  trained = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  return TrainState.create(
      apply_fn=model.apply, params=variables["params"], tx=tx,
      batch_stats=variables["batch_stats"], constants=variables.get("constants"),
      plateau=(plateau or optim.Plateau()).init(), rng=dropout_rng,
      skipped_steps=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.full((), -1, jnp.int32),
      averages={name: average.init(trained) for name, average in averages.items()} or None,
      proxy=selector.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), image_shape)
      if selector else None,
      evaluated_average=optim.evaluated_average(config.optimizer))


def make_train_step(config, model: models.Model, total_steps: int) -> Callable:
  """The train step of `config`: (state, batch) -> (state, metrics), to be jitted.

  Its policies are read here, once: label smoothing, what a non-finite step
  does, the weight averages (optim.weight_averages), which examples the model
  trains on (selection.py) and XLA:CPU's fusion barriers (xla_cpu.py). A step
  whose loss or gradient is not finite changes nothing but
  the step count and the non-finite record, so no NaN ever reaches parameters,
  statistics or checkpoints; unless config.skip_nonfinite_steps, every later step
  is a no-op too, until the host sees `first_nonfinite_step` and stops the run.
  """
  label_smoothing, skip_nonfinite = config.label_smoothing, config.skip_nonfinite_steps
  averages = optim.weight_averages(config.optimizer, total_steps)
  barriers = functools.partial(xla_cpu.fusion_barriers, config, models.family_of(model).blocks)
  selector = make_selector(config, model, total_steps)

  def train_step(state: TrainState, batch: dict):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    proxy = state.proxy
    if selector:  # the batch becomes its hardest examples
      with barriers():
        proxy, batch = selector.select(proxy, batch)

    def loss_fn(params):
      with barriers():
        logits, updates = state.apply_fn(
            {**state.variables, "params": params}, batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      loss = cross_entropy(logits, batch["label"], label_smoothing)
      return loss.mean(), (logits, loss, updates["batch_stats"])

    grads, (logits, loss, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    finite = optim.all_finite((loss, grads))
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    # The plateau scale multiplies the step (not the gradient): the applied lr.
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    apply = finite & (skip_nonfinite | (state.first_nonfinite_step < 0))
    keep = functools.partial(optax.tree_utils.tree_where, apply)
    state = state.replace(
        step=state.step + 1,
        params=keep(optax.apply_updates(state.params, updates), state.params),
        opt_state=keep(opt_state, state.opt_state),
        batch_stats=keep(batch_stats, state.batch_stats),
        proxy=keep(proxy, state.proxy),
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                       state.first_nonfinite_step))
    for name, average in averages.items():
      averaged, weights = average.update(
          state.step, state.averages[name],
          {"params": state.params, "batch_stats": state.batch_stats}, enabled=apply)
      state = state.replace(averages={**state.averages, name: averaged}, **weights)
    mask = jnp.broadcast_to(finite, loss.shape)  # a skipped step does not count in the metrics
    return state, Metrics.single_from_model_output(loss=jnp.where(finite, loss, 0.0),
                                                   logits=jnp.where(finite, logits, 0.0),
                                                   labels=batch["label"], mask=mask)

  return train_step


def eval_step(apply_fn: Callable, variables: dict, batch: dict,
              tta_level: int = 0) -> tuple[Metrics, jax.Array]:
  """Deterministic evaluation of `variables` (running BN statistics, no dropout) on a
  batch: the loss and accuracy over its masked-in examples, and every example's
  predicted class. The one evaluation step of the loop, --mode eval and --mode predict.

  At a test-time augmentation level > 0 the logits are the log of the views' mean
  probability (resnet_jax/tta.py): their argmax is the prediction and their
  cross-entropy -log p(label).
  """
  logits_fn = functools.partial(apply_fn, variables, train=False)
  if tta_level:
    logits = jnp.log(tta.probabilities(logits_fn, batch["image"], tta_level))
  else:
    logits = logits_fn(batch["image"])
  loss = cross_entropy(logits, batch["label"])
  metrics = Metrics.single_from_model_output(loss=loss, logits=logits, labels=batch["label"],
                                             mask=batch["mask"])
  return metrics, logits.argmax(-1)


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all, every process's) with one "data" axis.

  Auto axis type: XLA's partitioner places the collectives (gradient all-reduce,
  BatchNorm's global-batch means) from the input and output shardings alone.
  """
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


class EvalSteps:
  """The jitted evaluation steps of a model over a data-parallel mesh: `eval` and, at
  config.eval.tta's level, `eval_tta`, each (variables, batch) -> (Metrics, predicted
  classes), the variables replicated and the batch and predictions sharded."""

  def __init__(self, config, model: models.Model, mesh: jax.sharding.Mesh | None = None):
    self.mesh = mesh or data_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data = NamedSharding(self.mesh, P("data"))
    self.options = xla_cpu.compiler_options(config, model.dtype)
    xla_cpu.quiet_uncacheable(self.options)
    self.eval, self.eval_tta = (
        jax.jit(functools.partial(eval_step, model.apply, tta_level=level),
                in_shardings=(self.replicated, self.data),
                out_shardings=(self.replicated, self.data), compiler_options=self.options)
        for level in (0, config.eval.tta))


class Steps(EvalSteps):
  """The evaluation steps and the jitted train step of a config's model."""

  def __init__(self, config, model: models.Model, mesh: jax.sharding.Mesh | None = None, *,
               total_steps: int):
    """`total_steps`: the run's length, which weight averages and the proxy's schedule use."""
    super().__init__(config, model, mesh)
    self.train = jax.jit(make_train_step(config, model, total_steps),
                         in_shardings=(self.replicated, self.data),
                         out_shardings=self.replicated, donate_argnums=0,
                         compiler_options=self.options)

  def place_state(self, state: TrainState) -> TrainState:
    return jax.device_put(state, self.replicated)


def eval_metrics(steps: Steps, state: TrainState, eval_data: batches.Batches,
                 tta: bool = False, raw: bool = False) -> dict[str, float]:
  """Loss and accuracy of `state`'s evaluated weights (its raw ones when `raw`) over one
  pass of `eval_data` (training's validation), with config.eval.tta's test-time
  augmentation when `tta`."""
  step, evaluated = steps.eval_tta if tta else steps.eval, state if raw else state.evaluated()
  total = Metrics.empty()
  for batch in eval_data.epoch(0):
    total = total.merge(step(evaluated.variables, batch)[0])
  return {k: float(v) for k, v in total.compute().items()}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> tuple[TrainState, list[dict]]:
  """Trains `config` for config.num_epochs, evaluating on config.data.eval_split each epoch.

  Resumes from the newest checkpoint in `workdir`. On SIGTERM or SIGINT it
  finishes the current step, checkpoints, and raises preemption.Preempted (a
  SystemExit whose message says how to resume). Returns the final state and the history:
  one dict of scalars per epoch, as written to TensorBoard.
  """
  config_validation.validate(config)
  checkpoints.check_writable(workdir)
  dtype, why = model_setup.compute_dtype(config, checkpoints.trained_dtype(workdir))
  logging.info("computing in %s (%s)", dtype, why)
  model, mesh = model_setup.build_model(config, dtype), data_mesh()
  batch_sharding = NamedSharding(mesh, P("data"))
  train_images, train_labels = sources.load_split(config.data, config.data.train_split)
  _check_train_size(config, len(train_labels))
  train_data = batches.train_batches(config, train_images, train_labels, batch_sharding)
  eval_data = batches.eval_batches(
      config, *sources.load_split(config.data, config.data.eval_split), batch_sharding)
  steps_per_epoch = _whole_updates(config, train_data)
  steps = Steps(config, model, mesh, total_steps=steps_per_epoch * config.num_epochs)
  updates_per_epoch = steps_per_epoch // config.optimizer.accumulation_steps
  tx, schedule = optim.create_optimizer(
      config.optimizer, updates_per_epoch, config.num_epochs,
      batch_size=selection.examples_per_step(config) * config.optimizer.accumulation_steps,
      param_labels=models.family_of(model).param_labels)
  plateau = optim.plateau_from_config(config.optimizer)
  state = steps.place_state(create_train_state(config, model, tx, plateau,
                                               total_steps=steps_per_epoch * config.num_epochs))
  _log_run(config, model, train_data, eval_data, steps_per_epoch)

  with checkpoints.TrainingCheckpoints(workdir, config.keep_checkpoints,
                                       config.checkpoint_every_minutes) as saved:
    logs.write_log_file(workdir)  # now that the workdir exists
    state, history, epoch_step, epoch_seconds, train_metrics = saved.restore(
        state, Metrics.empty(), steps.replicated, config.model.name, model, steps_per_epoch)
    fresh = not history and not epoch_step  # a resumed run has its fit in its checkpoint
    if fresh:  # the fit sees the first training images as the train steps do
      state = steps.place_state(_fit_to_data(config, model, state, lambda n: (
          datasets.normalize_pixels(train_images[:n], train_data.normalization))))
    meta = functools.partial(_checkpoint_meta, config, model)
    hparams = flatten_dict(config.to_dict(), sep=".") if fresh else None  # at a run's start
    writer = logs.metric_writer(workdir, hparams, optional_tf.available())
    with contextlib.closing(writer), preemption.StopSignals() as stop:
      progress = logs.Progress(steps_per_epoch * config.num_epochs)
      step = int(state.step)  # counted on the host from here: reading state.step waits
      for epoch in range(len(history), config.num_epochs):
        # Resumed mid-epoch: first_step > 0, and the epoch's seconds before the stop carry on.
        start_time, first_step = time.perf_counter() - epoch_seconds, epoch_step
        for batch in itertools.islice(train_data.epoch(epoch, epoch_step),
                                      steps_per_epoch - epoch_step):
          state, metrics = steps.train(state, batch)
          train_metrics = metrics if train_metrics is None else train_metrics.merge(metrics)
          epoch_step, step = epoch_step + 1, step + 1
          progress(step)
          # A save on time alone, mid-epoch, comes after a check: no checkpoint resumes
          # into a run that can only stop.
          due = epoch_step < steps_per_epoch and saved.due(step)
          if stop.received or ((due or epoch_step % NONFINITE_CHECK_EVERY == 0)
                               and _nonfinite(config, state)):
            break
          if due:
            saved.save(state, train_metrics, meta(history, epoch_step,
                                                  time.perf_counter() - start_time, None))
        _stop_if_nonfinite(config, state, saved, steps_per_epoch)

        eval_accuracy = None  # a checkpoint's rank: only scheduled ones have one
        if epoch_step == steps_per_epoch:  # the epoch is complete: evaluate and record it
          train_summary = {k: float(v) for k, v in train_metrics.compute().items()}
          last = epoch + 1 == config.num_epochs
          eval_summary = _evaluate_epoch(config, steps, state, eval_data, last)
          lr = float(schedule(updates_per_epoch * (epoch + 1) - 1)) * float(state.plateau.scale)
          if plateau:  # once per epoch, on the configured metric
            state = state.replace(plateau=plateau.update(state.plateau, _plateau_value(
                config, train_summary, eval_summary)))
          seconds = time.perf_counter() - start_time
          history.append(_epoch_scalars(epoch, lr, state, train_summary, eval_summary, {
              "images_per_s": (steps_per_epoch - first_step) * config.batch_size
                              / (seconds - epoch_seconds),  # this process's part's rate
              "elapsed_s": (history[-1].get("elapsed_s", 0.0) if history else 0.0) + seconds}))
          _record_epoch(config, workdir, step, history, writer, saved)
          if last or (epoch + 1) % config.checkpoint_every_epochs == 0:
            eval_accuracy = eval_summary["accuracy"]
          epoch_step, train_metrics = 0, None
        if eval_accuracy is not None or stop.received:
          saved.save(state, Metrics.empty() if train_metrics is None else train_metrics,
                     meta(history, epoch_step, (time.perf_counter() - start_time)
                          if epoch_step else 0.0, eval_accuracy))
        epoch_seconds = 0.0  # only the resumed epoch carries seconds from before
        if stop.received and len(history) < config.num_epochs:
          raise preemption.preempted(stop.received, step, len(history), epoch_step,
                                     steps_per_epoch, workdir)
  if history and jax.process_index() == 0:
    _plot_curves(history, workdir)
  return state, history


def _plot_curves(history: list[dict], workdir: str) -> None:
  """DIR/curves.png; where it cannot be written (a full disk) a warning: the run and its
  checkpoints are complete, and `python -m resnet_jax.plots DIR` draws it later."""
  path = os.path.join(workdir, plots.CURVES_FILE)
  try:
    plots.plot_curves(history, path)
  except OSError as e:
    logging.warning("%s cannot be written (%s); the run is complete: draw it later with "
                    "python -m resnet_jax.plots %s", path, e.strerror or e, workdir)


def _log_run(config, model: models.Model, train_data: batches.Batches,
             eval_data: batches.Batches, steps_per_epoch: int) -> None:
  """What a run trains: the model's size, the data's, and the proxy that chooses examples."""
  image_shape = datasets.get(config.data).image_shape
  problem = optim.warmup_problem(config.optimizer, config.num_epochs)
  if problem:
    logging.warning(problem)
  logging.info("model %s: %s parameters; %d train / %d eval examples; %d steps per epoch",
               config.model.name, f"{models.count_params(model, image_shape):,}",
               train_data.num_examples, eval_data.num_examples, steps_per_epoch)
  if selection.enabled(config):
    logging.info("%s", selection.describe(config, model, image_shape))


def _evaluate_epoch(config, steps: Steps, state: TrainState, eval_data: batches.Batches,
                    last: bool) -> dict[str, float]:
  """An epoch's hold-out scalars: the evaluated weights', the raw weights' beside their
  average (as raw_*), and after the last epoch the accuracy with config.eval.tta's TTA."""
  summary = eval_metrics(steps, state, eval_data)
  if state.evaluated_average:
    raw = eval_metrics(steps, state, eval_data, raw=True)
    summary.update({f"raw_{k}": v for k, v in raw.items()})
  if config.eval.tta and last:  # the run's final result
    summary["tta_accuracy"] = eval_metrics(steps, state, eval_data, tta=True)["accuracy"]
  return summary


def _fit_to_data(config, model: models.Model, state: TrainState, train_inputs) -> TrainState:
  """The state with its family's data-fitted initialisation, the proxy's too."""
  state = state.replace(**models.fit_to_data(model, state.variables, train_inputs))
  if state.proxy is None:
    return state
  return state.replace(proxy=selection.fit_to_data(config, model, state.proxy, train_inputs))


def _check_train_size(config, num_examples: int) -> None:
  """Refuses a training split smaller than one update (its size is known only once loaded),
  before the pipelines (which would raise a bare ValueError) and any compile."""
  accumulation = config.optimizer.accumulation_steps
  if num_examples < config.batch_size * accumulation:
    raise datasets.DataError(
        f"config.batch_size={config.batch_size} x config.optimizer.accumulation_steps="
        f"{accumulation} must be at most the {num_examples} examples of "
        f"config.data.train_split={config.data.train_split!r}")


def _whole_updates(config, train_data: batches.Batches) -> int:
  """Steps per epoch in whole accumulation groups, so no gradient is carried across epochs
  (at least one: `_check_train_size`)."""
  accumulation = config.optimizer.accumulation_steps
  return train_data.steps_per_epoch // accumulation * accumulation


def _checkpoint_meta(config, model, history: list[dict], epoch_step: int,
                     epoch_seconds: float, eval_accuracy: float | None) -> dict:
  return {"model": models.model_config(config.model.name, model), "source": "train",
          "layout": checkpoints.LAYOUT, "evaluated_average": optim.evaluated_average(
              config.optimizer), "averages": sorted(optim.average_names(config.optimizer)),
          "proxy": selection.enabled(config),
          "epoch": len(history), "epoch_step": epoch_step, "epoch_seconds": epoch_seconds,
          "eval_accuracy": eval_accuracy, "config": config.to_json_best_effort(),
          "history": history}


def _nonfinite(config, state: TrainState) -> bool:
  """Whether the run must stop: a step was not finite and config says not to skip such."""
  return not config.skip_nonfinite_steps and int(state.first_nonfinite_step) >= 0


def _stop_if_nonfinite(config, state: TrainState, saved, steps_per_epoch: int) -> None:
  if _nonfinite(config, state):
    first = int(state.first_nonfinite_step)
    raise NonFiniteError(
        f"non-finite loss or gradient at step {first} (epoch {first // steps_per_epoch + 1}); "
        f"training stopped before applying it. Last good checkpoint: {saved.latest_path()}. "
        "Lower the learning rate, or set config.skip_nonfinite_steps=True to skip such steps.")


def _plateau_value(config, train_summary: dict, eval_summary: dict) -> float:
  if config.optimizer.plateau.metric == "train_loss":
    return train_summary["loss"]
  return eval_summary["loss"]


# Scalars that time the run: `elapsed_s` sums the epochs' seconds (training and
# evaluation, in this process and the ones it resumed from, to their last checkpoint:
# steps after it are redone and counted once); `images_per_s` is the epoch's rate in the
# process that finished it. A resumed run's other scalars equal an uninterrupted run's.
TIMED_SCALARS = ("images_per_s", "elapsed_s")


def _epoch_scalars(epoch: int, lr: float, state: TrainState, train_summary: dict,
                   eval_summary: dict, timed: dict) -> dict:
  return {"epoch": epoch + 1, "learning_rate": lr, "skipped_steps": int(state.skipped_steps),
          **timed,
          **{f"train_{k}": v for k, v in train_summary.items()},
          **{f"eval_{k}": v for k, v in eval_summary.items()}}


def _record_epoch(config, workdir: str, step: int, history: list[dict], writer, saved) -> None:
  """Writes the newest epoch's scalars to TensorBoard, the log and DIR/history.json."""
  scalars = history[-1]
  writer.write_scalars(step, scalars)
  logging.info("epoch %d/%d: train loss %.4f acc %.4f | eval loss %.4f acc %.4f | lr %.3g | "
               "%.0f images/s", scalars["epoch"], config.num_epochs, scalars["train_loss"],
               scalars["train_accuracy"], scalars["eval_loss"], scalars["eval_accuracy"],
               scalars["learning_rate"], scalars["images_per_s"])
  if "eval_raw_accuracy" in scalars:
    logging.info("(eval above: the weights' %s average; the raw weights: loss %.4f acc %.4f)",
                 optim.evaluated_average(config.optimizer), scalars["eval_raw_loss"],
                 scalars["eval_raw_accuracy"])
  if "eval_tta_accuracy" in scalars:
    logging.info("final evaluation with test-time augmentation (level %d): accuracy %.4f",
                 config.eval.tta, scalars["eval_tta_accuracy"])
  if jax.process_index() == 0:
    try:
      plots.write_history(workdir, history)  # atomic: the old file survives a failure
    except OSError as e:
      raise saved.write_failed(e) from e
