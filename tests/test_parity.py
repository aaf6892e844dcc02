"""The Flax presets compute the seed's PyTorch functions (float32, within 1e-4)."""

import jax
import numpy as np
import pytest
import torch

from resnet_jax import convert_torch, models
from resnet_jax.models import layers, resnet
from tests import torch_reference

ATOL = 1e-4


def _torch_model(name: str, dropout: bool = True) -> torch.nn.Module:
  torch.manual_seed(0)
  if name == "shallow":
    model = torch_reference.ShallowResNet()
  elif dropout:
    model = torch_reference.DeepResNet()
  else:
    model = torch_reference.DeepResNet(stem_dropout=0.0, dropout=0.0)
  torch_reference.randomize_batchnorm(model, torch.Generator().manual_seed(1))
  return model


def _images(n: int = 8) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(n, 32, 32, 3)).astype(np.float32)


def _torch_forward(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_eval_logits_match_pytorch(name):
  torch_model = _torch_model(name).eval()
  variables = convert_torch.convert_state_dict(torch_model.state_dict(), name)
  images = _images()
  expected = _torch_forward(torch_model, images)
  logits = models.get_model(name).apply(variables, images, train=False)
  assert np.abs(expected).max() > 0.05  # logits far above the tolerance
  np.testing.assert_allclose(np.asarray(logits), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_train_forward_and_running_stats_match_pytorch(name):
  torch_model = _torch_model(name, dropout=False).train()
  variables = convert_torch.convert_state_dict(torch_model.state_dict(), name)
  images = _images()
  expected = _torch_forward(torch_model, images)  # updates torch's running stats
  model = models.get_model(name, stem_dropout=0.0,
                           stage_dropout=(0.0,) * len(resnet.PRESETS[name]["stage_widths"]))
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(logits), expected, atol=ATOL, rtol=0)
  updated = convert_torch.convert_state_dict(torch_model.state_dict(), name)["batch_stats"]
  for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(updates["batch_stats"]),
                                  jax.tree.leaves(updated)):
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0,
                               err_msg=jax.tree_util.keystr(path))
  # The statistics moved: the comparison is of an update, not of the inputs.
  before = jax.tree.leaves(variables["batch_stats"])
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(updated), before)) > 1e-3


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_torch_reference_has_the_seed_parameter_count(name):
  expected = {"shallow": 2_777_674, "deep": 4_999_689}[name]
  assert sum(p.numel() for p in _torch_model(name).parameters()) == expected


@pytest.mark.parametrize("n,m", [(16, 24), (6, 3), (8, 1), (7, 3), (5, 5)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_pool_matches_pytorch(n, m, kind):
  x = np.random.default_rng(n * m).normal(size=(2, n, n, 3)).astype(np.float32)
  pool = torch.nn.AdaptiveMaxPool2d(m) if kind == "max" else torch.nn.AdaptiveAvgPool2d(m)
  expected = pool(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  ours = layers.AdaptivePool(m, kind).apply({}, x)
  np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-6, rtol=0)


def test_gelu_is_exact_erf():
  x = np.linspace(-4, 4, 101, dtype=np.float32)
  expected = torch.nn.GELU()(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(layers.ACTIVATIONS["gelu"](x)), expected, atol=1e-6)


def test_batch_norm_training_gradients_match_pytorch():
  """layers.batch_norm_train's hand-written backward is PyTorch's BatchNorm2d backward.

  Checked on the layer: through a whole network, a ReLU input within rounding of
  zero takes either side in two float32 programs, and its gradient with it.
  """
  rng = np.random.default_rng(0)
  x = rng.normal(1.5, 2.0, size=(8, 6, 6, 16)).astype(np.float32)
  scale = (0.5 + rng.random(16)).astype(np.float32)
  bias = rng.normal(size=16).astype(np.float32)
  cotangent = rng.normal(size=x.shape).astype(np.float32)
  bn = torch.nn.BatchNorm2d(16).train()
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(scale))
    bn.bias.copy_(torch.from_numpy(bias))
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  ty = bn(tx)
  ty.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy()))

  def f(x, scale, bias):
    return layers.batch_norm_train(x, scale, bias, 1e-5)[0]

  y, vjp = jax.vjp(f, x, scale, bias)
  gx, gscale, gbias = vjp(cotangent)
  np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=0)
  np.testing.assert_allclose(gx, tx.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=0)
  np.testing.assert_allclose(gscale, bn.weight.grad.numpy(), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(gbias, bn.bias.grad.numpy(), atol=1e-4, rtol=1e-5)
