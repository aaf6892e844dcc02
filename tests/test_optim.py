"""Optimizers against PyTorch, gradient accumulation, the once-per-epoch plateau."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from resnet_jax import default_config, optim
from resnet_jax.models import fast_resnet, resnet
from tests import airbench_reference as airbench


def _opt_config(**changes):
  """config.optimizer with FastResNet's groups and changes, dotted for a group's settings
  (_opt_config(**{"groups.bn_bias.lr_multiplier": 64.0}))."""
  config = default_config.get_config("fast").optimizer
  for key, value in changes.items():
    parent, _, leaf = key.rpartition(".")
    default_config.lookup(config, parent)[leaf] = value
  return config


def _problem():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 5)).astype(np.float32)
  y = rng.normal(size=(64, 3)).astype(np.float32)
  w = rng.normal(size=(5, 3)).astype(np.float32)
  return x, y, w


def _optax_fit(steps: int, **opt_changes) -> np.ndarray:
  """The least-squares problem's kernel after `steps` updates of our optimizer."""
  x, y, w0 = _problem()
  tx, _ = optim.create_optimizer(_opt_config(**opt_changes), 10, 1)
  params = {"kernel": jnp.asarray(w0)}
  state = tx.init(params)
  loss = lambda p: jnp.mean((x @ p["kernel"] - y) ** 2)
  for _ in range(steps):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params["kernel"])


def _torch_fit(steps: int, make_optimizer) -> np.ndarray:
  """The same problem with a torch.optim optimizer."""
  x, y, w0 = _problem()
  w = torch.tensor(w0, requires_grad=True)
  opt = make_optimizer([w])
  for _ in range(steps):
    opt.zero_grad()
    torch.mean((torch.from_numpy(x) @ w - torch.from_numpy(y)) ** 2).backward()
    opt.step()
  return w.detach().numpy()


def test_coupled_l2_adam_matches_torch_adam_weight_decay():
  theirs = _torch_fit(20, lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-1))
  ours = _optax_fit(20, name="adam", learning_rate=1e-2, weight_decay=1e-1)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # Decoupled AdamW is a different optimizer: it must not coincide.
  adamw = _optax_fit(20, name="adamw", learning_rate=1e-2, weight_decay=1e-1)
  assert np.abs(adamw - theirs).max() > 1e-3


def test_sgd_nesterov_matches_torch():
  theirs = _torch_fit(10, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                    weight_decay=1e-2))
  ours = _optax_fit(10, name="sgd", learning_rate=0.05, momentum=0.9, nesterov=True,
                    weight_decay=1e-2)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_accumulating_k_micro_batches_equals_one_step_on_their_concatenation():
  x, y, w0 = _problem()
  loss = lambda p, xb, yb: jnp.mean((xb @ p["kernel"] - yb) ** 2)
  k = 4
  accumulated, _ = optim.create_optimizer(_opt_config(accumulation_steps=k), 10, 1)
  single, _ = optim.create_optimizer(_opt_config(), 10, 1)
  pa = ps = {"kernel": jnp.asarray(w0)}
  sa, ss = accumulated.init(pa), single.init(ps)
  for step in range(2):  # two full updates
    for xb, yb in zip(np.split(x, k), np.split(y, k)):
      updates, sa = accumulated.update(jax.grad(loss)(pa, xb, yb), sa, pa)
      pa = optax.apply_updates(pa, updates)
    updates, ss = single.update(jax.grad(loss)(ps, x, y), ss, ps)
    ps = optax.apply_updates(ps, updates)
    np.testing.assert_allclose(pa["kernel"], ps["kernel"], atol=1e-6, err_msg=f"update {step}")


