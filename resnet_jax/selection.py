"""Which examples of each batch the model trains on: all, or the hardest part as a proxy ranks them.

airbench96_faster (Keller Jordan) reaches airbench96's accuracy in 0.79x its time by
training each batch only on the half of its examples that a small proxy net finds
hardest (highest loss). The proxy is the same net at widths 32/64/64, a small
fraction of its compute: its forward pass over the whole batch costs little, while
the model's forward and backward passes over half the batch cost half (what it saves
here: docs/recipes.md). The proxy learns beside the model at every step, on its own
hardest examples. Not every few steps behind a lax.cond: XLA:CPU ran the proxy's
backward pass inside a conditional's branch tens of times slower than outside one
(oneDNN's reference convolution, docs/recipes.md), and an update computed and then
dropped would cost as much as one applied.

`config.selection` (default_config): `fraction` 0 trains on every example; e.g. 0.5
on the hardest half. The proxy is config.model's net with `widths` replaced
(FastResNet presets), trained with config.optimizer's recipe on its own schedule
of updates. Its state is a plain dict in the train state ("proxy"), so checkpoints
hold it and a run resumes exactly. It only chooses training examples: the model a
run produces, evaluates and saves is config.model's alone.
"""

from typing import Callable

import jax
import ml_collections
import numpy as np
import optax

from resnet_jax import models, optim


def default_config() -> ml_collections.ConfigDict:
  """config.selection, with defaults (off)."""
  config = ml_collections.ConfigDict()
  config.fraction = 0.0  # 0: every example; else the hardest fraction of each batch, in (0, 1)
  config.proxy_widths = (32, 64, 64)  # the proxy: config.model's net at these widths
  return config


def enabled(config) -> bool:
  return config.selection.fraction > 0


def examples_per_step(config) -> int:
  """The examples each train step trains the model on: the batch, or its selected part."""
  if not enabled(config):
    return config.batch_size
  return max(1, round(config.batch_size * config.selection.fraction))


def describe(config, model: models.Model, image_shape: models.ImageShape) -> str:
  """The run's log line on its selection."""
  proxy = models.count_params(proxy_model(config, model), image_shape)
  return (f"each step trains on the {examples_per_step(config)} of its {config.batch_size} "
          f"examples that a proxy of {proxy:,} parameters (config.selection) finds hardest, "
          f"and the proxy learns on its own hardest ones")


def proxy_model(config, model: models.Model) -> models.Model:
  """The proxy: `model` at config.selection.proxy_widths."""
  return model.clone(widths=tuple(config.selection.proxy_widths))


def fit_to_data(config, model: models.Model, proxy: dict,
                train_inputs: Callable[[int], np.ndarray]) -> dict:
  """The proxy state with its family's data-fitted initialisation (FastResNet's whitening),
  run where the model's is, before a fresh run's first step."""
  variables = {k: v for k, v in proxy.items() if k != "opt_state"}
  return {**proxy, **models.fit_to_data(proxy_model(config, model), variables, train_inputs)}


class Selector:
  """The proxy of a config's model: its net and optimizer, its initial state, and the
  selection each train step runs (inside the jitted step)."""

  def __init__(self, config, model: models.Model, steps_per_epoch: float,
               loss: Callable[[jax.Array, jax.Array], jax.Array]):
    """`loss`: (logits, labels) -> per-example loss, the train step's."""
    self.keep = examples_per_step(config)
    self.loss = loss
    self.model = proxy_model(config, model)
    self.tx, _ = optim.create_optimizer(
        config.optimizer, steps_per_epoch, config.num_epochs,
        batch_size=self.keep, param_labels=models.family_of(model).param_labels)

  def init(self, rng: jax.Array, image_shape: models.ImageShape) -> dict:
    """The proxy's state: {"params", "batch_stats", ["constants"], "opt_state"}."""
    variables = models.init_variables(self.model, rng, image_shape)
    return {**variables, "opt_state": self.tx.init(variables["params"])}

  def select(self, proxy: dict, batch: dict) -> tuple[dict, dict]:
    """(the proxy after one update on them, the batch's `keep` examples of highest proxy
    loss); a non-finite proxy gradient leaves the proxy as it was."""
    variables = {k: v for k, v in proxy.items() if k != "opt_state"}

    def hardest(params):
      logits, updates = self.model.apply({**variables, "params": params}, batch["image"],
                                         train=True, mutable=["batch_stats"])
      loss = self.loss(logits, batch["label"])
      chosen = jax.lax.top_k(loss, self.keep)[1]
      return loss[chosen].mean(), (chosen, updates["batch_stats"])

    grads, (chosen, batch_stats) = jax.grad(hardest, has_aux=True)(proxy["params"])
    updates, opt_state = self.tx.update(grads, proxy["opt_state"], proxy["params"])
    learned = {**proxy, "params": optax.apply_updates(proxy["params"], updates),
               "opt_state": opt_state, "batch_stats": batch_stats}
    proxy = optax.tree_utils.tree_where(optim.all_finite(grads), learned, proxy)
    return proxy, jax.tree.map(lambda x: x[chosen], batch)
