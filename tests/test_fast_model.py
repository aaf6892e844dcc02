"""The compact FastResNet family: presets, whitening, dirac init, its optimizer groups."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fast_wide_muon
from resnet_jax import checkpoints, evaluate, model_setup, models, optim, summary, train
from resnet_jax.data import datasets, sources
from resnet_jax.models import fast_resnet, layers
from tests.conftest import (CIFAR10_IMAGE, preempted_then_resumed, refused_leaving_run_as_is,
                            untimed)
from tests.conftest import smoke_config as _smoke


@pytest.mark.parametrize("name,count", [("fast", 1_971_352), ("fast_large", 4_604_440),
                                        ("frontier", 4_844_152)])
def test_presets_have_their_parameter_counts_within_the_budget(name, count):
  model = models.get_model(name)
  assert models.count_params(model, CIFAR10_IMAGE) == count <= model.max_params
  assert f"Total params: {count:,}" in summary.format_table(model, CIFAR10_IMAGE)
  with pytest.raises(models.ParamBudgetError, match="over its budget"):
    models.check_budget(models.get_model(name, widths=(256, 512, 1024)), CIFAR10_IMAGE)


def test_the_widened_session_recipe_spends_the_budget_its_docstring_says():
  model = model_setup.build_model(fast_wide_muon.get_config(), "float32")
  assert models.count_params(model, CIFAR10_IMAGE) == 4_982_360 <= model.max_params == 5_000_000


def _smooth_images(n: int) -> np.ndarray:
  """Images whose neighbouring pixels and channels correlate, as natural images' do."""
  noise = np.random.default_rng(0).normal(size=(n, 33, 33, 1)).astype(np.float32)
  base = (noise[:, 1:, 1:] + noise[:, :-1, 1:] + noise[:, 1:, :-1]) / 3
  colour = np.random.default_rng(1).normal(size=(n, 32, 32, 3)).astype(np.float32)
  return base + 0.3 * colour


def test_whitened_patches_have_identity_covariance_where_eigenvalues_exceed_eps():
  images = _smooth_images(300)
  eps = 5e-4
  kernel = fast_resnet.whitening_kernel(images, 2, eps)
  assert kernel.shape == (2, 2, 3, 24)
  np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])  # and their negations
  out = jax.lax.conv_general_dilated(images, kernel, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  features = np.asarray(out[..., :12], np.float64).reshape(-1, 12)
  covariance = features.T @ features / len(features)
  patches = np.stack([images[:, i:31 + i, j:31 + j] for i in (0, 1) for j in (0, 1)], 3)
  eigenvalues = np.linalg.eigvalsh(np.cov(patches.reshape(-1, 12).T, bias=True))[::-1]
  well_above = eigenvalues > 100 * eps
  assert well_above.sum() >= 6  # the test means something
  np.testing.assert_allclose(np.diag(covariance)[well_above], 1.0, atol=0.02)
  off_diagonal = covariance - np.diag(np.diag(covariance))
  assert np.abs(off_diagonal).max() < 1e-3


def test_group_convolutions_start_dirac_as_airbench_initialises_them():
  variables = models.init_variables(models.get_model("fast", widths=(8, 16, 16)),
                                    jax.random.key(0), CIFAR10_IMAGE)
  group = variables["params"]["group2"]
  second = np.asarray(group["conv2"]["kernel"])  # 16 -> 16: all the identity
  expected = np.zeros_like(second)
  expected[1, 1] = np.eye(16)
  np.testing.assert_array_equal(second, expected)
  first = np.asarray(group["conv1"]["kernel"])  # 8 -> 16: 8 identity filters, 8 random
  expected = np.zeros((3, 3, 8, 8), np.float32)
  expected[1, 1] = np.eye(8)
  np.testing.assert_array_equal(first[..., :8], expected)
  bound = 1 / np.sqrt(3 * 3 * 8)  # PyTorch's default U(+-1/sqrt(fan_in))
  assert np.abs(first[..., 8:]).max() <= bound and first[..., 8:].std() > bound / 3
  assert "scale" not in group["bn1"]  # BatchNorm keeps only its bias


def test_groups_add_their_first_half_back_unless_shortcuts_are_off():
  """shortcuts=False is airbench's plain group: gelu(bn2(conv2(h))) alone, h its first half;
  with them the group is h plus branch_weight times that branch."""
  variables = models.init_variables(models.get_model("fast", widths=(4, 8, 8)), jax.random.key(0),
                                    CIFAR10_IMAGE)
  whiten = variables["constants"]["whiten"]  # zeros until fitted: give the groups an input
  whiten["kernel"] = jax.random.normal(jax.random.key(1), whiten["kernel"].shape)
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  group1 = {}
  for shortcuts, branch_weight in ((True, 1.0), (True, 2.5), (False, 1.0)):
    model = models.get_model("fast", widths=(4, 8, 8), shortcuts=shortcuts,
                             branch_weight=branch_weight)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True)
    group1[shortcuts, branch_weight] = state["intermediates"]["group1"]
  first_half = layers.ACTIVATIONS["gelu"](group1[True, 1.0]["bn1"]["__call__"][0])
  branch = group1[False, 1.0]["__call__"][0]
  assert float(jnp.abs(first_half).max()) > 0.1  # the test means something
  for branch_weight in (1.0, 2.5):
    np.testing.assert_allclose(group1[True, branch_weight]["__call__"][0],
                               first_half + branch_weight * branch, atol=1e-5)