@pytest.mark.parametrize("patience,cooldown", [(2, 0), (1, 0), (2, 1)])
def test_plateau_matches_torch_reduce_lr_on_plateau(patience, cooldown):
  values = [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
  plateau = optim.Plateau(factor=0.1, patience=patience, cooldown=cooldown)
  state = plateau.init()
  w = torch.zeros(1, requires_grad=True)
  opt = torch.optim.SGD([w], lr=1.0)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=patience,
                                                         cooldown=cooldown)
  ours, theirs = [], []
  for v in values:
    state = plateau.update(state, v)
    scheduler.step(v)
    ours.append(float(state.scale))
    theirs.append(opt.param_groups[0]["lr"])
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_plateau_lowers_the_lr_after_patience_flat_epochs_and_not_before():
  plateau = optim.Plateau(factor=0.5, patience=3)
  state = plateau.update(plateau.init(), 1.0)  # the first epoch sets the best value
  for _ in range(3):  # three flat epochs: patience not yet exceeded
    state = plateau.update(state, 1.0)
    assert float(state.scale) == 1.0
  state = plateau.update(state, 1.0)  # the fourth flat epoch exceeds it
  assert float(state.scale) == 0.5


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_schedules_start_peak_and_end_where_expected(schedule):
  """40 updates: warm-ups of 1 epoch (10 updates); one_cycle peaks at optax's 30%."""
  config = _opt_config(schedule=schedule, learning_rate=0.1, step_epochs=2, gamma=0.5,
                       warmup_epochs=1.0)
  _, lr = optim.create_optimizer(config, updates_per_epoch=10, num_epochs=4)
  values = np.array([float(lr(i)) for i in range(40)])
  assert values.max() == pytest.approx(0.1, rel=1e-3)
  if schedule == "constant":
    np.testing.assert_allclose(values, 0.1)
  elif schedule == "step":
    np.testing.assert_allclose(values[[0, 19, 20, 39]], [0.1, 0.1, 0.05, 0.05])
  elif schedule == "triangle":  # from 0.2x the peak, down towards 0.07x at update 40
    assert values.argmax() == 10
    np.testing.assert_allclose(values[[0, 10, 39]], [0.02, 0.1, 0.1 * (1 - 0.93 * 29 / 30)],
                               rtol=1e-5)
  else:
    assert values.argmax() == {"warmup_cosine": 10, "one_cycle": 12}[schedule]
    assert values[0] < 0.1 * 0.1 and values[-1] < 0.1 * 0.05


@pytest.mark.parametrize("schedule", ["triangle", "warmup_cosine"])
def test_a_warm_up_as_long_as_the_run_is_named(schedule):
  """A warm-up set in epochs outlasts a run shortened by --config.num_epochs: 2.3 epochs of
  1 would rise all run and never decay, which the schedule's clamp hid (train logs this)."""
  config = _opt_config(schedule=schedule, warmup_epochs=2.3)
  assert optim.warmup_problem(config, num_epochs=3) is None
  assert optim.warmup_problem(config, num_epochs=1) == (
      "config.optimizer.warmup_epochs=2.3 is not below config.num_epochs=1: the learning rate "
      "rises all run and never decays; shorten the warm-up with the run")
  assert optim.warmup_problem(_opt_config(schedule="constant", warmup_epochs=2.3), 1) is None


def test_kernels_only_decay_leaves_biases_and_bn_alone():
  tx, _ = optim.create_optimizer(_opt_config(name="sgd", momentum=0.0, weight_decay=1.0,
                                             decay="kernels", learning_rate=1.0), 10, 1)
  params = {"conv": {"kernel": jnp.ones(3)}, "bn": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], -1.0)
  np.testing.assert_allclose(updates["bn"]["scale"], 0.0)
  np.testing.assert_allclose(updates["bn"]["bias"], 0.0)


