"""Optimizers and learning-rate schedules built from `config.optimizer`, with optax.

`default_config()` lists the section's keys, each beside a word on what reads it;
the parts of a recipe (Muon, lookahead, the EMA, the plateau, parameter groups) are
documented where they are built below. Schedules count optimizer updates, i.e.
after accumulation. No TensorFlow here.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "warmup_cosine", "one_cycle", "triangle")
DECAY_TARGETS = ("all", "kernels")
PLATEAU_METRICS = ("train_loss", "eval_loss")


def default_config() -> ml_collections.ConfigDict:
  """config.optimizer, with defaults (the original project's shallow recipe: Adam 1e-3,
  nothing else)."""
  config = ml_collections.ConfigDict()
  config.name = "adam"  # OPTIMIZERS: "adam" (torch's: L2 added to the gradient), "adamw", "sgd"
  config.learning_rate = 1e-3
  config.weight_decay = 0.0
  config.decay = "all"  # DECAY_TARGETS: every parameter (as torch), or "kernels" only
  config.b1, config.b2, config.eps = 0.9, 0.999, 1e-8  # adam, adamw
  config.momentum, config.nesterov = 0.9, False  # sgd (and per_examples)
  config.accumulation_steps = 1  # micro-batches per update (optax.MultiSteps, mean gradient)
  # learning_rate_schedule: "step" uses step_epochs and gamma; "warmup_cosine" and
  # "triangle" warmup_epochs; "triangle" starts at start_factor x lr and ends at end_factor x.
  config.schedule = "constant"
  config.step_epochs, config.gamma = 10, 0.1
  config.warmup_epochs = 0.0
  config.start_factor, config.end_factor = 0.2, 0.07
  config.per_examples = 0  # 0, or N: lr and weight decay stated per N examples (sgd; below)
  config.groups = group_config(())  # the model family's (default_config.set_model)
  config.lookahead_every = 0  # 0, or train steps between lookahead averages (Lookahead)
  config.lookahead_decay = 0.95 ** 5
  config.ema_decay = 0.0  # 0, or the decay of an average of the weights evaluation uses (EMA)
  # Muon for the convolution kernels (the "conv_kernel" group, muon_kernels), at its own
  # rate on the same schedule.
  config.muon = ml_collections.ConfigDict(
      {"enabled": False, "learning_rate": 0.24, "momentum": 0.6, "ns_steps": 3})
  # ReduceLROnPlateau once per epoch on `metric` (PLATEAU_METRICS; Plateau).
  config.plateau = ml_collections.ConfigDict(
      {"enabled": False, "metric": "train_loss", "factor": 0.1, "patience": 2, "cooldown": 0,
       "rtol": 1e-4})
  return config


def group_config(groups: tuple[str, ...]) -> ml_collections.ConfigDict:
  """config.optimizer.groups: for each parameter group a model family lets a config set
  (models.Family.groups, labelled by its param_labels), `lr_multiplier`, its rate as a
  multiple of the schedule's, and `epochs`, after which it stops training (0: never).
  E.g. airbench's BatchNorm biases at 64x, its whitening bias for 3 epochs only."""
  return ml_collections.ConfigDict(
      {label: {"lr_multiplier": 1.0, "epochs": 0.0} for label in groups})


def learning_rate_schedule(opt_config, updates_per_epoch: int,
                           num_epochs: int) -> optax.Schedule:
  lr, name = opt_config.learning_rate, opt_config.schedule
  total = max(1, updates_per_epoch * num_epochs)
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "step":
    return optax.exponential_decay(lr, transition_steps=opt_config.step_epochs * updates_per_epoch,
                                   decay_rate=opt_config.gamma, staircase=True)
  if name in ("warmup_cosine", "triangle"):
    warmup = min(int(opt_config.warmup_epochs * updates_per_epoch), total - 1)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
  if name == "one_cycle":
    return optax.cosine_onecycle_schedule(total, lr)
  if name == "triangle":
    return optax.join_schedules(
        [optax.linear_schedule(lr * opt_config.start_factor, lr, warmup),
         optax.linear_schedule(lr, lr * opt_config.end_factor, total - warmup)], [warmup])
  raise ValueError(f"config.optimizer.schedule={name!r} is not one of {list(SCHEDULES)}")