def test_a_deeper_branch_chains_its_convolutions_behind_the_same_identity_path():
  """branch_depth=2 (airbench96's group): h + gelu(bn3(conv3(gelu(bn2(conv2(h)))))), the
  third convolution dirac like the second."""
  model = models.get_model("fast", widths=(4, 8, 8), branch_depth=2)
  variables = models.init_variables(model, jax.random.key(0), CIFAR10_IMAGE)
  whiten = variables["constants"]["whiten"]
  whiten["kernel"] = jax.random.normal(jax.random.key(1), whiten["kernel"].shape)
  group = variables["params"]["group1"]
  assert sorted(group) == ["bn1", "bn2", "bn3", "conv1", "conv2", "conv3"]
  np.testing.assert_array_equal(group["conv3"]["kernel"], group["conv2"]["kernel"])  # dirac
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  _, state = model.apply(variables, x, train=False, capture_intermediates=True)
  inside = state["intermediates"]["group1"]
  gelu = layers.ACTIVATIONS["gelu"]
  first_half = gelu(inside["bn1"]["__call__"][0])
  assert float(jnp.abs(first_half).max()) > 0.1
  conv = lambda name, h: jax.lax.conv_general_dilated(
      h, group[name]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(inside["conv2"]["__call__"][0], conv("conv2", first_half),
                             atol=1e-5)
  np.testing.assert_allclose(inside["conv3"]["__call__"][0],
                             conv("conv3", gelu(inside["bn2"]["__call__"][0])), atol=1e-5)
  branch = gelu(inside["bn3"]["__call__"][0])
  np.testing.assert_allclose(inside["__call__"][0], first_half + branch, atol=1e-5)


def test_muon_takes_every_group_convolution_and_nothing_else():
  """With a zero gradient Muon's step is only its renormalisation to |kernel| = sqrt(c_out):
  exactly the kernels it owns change."""
  params = models.init_variables(models.get_model("fast", widths=(8, 16, 16)),
                                 jax.random.key(0), CIFAR10_IMAGE)["params"]
  # Dirac kernels with c_in >= c_out already have norm sqrt(c_out): move every weight.
  params = jax.tree.map(lambda p: 2 * p + 0.5, params)
  config = _smoke(model="fast", **{"optimizer.name": "sgd", "optimizer.weight_decay": 0.0,
                     "optimizer.groups.bn_bias.lr_multiplier": 64.0,
                     "optimizer.groups.whiten_bias.epochs": 1.0, "optimizer.muon.enabled": True})
  tx, _ = optim.create_optimizer(config.optimizer, 10, 1, param_labels=fast_resnet.param_labels)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  after = optax.apply_updates(params, updates)
  changed = {"/".join(k.key for k in path): np.asarray(new) for (path, new), old in
             zip(jax.tree_util.tree_leaves_with_path(after), jax.tree.leaves(params))
             if not np.array_equal(new, old)}
  assert set(changed) == {f"group{i}/conv{j}/kernel" for i in (1, 2, 3) for j in (1, 2)}
  for kernel in changed.values():
    np.testing.assert_allclose(np.linalg.norm(kernel), np.sqrt(kernel.shape[-1]), rtol=1e-5)


def _fast_smoke(**changes):
  return _smoke(model="fast", **{"model.widths": (8, 16, 16), **changes})


@pytest.mark.parametrize("pipeline", ["tfdata", "device"])
def test_whitening_is_fitted_once_stored_and_never_refitted_on_resume(tmp_path, monkeypatch,
                                                                       pipeline):
  config = _fast_smoke(num_epochs=1, **{"data.pipeline": pipeline,
                                        "optimizer.groups.whiten_bias.epochs": 1.0})
  state, _ = train.train_and_evaluate(config, str(tmp_path))
  images, _ = sources.load_split(config.data, config.data.train_split)
  expected = fast_resnet.whitening_kernel(
      datasets.normalize_pixels(images[:5000], datasets.normalization(config.data)))
  np.testing.assert_allclose(np.asarray(state.constants["whiten"]["kernel"]), expected,
                             rtol=1e-6)
  first_bias = np.asarray(state.params["whiten"]["bias"])
  assert np.abs(first_bias).max() > 0  # trained during epoch 1

  def refit(*args, **kwargs):
    raise AssertionError("the whitening filters were fitted again on resume")

  monkeypatch.setattr(fast_resnet, "whitening_kernel", refit)
  config.num_epochs = 2
  state, history = train.train_and_evaluate(config, str(tmp_path))
  assert len(history) == 2
  np.testing.assert_array_equal(np.asarray(state.constants["whiten"]["kernel"]), expected)
  # Its bias trained for groups.whiten_bias.epochs=1 only; everything else went on.
  np.testing.assert_array_equal(np.asarray(state.params["whiten"]["bias"]), first_bias)
  with checkpoints.reading_manager(str(tmp_path)) as manager:
    before = checkpoints.restore_variables(manager, 16, models.get_model("fast", widths=(8, 16, 16)),
                                           checkpoints.read_meta(manager, 16), CIFAR10_IMAGE)
  assert np.abs(np.asarray(before["params"]["fc"]["kernel"])
                - np.asarray(state.params["fc"]["kernel"])).max() > 0


def test_lookahead_ema_and_muon_train_resume_exactly_and_eval_uses_the_ema(tmp_path):
  """Lookahead: training ends on its average. The EMA (config.optimizer.ema_decay): each
  epoch reports it and the raw weights beside it; the checkpoint's "model" item carries it;
  --mode eval and predict use it and say so. Both resume exactly from a preemption, and a
  config with other weight averages cannot resume the run and changes nothing."""
  config = _fast_smoke(num_epochs=2, **{"optimizer.lookahead_every": 5,
                                        "optimizer.ema_decay": 0.9,
                                        "optimizer.name": "sgd", "optimizer.momentum": 0.85,
                                        "optimizer.muon.enabled": True})
  workdir = str(tmp_path / "whole")
  state, history = train.train_and_evaluate(config, workdir)
  for a, b in zip(jax.tree.leaves({"params": state.params, "batch_stats": state.batch_stats}),
                  jax.tree.leaves(state.averages["lookahead"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the last step's average
  assert {"eval_raw_accuracy", "eval_raw_loss"} <= set(history[-1])
  assert history[-1]["eval_loss"] != history[-1]["eval_raw_loss"]
  resumed, resumed_history = preempted_then_resumed(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(jax.device_get((resumed.params, resumed.averages))),
                  jax.tree.leaves(jax.device_get((state.params, state.averages)))):
    np.testing.assert_array_equal(a, b)
  assert untimed(resumed_history) == untimed(history)

  metrics = evaluate.evaluate_checkpoint(config, workdir)
  assert metrics["weights"] == "the weights' ema average"
  assert metrics["accuracy"] == pytest.approx(history[-1]["eval_accuracy"], abs=1e-6)
  _, variables, _ = checkpoints.restore_model(workdir, CIFAR10_IMAGE)
  assert sorted(variables) == ["batch_stats", "constants", "params"]
  for a, b in zip(jax.tree.leaves((variables["params"], variables["batch_stats"])),
                  jax.tree.leaves((state.averages["ema"]["params"],
                                   state.averages["ema"]["batch_stats"]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  images, _ = sources.load_synthetic("test[:8]", {"train": 512, "test": 256})
  with open(tmp_path / "in.pkl", "wb") as f:
    pickle.dump({b"data": images}, f)
  result = evaluate.predict(config, workdir, str(tmp_path / "in.pkl"), str(tmp_path / "out.csv"))
  assert result["weights"] == "the weights' ema average" and result["count"] == 8

  config.optimizer.ema_decay, config.num_epochs = 0.0, 3
  refused_leaving_run_as_is(config, workdir, checkpoints.CheckpointError,
                            r"trained with weight averages \['ema', 'lookahead'\], this config "
                            r"keeps \['lookahead'\]")