def test_per_example_sgd_with_bn_bias_multiplier_and_triangle_matches_airbench_in_torch():
  """airbench's optimizer as it writes it in PyTorch: summed loss, lr and decay per 1024
  examples divided by 1 + 1 / (1 - momentum), BatchNorm biases at 64 x the lr with the
  same decay per step, Nesterov, and its np.interp triangle as a LambdaLR."""
  lr, wd, momentum, batch, steps = 11.5, 0.0153, 0.85, 64, 6
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, 5)).astype(np.float32)
  y = rng.normal(size=(batch, 3)).astype(np.float32)
  w0, b0 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
  # The loss / 16 keeps the biases' steps (64 x the rate, on a summed loss) stable: diverging
  # weights (millions after 6 steps) amplify float rounding past any tolerance.
  scale = 1 / 16

  kilostep = 1024 * (1 + 1 / (1 - momentum))
  w, b = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
  lr_t, wd_t = lr / kilostep, wd * batch / kilostep
  opt = torch.optim.SGD([{"params": [b], "lr": 64 * lr_t, "weight_decay": wd_t / (64 * lr_t)},
                         {"params": [w], "lr": lr_t, "weight_decay": wd_t / lr_t}],
                        momentum=momentum, nesterov=True)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: np.interp(k, [0, 2, 10], [0.2, 1, 0.07]))
  for _ in range(steps):
    opt.zero_grad()
    (scale * ((torch.from_numpy(x) @ w + b - torch.from_numpy(y)) ** 2).sum()).backward()
    opt.step()
    sched.step()

  config = _opt_config(name="sgd", learning_rate=lr, weight_decay=wd, momentum=momentum,
                       nesterov=True, per_examples=1024,
                       **{"groups.bn_bias.lr_multiplier": 64.0},
                       schedule="triangle", warmup_epochs=0.2)
  tx, schedule = optim.create_optimizer(config, 10, 1, batch_size=batch,
                                        param_labels=resnet.param_labels)
  params = {"bn1": {"bias": jnp.asarray(b0)}, "fc": {"kernel": jnp.asarray(w0)}}
  state = tx.init(params)
  loss = lambda p: scale * jnp.mean(((x @ p["fc"]["kernel"] + p["bn1"]["bias"] - y) ** 2).sum(-1))
  for _ in range(steps):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["fc"]["kernel"], w.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["bn1"]["bias"], b.detach().numpy(), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(params["fc"]["kernel"]) - w0).max() > 0.1  # both moved
  assert np.abs(np.asarray(params["bn1"]["bias"]) - b0).max() > 0.1
  # The logged schedule is the per-step lr of the other parameters.
  np.testing.assert_allclose([float(schedule(k)) for k in (0, 2, 10)],
                             np.array([0.2, 1, 0.07]) * lr * batch / kilostep, rtol=1e-6)