def warmup_problem(opt_config, num_epochs: int) -> str | None:
  """Why the schedule's warm-up cannot work in `num_epochs` (as a recipe shortened by
  --config.num_epochs leaves it: the schedule clamps it silently), or None."""
  if opt_config.schedule in ("warmup_cosine", "triangle") \
      and opt_config.warmup_epochs >= num_epochs:
    return (f"config.optimizer.warmup_epochs={opt_config.warmup_epochs} is not below "
            f"config.num_epochs={num_epochs}: the learning rate rises all run and never "
            "decays; shorten the warm-up with the run")
  return None


def _decay_mask(decay: str):
  if decay == "all":
    return None
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def _per_examples(opt_config, batch_size: int) -> float:
  """The factor turning a rate stated per `per_examples` examples into one per step.

  airbench states lr and weight decay per 1024 examples and divides by the
  momentum's amplification, 1 + 1 / (1 - momentum), so that neither the batch
  size nor the momentum changes how far an epoch moves the weights; its loss is
  summed over the batch, ours is the mean, hence the batch_size here.
  """
  if not opt_config.per_examples:
    return 1.0
  return batch_size / (opt_config.per_examples * (1 + 1 / (1 - opt_config.momentum)))


def _renormalize_kernels() -> optax.GradientTransformation:
  """Adds kernel * (sqrt(c_out) / |kernel| - 1): the step applies to the renormalised kernel."""
  def update(updates, state, params):
    updates = jax.tree.map(lambda u, p: u + p * (jnp.sqrt(p.shape[-1]) / jnp.linalg.norm(p) - 1),
                           updates, params)
    return updates, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def muon_kernels(learning_rate: optax.ScalarOrSchedule, momentum: float,
                 ns_steps: int) -> optax.GradientTransformation:
  """airbench94_muon's optimizer for convolution kernels [h, w, c_in, c_out].

  Each step: PyTorch SGD's Nesterov momentum; the result orthogonalised by
  Newton-Schulz (optax.contrib's, on the kernel as an (h*w*c_in, c_out) matrix),
  so every direction of the filter bank moves by about the same amount; and the
  kernel renormalised to norm sqrt(c_out) before the step: BatchNorm follows
  every convolution, so the norm changes nothing but the effective step size,
  which the renormalisation holds fixed.
  """
  dims = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
  return optax.chain(
      optax.trace(momentum, nesterov=True),  # airbench's buffer: g + m * (m * buf + g)
      # beta=0: no second momentum (optax's own is an average with bias correction).
      optax.contrib.scale_by_muon(ns_steps=ns_steps, beta=0.0, nesterov=False,
                                  weight_dimension_numbers=lambda tree: jax.tree.map(
                                      lambda _: dims, tree)),
      optax.scale_by_learning_rate(learning_rate),
      _renormalize_kernels())


def _base_optimizer(opt_config, schedule: optax.Schedule, wd: float, mask):
  name = opt_config.name
  if name == "adam":  # torch.optim.Adam(weight_decay=wd): g += wd * p before the moments
    return optax.chain(optax.add_decayed_weights(wd, mask),
                       optax.scale_by_adam(opt_config.b1, opt_config.b2, opt_config.eps),
                       optax.scale_by_learning_rate(schedule))
  if name == "adamw":
    return optax.adamw(schedule, opt_config.b1, opt_config.b2, opt_config.eps, weight_decay=wd,
                       mask=mask)
  if name == "sgd":  # torch.optim.SGD: coupled decay, then momentum
    return optax.chain(optax.add_decayed_weights(wd, mask),
                       optax.sgd(schedule, opt_config.momentum or None, opt_config.nesterov))
  raise ValueError(f"config.optimizer.name={name!r} is not one of {list(OPTIMIZERS)}")


