"""Training on each batch's hardest examples as a proxy ranks them (resnet_jax/selection.py)."""

import jax
import numpy as np

from resnet_jax import checkpoints, models, selection, train
from resnet_jax.data import datasets, sources
from resnet_jax.models import fast_resnet
from tests.conftest import (CIFAR10_IMAGE, preempted_then_resumed, refused_leaving_run_as_is,
                            untimed)
from tests.conftest import smoke_config as _smoke


def _config(**changes):
  return _smoke(model="fast", **{"model.widths": (8, 16, 16), "selection.fraction": 0.5,
                                 "selection.proxy_widths": (4, 8, 8), **changes})


def test_each_step_keeps_the_examples_of_highest_proxy_loss_and_the_proxy_learns_on_them():
  config = _config(label_smoothing=0.2)
  model = models.get_model("fast", widths=(8, 16, 16))
  selector = train.make_selector(config, model, total_steps=16 * config.num_epochs)
  proxy = selector.init(jax.random.PRNGKey(1), CIFAR10_IMAGE)
  images, labels = sources.load_synthetic("train[:32]", {"train": 512, "test": 256})
  inputs = datasets.normalize_pixels(images, datasets.normalization(config.data))
  batch = {"image": inputs, "label": labels, "index": np.arange(32)}
  proxy = selection.fit_to_data(config, model, proxy, lambda n: inputs[:n])  # its whitening
  select = jax.jit(selector.select)
  for step in range(3):
    logits = selector.model.apply({k: v for k, v in proxy.items() if k != "opt_state"},
                                  batch["image"], train=True, mutable=["batch_stats"])[0]
    loss = np.asarray(train.cross_entropy(logits, batch["label"], 0.2))
    new, chosen = select(proxy, batch)
    hardest = np.argsort(-loss, kind="stable")[:16]
    assert sorted(np.asarray(chosen["index"]).tolist()) == sorted(hardest.tolist())
    np.testing.assert_array_equal(np.asarray(chosen["image"]), batch["image"][chosen["index"]])
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new["params"]),
                                                      jax.tree.leaves(proxy["params"]))]
    assert all(moved), step
    proxy = new


def test_a_run_with_a_proxy_fits_it_resumes_exactly_and_refuses_a_config_without(tmp_path):
  """The proxy's whitening is fitted as the model's; a preempted run resumes to the same
  weights, proxy and history; a config without selection cannot resume it and changes
  nothing."""
  config = _config(num_epochs=2)
  workdir = str(tmp_path / "whole")
  state, history = train.train_and_evaluate(config, workdir)
  images, _ = sources.load_split(config.data, config.data.train_split)
  np.testing.assert_allclose(
      np.asarray(state.proxy["constants"]["whiten"]["kernel"]),
      fast_resnet.whitening_kernel(datasets.normalize_pixels(
          images[:5000], datasets.normalization(config.data))),
      rtol=1e-6)
  resumed, resumed_history = preempted_then_resumed(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(jax.device_get((resumed.params, resumed.proxy))),
                  jax.tree.leaves(jax.device_get((state.params, state.proxy)))):
    np.testing.assert_array_equal(a, b)
  assert untimed(resumed_history) == untimed(history)

  config.selection.fraction, config.num_epochs = 0.0, 3
  refused_leaving_run_as_is(config, workdir, checkpoints.CheckpointError,
                            r"was trained with a proxy choosing its examples, this config has "
                            r"none \(config.selection.fraction\)")


def test_the_optimizer_counts_the_examples_the_model_trains_on():
  assert selection.examples_per_step(_config()) == 16
  assert selection.examples_per_step(_config(**{"selection.fraction": 0.0})) == 32
