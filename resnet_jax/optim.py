"""Optimizers and learning-rate schedules built from `config.optimizer`, with optax.

config.optimizer fields:
  name: "adam" (PyTorch Adam: L2 decay added to the gradient, the seed's choice),
        "adamw" (decoupled decay), "sgd" (momentum, optionally Nesterov).
  learning_rate, weight_decay, b1, b2, eps, momentum, nesterov
  decay: "all" (every parameter, as the seed's torch optimizers) or "kernels".
  schedule: "constant", "step" (StepLR: x gamma every step_epochs),
        "warmup_cosine" (linear warmup_epochs, cosine to 0), "one_cycle".
  accumulation_steps: micro-batches per update (optax.MultiSteps, mean gradient).
  plateau: ReduceLROnPlateau driven once per epoch (see `Plateau`):
        enabled, metric ("train_loss" as in the seed, or "eval_loss"), factor,
        patience and cooldown in epochs (PyTorch's meaning), rtol.

Schedules count optimizer updates, i.e. after accumulation.
No TensorFlow here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "warmup_cosine", "one_cycle")
DECAY_TARGETS = ("all", "kernels")
PLATEAU_METRICS = ("train_loss", "eval_loss")


def learning_rate_schedule(opt_config, updates_per_epoch: int,
                           num_epochs: int) -> optax.Schedule:
  lr, name = opt_config.learning_rate, opt_config.schedule
  total = max(1, updates_per_epoch * num_epochs)
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "step":
    return optax.exponential_decay(lr, transition_steps=opt_config.step_epochs * updates_per_epoch,
                                   decay_rate=opt_config.gamma, staircase=True)
  if name == "warmup_cosine":
    warmup = min(int(opt_config.warmup_epochs * updates_per_epoch), total - 1)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
  if name == "one_cycle":
    return optax.cosine_onecycle_schedule(total, lr)
  raise ValueError(f"config.optimizer.schedule={name!r} is not one of {list(SCHEDULES)}")


def _decay_mask(decay: str):
  if decay == "all":
    return None
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def create_optimizer(opt_config, updates_per_epoch: int,
                     num_epochs: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule); the optimizer includes gradient accumulation."""
  schedule = learning_rate_schedule(opt_config, updates_per_epoch, num_epochs)
  name, wd = opt_config.name, opt_config.weight_decay
  mask = _decay_mask(opt_config.decay)
  if name == "adam":  # torch.optim.Adam(weight_decay=wd): g += wd * p before the moments
    tx = optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.scale_by_adam(opt_config.b1, opt_config.b2, opt_config.eps),
                     optax.scale_by_learning_rate(schedule))
  elif name == "adamw":
    tx = optax.adamw(schedule, opt_config.b1, opt_config.b2, opt_config.eps, weight_decay=wd,
                     mask=mask)
  elif name == "sgd":  # torch.optim.SGD: coupled decay, then momentum
    tx = optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.sgd(schedule, opt_config.momentum or None, opt_config.nesterov))
  else:
    raise ValueError(f"config.optimizer.name={name!r} is not one of {list(OPTIMIZERS)}")
  if opt_config.accumulation_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt_config.accumulation_steps)
  return tx, schedule


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


def plateau_from_config(opt_config) -> Plateau | None:
  p = opt_config.plateau
  if not p.enabled:
    return None
  return Plateau(factor=p.factor, patience=p.patience, cooldown=p.cooldown, rtol=p.rtol)