def _group_rate(schedule: optax.Schedule, wd: float, settings,
                updates_per_epoch: int) -> tuple[optax.Schedule, float]:
  """A parameter group's (learning rate, weight decay): the schedule times its multiplier,
  0 after its first `epochs`; the same decay per step, so the coupled rate divides by the
  multiplier."""
  multiplier, cutoff = settings.lr_multiplier, settings.epochs * updates_per_epoch
  if not cutoff:
    return (lambda count: schedule(count) * multiplier), wd / multiplier
  return (lambda count: jnp.where(count < cutoff, schedule(count) * multiplier, 0.0),
          wd / multiplier)


def create_optimizer(opt_config, updates_per_epoch: int, num_epochs: int, batch_size: int = 1,
                     param_labels=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule); the optimizer includes gradient accumulation.

  `batch_size` is the examples per update (batch x accumulation), which only
  opt_config.per_examples uses. `param_labels` (the model family's: params ->
  a tree of group names) sorts the parameters into groups; it is needed only
  when the config gives a group settings other than "other"'s. The schedule is
  the learning rate of the "other" group.
  """
  scale = _per_examples(opt_config, batch_size)
  base = learning_rate_schedule(opt_config, updates_per_epoch, num_epochs)
  schedule = (lambda count: base(count) * scale) if scale != 1.0 else base
  # Stated per examples, weight decay is a decay per step: coupled to the lr, as torch's.
  wd = opt_config.weight_decay / opt_config.learning_rate if opt_config.per_examples \
      else opt_config.weight_decay
  groups = {"other": (schedule, wd)}
  for label, settings in opt_config.groups.items():
    if settings.lr_multiplier != 1.0 or settings.epochs:
      groups[label] = _group_rate(schedule, wd, settings, updates_per_epoch)
  mask = _decay_mask(opt_config.decay)
  transforms = {name: _base_optimizer(opt_config, rate, decay, mask)
                for name, (rate, decay) in groups.items()}
  if opt_config.muon.enabled:  # Muon's rate follows the schedule's shape
    muon = opt_config.muon
    transforms["conv_kernel"] = muon_kernels(
        lambda count: base(count) * (muon.learning_rate / opt_config.learning_rate),
        muon.momentum, muon.ns_steps)
  if len(transforms) == 1:  # groups only when needed: the original recipes' state stays as it was
    tx = transforms["other"]
  elif param_labels is None:
    raise ValueError(f"optimizer groups {sorted(set(transforms) - {'other'})} need the "
                     "model's param_labels")
  else:  # a group without settings of its own trains as "other"
    tx = optax.multi_transform(transforms, lambda params: jax.tree.map(
        lambda label: label if label in transforms else "other", param_labels(params)))
  if opt_config.accumulation_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt_config.accumulation_steps)
  return tx, schedule


def all_finite(tree) -> jax.Array:
  """Whether every value in `tree` (gradients, a loss) is finite: a step that would
  write a NaN or an infinity into the weights is not applied."""
  return jnp.all(jnp.array([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


@dataclasses.dataclass(frozen=True)
class Plateau:
  """ReduceLROnPlateau on top of any optimizer, fed one value per epoch.

  optax.contrib.reduce_on_plateau needs `value=` on every update and counts its
  patience in update calls, so it is not chained into the per-step optimizer:
  `update` runs once per epoch with the epoch's metric and the train step
  multiplies its updates by `state.scale`. PyTorch reduces when more than
  `patience` epochs in a row fail to improve; optax reduces when its count
  reaches its patience, hence the +1.
  """

  factor: float = 0.1
  patience: int = 2
  cooldown: int = 0
  rtol: float = 1e-4

  @property
  def transform(self) -> optax.GradientTransformationExtraArgs:
    return optax.contrib.reduce_on_plateau(factor=self.factor, patience=self.patience + 1,
                                           cooldown=self.cooldown, rtol=self.rtol)

  def init(self):
    return self.transform.init(jnp.zeros((), jnp.float32))

  def update(self, state, value: float):
    _, state = self.transform.update({}, state, value=jnp.asarray(value, jnp.float32))
    return state


class _WeightAverage:
  """What the weight averages share: a buffer of their own, and the blend that moves it
  towards the weights, a + (1 - d) (w - a), where `when` holds."""

  def init(self, weights):
    return jax.tree.map(jnp.copy, weights)  # a buffer of its own: the train step donates

  @staticmethod
  def _blend(average, weights, d: jax.Array, when: jax.Array):
    return jax.tree.map(lambda a, w: jnp.where(when, a + (1 - d) * (w - a), a), average, weights)


@dataclasses.dataclass(frozen=True)
class EMA(_WeightAverage):
  """An exponential moving average of the weights, which evaluation and prediction use.

  After every train step the average takes the weights in with weight 1 - d,
  d = min(decay, (1 + step) / (10 + step)): TensorFlow's ExponentialMovingAverage
  warm-up, so the random weights of the first steps fade within tens of steps
  instead of lasting ~1 / (1 - decay) steps. The BatchNorm running statistics are
  averaged with the parameters (as timm's ModelEmaV2 does), not recomputed: they
  are themselves averages over recent steps. Training continues from the raw
  weights, which the average never changes.
  """

  decay: float
  evaluated: ClassVar[bool] = True  # evaluation reports these weights (and the raw ones)

  def update(self, step: jax.Array, average, weights, enabled: jax.Array = True):
    """(average, weights) after the 1-based train step `step`."""
    d = jnp.minimum(self.decay, (1 + step) / (10 + step))
    return self._blend(average, weights, d, enabled), weights


@dataclasses.dataclass(frozen=True)
class Lookahead(_WeightAverage):
  """airbench's lookahead: every `every` steps the weights move to an average of themselves.

  The average (of parameters and BatchNorm statistics) takes the weights in with
  weight 1 - d, d = decay * (step / total_steps)^3: early on it follows them,
  late it holds more of the past, smoothing the last steps' noise; the weights
  then restart from it. The last step ends on the average (d = 1 there unless it
  is a regular step). `update` runs inside the jitted train step.
  """

  every: int
  decay: float
  total_steps: int
  evaluated: ClassVar[bool] = False  # the weights end on it: evaluation uses them

  def update(self, step: jax.Array, average, weights, enabled: jax.Array = True):
    """(average, weights) after the 1-based train step `step`."""
    regular = step % self.every == 0
    sync = (regular | (step == self.total_steps)) & enabled
    d = jnp.where(regular, self.decay * (step / self.total_steps) ** 3, 1.0)
    average = self._blend(average, weights, d, sync)
    weights = jax.tree.map(lambda a, w: jnp.where(sync, a, w), average, weights)
    return average, weights


# The weight averages a config can ask for, in the train step's order: name -> (the
# optimizer key that turns it on, its class). Their names are read from here alone.
AVERAGES = {"lookahead": ("lookahead_every", Lookahead), "ema": ("ema_decay", EMA)}


def average_names(opt_config) -> list[str]:
  """The names of the weight averages `opt_config` asks for, in the train step's order."""
  return [name for name, (key, _) in AVERAGES.items() if opt_config[key]]


def weight_averages(opt_config, total_steps: int) -> dict:
  """{name: average} of the weight averages the config asks for, each with
  `init(weights)` and `update(step, average, weights, enabled) -> (average, weights)`,
  run by the train step after every optimizer step on {"params", "batch_stats"}, and
  `evaluated`: whether evaluation uses the average instead of the weights."""
  build = {"lookahead": lambda: Lookahead(opt_config.lookahead_every,
                                          opt_config.lookahead_decay, total_steps),
           "ema": lambda: EMA(opt_config.ema_decay)}
  return {name: build[name]() for name in average_names(opt_config)}


def evaluated_average(opt_config) -> str | None:
  """The name of the weight average that evaluation uses, or None: the weights."""
  evaluated = [name for name in average_names(opt_config) if AVERAGES[name][1].evaluated]
  return evaluated[0] if evaluated else None


def plateau_from_config(opt_config) -> Plateau | None:
  p = opt_config.plateau
  if not p.enabled:
    return None
  return Plateau(factor=p.factor, patience=p.patience, cooldown=p.cooldown, rtol=p.rtol)
