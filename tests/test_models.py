"""The seed's family: parameter counts, budget, fields, dtypes, initialisation; BatchNorm's
hand-written gradient; the CPU fusion barriers, applied from outside the models."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models, xla_cpu
from resnet_jax.models import layers
from tests.conftest import CIFAR10_IMAGE, DEEP_EVERY_KIND_OF_BLOCK, smoke_config


@pytest.mark.parametrize("name,count", [("shallow", 2_777_674), ("deep", 4_999_689)])
def test_seed_parameter_counts_are_exact(name, count):
  assert models.count_params(models.get_model(name), CIFAR10_IMAGE) == count


# Each preset's structure (stages, pools, dropout) at a fraction of its width: what applying
# it proves does not depend on the widths, which the parameter counts check, nor on how
# often the deep preset repeats a block (the parameter-count test traces all 20).
NARROW = dict(stem_width=8, stage_widths=(8, 8, 16, 16), stage_blocks=DEEP_EVERY_KIND_OF_BLOCK)
SHALLOW_NARROW = dict(stem_width=8, stage_widths=(8, 8, 16))  # its 2 blocks a stage kept


def _jitted_apply(model):
  """model.apply as one compiled program, as training and evaluation run it: unjitted, jax
  compiles each op on its own, which took these tests twice as long."""
  return jax.jit(model.apply, static_argnames=("train", "mutable", "capture_intermediates"))


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_apply_returns_float32_logits_and_fills_both_collections(name):
  model = models.get_model(name, **(SHALLOW_NARROW if name == "shallow" else NARROW))
  variables = models.init_variables(model, jax.random.key(0), CIFAR10_IMAGE)
  assert set(variables) == {"params", "batch_stats"}
  images = jnp.ones((2, 32, 32, 3))
  apply = _jitted_apply(model)
  logits = apply(variables, images, train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  logits, updates = apply(variables, images, train=True, mutable=("batch_stats",),
                          rngs={"dropout": jax.random.key(1)})
  assert logits.shape == (2, 10) and set(updates) == {"batch_stats"}


def test_over_budget_model_fails_its_budget_check_with_count_and_budget():
  with pytest.raises(models.ParamBudgetError, match=r"4,999,689.*max_params=4,000,000"):
    models.check_budget(models.get_model("deep", max_params=4_000_000), CIFAR10_IMAGE)
  # The report's 5-block stage 4 is over the 5M budget: 8,541,705 parameters.
  with pytest.raises(models.ParamBudgetError, match="8,541,705"):
    models.check_budget(models.get_model("deep", stage_blocks=(3, 4, 11, 5)), CIFAR10_IMAGE)
  assert models.check_budget(models.get_model("deep"), CIFAR10_IMAGE) == 4_999_689


@pytest.mark.parametrize("overrides,message", [
    (dict(stage_blocks=(2, 2)), r"stage_blocks=\(2, 2\) needs one entry per stage"),
    (dict(inner_activation="swish"), r"inner_activation='swish' is not one of"),
    (dict(mid_pool_type="median", mid_pool_after_stage=1, mid_pool_size=4),
     r"mid_pool_type='median'"),
    (dict(mid_pool_after_stage=7), r"mid_pool_after_stage=7 is not a stage"),
    (dict(dtype="int8"), r"dtype='int8' is not one of"),
    (dict(stem_dropout=1.5), r"dropout rate 1.5"),
    (dict(widths=3), r"unknown model field\(s\) \['widths'\]"),
])
def test_bad_fields_name_the_field_and_value(overrides, message):
  with pytest.raises(ValueError, match=message):
    models.get_model("shallow", **overrides)


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match=r"'medium' is not one of \['deep', 'shallow', 'fast', "
                                       r"'fast_large', 'frontier'\]"):
    models.get_model("medium")


def test_bfloat16_computes_in_bf16_with_float32_parameters():
  model = models.get_model("shallow", dtype="bfloat16", stage_widths=(8, 16, 32), stem_width=8)
  variables = models.init_variables(model, jax.random.key(0), CIFAR10_IMAGE)
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  apply = _jitted_apply(model)
  logits, state = apply(variables, jnp.ones((2, 32, 32, 3)), train=False,
                        capture_intermediates=True, mutable=("intermediates",))
  conv_out = state["intermediates"]["conv1"]["__call__"][0]
  assert conv_out.dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32


def test_torch_initialisation_bounds():
  """Conv/linear kernels U(+-1/sqrt(fan_in)); linear bias U(+-1/sqrt(fan_in)); BN 1 and 0."""
  params = models.init_variables(models.get_model("shallow"), jax.random.key(0),
                                 CIFAR10_IMAGE)["params"]
  kernel = np.asarray(params["layer3_1"]["conv2"]["kernel"])  # fan_in 3*3*256
  bound = 1 / math.sqrt(3 * 3 * 256)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  np.testing.assert_allclose(kernel.var(), bound**2 / 3, rtol=0.02)
  fc_bias = np.asarray(params["fc"]["bias"])
  assert np.abs(fc_bias).max() <= 1 / 16 and np.abs(fc_bias).max() > 0
  np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["bn1"]["bias"], 0.0)


def test_he_normal_initialisation_is_selectable():
  params = models.init_variables(models.get_model("shallow", kernel_init="he_normal"),
                                 jax.random.key(0), CIFAR10_IMAGE)["params"]
  kernel = np.asarray(params["layer3_1"]["conv2"]["kernel"])  # fan_out 3*3*256
  np.testing.assert_allclose(kernel.std(), math.sqrt(2 / (3 * 3 * 256)), rtol=0.02)


@pytest.mark.parametrize("name,fields", [("shallow", SHALLOW_NARROW),
                                         ("deep", NARROW), ("fast", {"widths": (8, 16, 16)})])
def test_initialisation_is_one_program_with_the_values_of_eager_init(name, fields):
  """init_variables compiles one program (at xla_cpu.init_options()) instead of an eager
  op per parameter shape; the values are bitwise flax's eager model.init."""
  model = models.get_model(name, **fields)
  rng = jax.random.PRNGKey(3)
  jitted = models.init_variables(model, rng, CIFAR10_IMAGE)
  eager = model.init(rng, jnp.zeros((1, *CIFAR10_IMAGE)), train=False)
  assert jax.tree.structure(jitted) == jax.tree.structure(eager)
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_array_equal(a, b)