def test_lookahead_follows_airbench():
  """optim.Lookahead against airbench's loop: every k steps average.lerp_(net, 1 - d) then
  net.copy_(average), d = decay * (step / total)^3, and a final update with d = 1."""
  every, decay, total = 3, 0.95 ** 5, 10
  lookahead = optim.Lookahead(every, decay, total)
  rng = np.random.default_rng(0)
  weights = average = {"w": jnp.asarray(rng.normal(size=4), jnp.float32)}
  net, ema = np.asarray(weights["w"], np.float64), np.asarray(weights["w"], np.float64)
  for step in range(1, total + 1):
    delta = rng.normal(size=4)
    net = net + delta  # an optimizer step
    weights = {"w": weights["w"] + jnp.asarray(delta, jnp.float32)}
    average, weights = lookahead.update(jnp.asarray(step), average, weights)
    if step % every == 0:
      d = decay * (step / total) ** 3
      ema = ema + (1 - d) * (net - ema)
      net = ema.copy()
  net = ema.copy()  # airbench's last update(decay=1.0): the average, unchanged
  np.testing.assert_allclose(weights["w"], net, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(average["w"], ema, rtol=1e-5, atol=1e-6)


def test_ema_follows_tensorflows_exponential_moving_average_with_num_updates():
  """optim.EMA against tf.train.ExponentialMovingAverage(decay, num_updates=step): the
  decay warms up as min(decay, (1 + step) / (10 + step)); the weights are never touched,
  and a step that is not applied leaves the average alone."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ema, rng = optim.EMA(0.99), np.random.default_rng(0)
  weights = {"w": jnp.asarray(rng.normal(size=4), jnp.float32)}
  average = ema.init(weights)
  variable, step = tf.Variable(np.asarray(weights["w"])), tf.Variable(0, dtype=tf.int64)
  reference = tf.train.ExponentialMovingAverage(0.99, num_updates=step)
  reference.apply([variable])
  for n in range(1, 301):
    weights = {"w": weights["w"] + jnp.asarray(rng.normal(size=4), jnp.float32)}
    before = weights
    average, weights = ema.update(jnp.asarray(n), average, weights)
    assert weights is before
    step.assign(n)
    variable.assign(np.asarray(weights["w"]))
    reference.apply([variable])
  np.testing.assert_allclose(average["w"], reference.average(variable).numpy(), rtol=1e-5)
  skipped, _ = ema.update(jnp.asarray(301), average, {"w": weights["w"] + 1}, enabled=False)
  np.testing.assert_array_equal(skipped["w"], average["w"])


def test_muon_on_conv_kernels_matches_airbench_muon_in_torch():
  """Both kernel shapes (out < in*h*w, and out > in*h*w, where Newton-Schulz works on the
  transpose) follow airbench's Muon; the dense head stays on SGD."""
  rng = np.random.default_rng(0)
  shapes = {"conv_a": (3, 3, 4, 6), "conv_b": (3, 3, 1, 16)}  # HWIO
  kernels = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(3)]
  lr, momentum, steps = 0.1, 0.6, 3
  config = _opt_config(name="sgd", momentum=0.0, learning_rate=0.5)
  config.muon.update(enabled=True, learning_rate=lr, momentum=momentum, ns_steps=steps)
  tx, _ = optim.create_optimizer(config, 10, 1, param_labels=resnet.param_labels)
  head = rng.normal(size=(16, 10)).astype(np.float32)
  params = {**{k: {"kernel": jnp.asarray(v)} for k, v in kernels.items()},
            "fc": {"kernel": jnp.asarray(head)}}
  state = tx.init(params)
  for g in grads:
    tree = {**{k: {"kernel": jnp.asarray(v)} for k, v in g.items()},
            "fc": {"kernel": jnp.ones_like(params["fc"]["kernel"])}}
    updates, state = tx.update(tree, state, params)
    params = optax.apply_updates(params, updates)

  for name, kernel in kernels.items():
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))
    p, buf = to_torch(kernel), torch.zeros(to_torch(kernel).shape)
    for g in grads:
      airbench.muon_step(p, to_torch(g[name]), buf, lr, momentum, steps)
    np.testing.assert_allclose(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1),
                               p.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(params["fc"]["kernel"], head - 3 * 0.5, rtol=1e-6)


def test_whitening_bias_trains_at_its_multiplier_until_its_epochs_end():
  config = _opt_config(name="sgd", momentum=0.0, learning_rate=0.1,
                       **{"groups.bn_bias.lr_multiplier": 64.0,
                          "groups.whiten_bias.lr_multiplier": 64.0,
                          "groups.whiten_bias.epochs": 0.3})
  # The whitening bias trains for 3 steps.
  tx, _ = optim.create_optimizer(config, 10, 1, param_labels=fast_resnet.param_labels)
  params = {"whiten": {"bias": jnp.zeros(3)}, "bn1": {"bias": jnp.zeros(3)}}
  state = tx.init(params)
  for _ in range(5):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["bn1"]["bias"], -5 * 6.4, rtol=1e-6)
  np.testing.assert_allclose(params["whiten"]["bias"], -3 * 6.4, rtol=1e-6)


def test_parameter_groups_need_the_family_labels():
  with pytest.raises(ValueError, match=r"optimizer groups \['bn_bias'\] need the model's "
                                       r"param_labels"):
    optim.create_optimizer(_opt_config(**{"groups.bn_bias.lr_multiplier": 64.0}), 10, 1)