def test_dropout_is_active_only_in_training():
  model = models.get_model("deep", **NARROW)
  variables = models.init_variables(model, jax.random.key(0), CIFAR10_IMAGE)
  images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  apply = _jitted_apply(model)
  evals = [apply(variables, images, train=False) for _ in range(2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  trains = [apply(variables, images, train=True, mutable=("batch_stats",),
                  rngs={"dropout": jax.random.key(k)})[0] for k in (1, 2)]
  assert np.abs(np.asarray(trains[0] - trains[1])).max() > 1e-4


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_model_config_round_trip(name):
  model = models.get_model(name, num_classes=7)
  assert models.from_config(models.model_config(name, model)) == model


def _reference_batch_norm(x, scale, bias, epsilon=1e-5):
  """Training-mode BN as plain jnp, for autodiff to differentiate."""
  mean = x.mean((0, 1, 2))
  var = jnp.square(x - mean).mean((0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


def test_batch_norm_custom_gradient_matches_autodiff():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(3.0, 2.0, size=(4, 6, 6, 8)), jnp.float32)
  scale = jnp.asarray(rng.normal(size=8), jnp.float32)
  bias = jnp.asarray(rng.normal(size=8), jnp.float32)
  weights = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in (x.shape, (8,), (8,))]

  def loss(fn, *args):  # every output gets a cotangent, the statistics included
    return sum((out * w).sum() for out, w in zip(fn(*args), weights))

  ours = jax.grad(functools.partial(loss, lambda *a: layers.batch_norm_train(*a, 1e-5)),
                  (0, 1, 2))(x, scale, bias)
  reference = jax.grad(functools.partial(loss, _reference_batch_norm), (0, 1, 2))(x, scale, bias)
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max(), rtol=0)
  outputs = layers.batch_norm_train(x, scale, bias, 1e-5)
  for a, b in zip(outputs, _reference_batch_norm(x, scale, bias)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,widths", [("shallow", dict(stem_width=8, stage_widths=(8, 16, 32))),
                                          ("fast", dict(widths=(8, 16, 16)))])
def test_fusion_barriers_change_the_compiled_step_not_the_results(name, widths):
  """Each family's blocks end in a barrier inside xla_cpu.fusion_barriers, and nowhere else."""
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  model = models.get_model(name, **widths)
  variables = models.init_variables(model, jax.random.key(0), CIFAR10_IMAGE)
  blocks = models.family_of(model).blocks
  results = []
  for barriers in (False, True):
    config = smoke_config(**{"cpu.fusion_barriers": barriers})

    def loss(params, config=config):
      with xla_cpu.fusion_barriers(config, blocks):
        logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                      mutable=["batch_stats"])
      return logits.sum(), (logits, updates)

    step = jax.jit(jax.grad(loss, has_aux=True))
    hlo = step.lower(variables["params"]).compile().as_text()
    # One conditional per block output, forward and backward (shallow: 6 blocks, fast: 3).
    assert hlo.count("conditional(") == (2 * (6 if name == "shallow" else 3) if barriers else 0)
    results.append(step(variables["params"]))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(results[0]),
                          jax.tree.leaves(results[1])):
    # Float32 rounding: XLA may order a fused sum otherwise (1.6e-6 seen on jax 0.7.2).
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
  # Inference does not pay for them: only the train step enters the context.
  hlo = jax.jit(lambda v: model.apply(v, images, train=False)).lower(variables).compile().as_text()
  assert "conditional(" not in hlo


def test_every_family_names_its_blocks_and_a_preset():
  for family in models.FAMILIES:
    assert family.blocks and family.presets
    assert all(issubclass(block, nn.Module) for block in family.blocks)


def test_fusion_barriers_are_not_part_of_the_saved_description():
  """They are a CPU setting (config.cpu.fusion_barriers), not a model field."""
  assert "fusion_barriers" not in models.model_config("shallow", models.get_model("shallow"))
  with pytest.raises(ValueError, match=r"unknown model field\(s\) \['fusion_barriers'\]"):
    models.get_model("shallow", fusion_barriers=True)

