"""FastResNet: a compact residual net after airbench94 (Keller Jordan's fast CIFAR-10 recipe).

Presets "fast" (airbench94's widths), "fast_large" (airbench95's) and "frontier"
(airbench96's depth at half its parameters). What only this family needs lives
here: its frozen whitening filters (the "constants" collection: saved with the
model, never trained), their fit to the training images before a fresh run's
first step (`fit_to_data`, reached through models.fit_to_data), and the optimizer
group of its whitening bias (`param_labels`).
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import layers

# airbench fits its whitening filters to the first 5,000 training images: enough for a
# stable 12 x 12 patch covariance, a few seconds of numpy.
WHITENING_IMAGES = 5000
WHITENING_EPS = 5e-4  # keeps near-zero patch components from being blown up


def dirac_init(key, shape, dtype=jnp.float32):
  """A convolution kernel [h, w, c_in, c_out] whose first min(c_in, c_out) filters pass
  their input channel through unchanged; the rest keep PyTorch's default init.

  airbench initialises every convolution so: an implicit residual (the first
  filters copy the input) that lets a high learning rate work from the first step.
  """
  h, w, c_in, c_out = shape
  n = min(c_in, c_out)
  identity = jnp.zeros((h, w, c_in, n), dtype).at[h // 2, w // 2].set(jnp.eye(c_in, n, dtype=dtype))
  return layers.kernel_initializer("torch")(key, shape, dtype).at[..., :n].set(identity)


class FastGroup(nn.Module):
  """conv -> max-pool -> BN -> GELU, then an identity path around `branch_depth` times
  conv -> BN -> GELU.

  airbench94's block has a branch of one convolution and no shortcut
  (`shortcut=False`); airbench96's, a branch of two around an identity path.
  `branch_weight` scales the branch against the path (1: the plain sum). Every
  convolution starts dirac (`dirac_init`): the branch's as the identity, so at
  initialisation the group is its first half plus twice that.
  """

  features: int
  norm: Callable
  conv: Callable
  shortcut: bool = True
  branch_weight: float = 1.0
  branch_depth: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    gelu = layers.ACTIVATIONS["gelu"]
    x = self.conv(self.features, name="conv1")(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = gelu(self.norm(name="bn1")(x, train))
    y = x
    for i in range(2, 2 + self.branch_depth):
      y = gelu(self.norm(name=f"bn{i}")(self.conv(self.features, name=f"conv{i}")(y), train))
    return x + self.branch_weight * y if self.shortcut else y


class Whitening(nn.Module):
  """A k x k convolution with frozen filters (`whitening_kernel`, fitted to data) and a bias.

  The filters live in the "constants" collection, saved but never trained; zeros
  until `fit_to_data` sets them. 3 x k x k patches give as many filters as patch
  dimensions, and their negations (after GELU both signs survive).
  """

  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    shape = (k, k, 3, 2 * 3 * k * k)
    kernel = self.variable("constants", "kernel", jnp.zeros, shape)
    bias = self.param("bias", nn.initializers.zeros, (shape[-1],))
    x = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.value.astype(self.dtype),
                                     (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return x + bias.astype(self.dtype)


class FastResNet(nn.Module):
  """airbench94's net with identity paths: whitening, GELU, groups, max-pool, scaled head.

  A 2x2 patch-whitening convolution (`Whitening`: frozen filters fitted to the
  training data, a trained bias), GELU, then a `FastGroup` at each width in
  `widths`, each halving the resolution, a max-pool to 1x1, and a bias-free
  linear head whose logits are scaled by `logit_scale` (airbench's 1/9: a
  smaller softmax temperature at init). BatchNorm keeps only its bias
  (`bn_scale=False`), with airbench's eps and its momentum: it keeps 0.6 of the
  running statistics per step, i.e. 0.4 in the PyTorch convention used here.

  `shortcuts=False` drops the groups' identity paths: airbench's plain net, kept
  to measure what the paths cost or bring (docs/recipes.md). `branch_weight`
  weighs each group's branch against its path: h + branch_weight * f(h), where f
  is `branch_depth` convolutions (1: airbench94's, 2: airbench96's).
  num_classes, dtype and max_params mean what they mean for resnet.ResNet.
  """

  widths: Sequence[int] = (64, 256, 256)
  whiten_kernel_size: int = 2
  bn_momentum: float = 0.4
  bn_epsilon: float = 1e-12
  bn_scale: bool = False
  logit_scale: float = 1 / 9
  shortcuts: bool = True
  branch_weight: float = 1.0
  branch_depth: int = 1
  num_classes: int = 10
  dtype: str = "float32"
  max_params: int = 5_000_000

  def __post_init__(self):
    layers.check_positive(self, "widths", "whiten_kernel_size", "branch_depth")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtype = layers.DTYPES[self.dtype]
    x = layers.ACTIVATIONS["gelu"](Whitening(self.whiten_kernel_size, dtype, name="whiten")(x))
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=1, use_bias=False,
                             dtype=dtype, kernel_init=dirac_init)
    norm = functools.partial(layers.BatchNorm, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=dtype, use_scale=self.bn_scale)
    for i, width in enumerate(self.widths, start=1):
      x = FastGroup(width, norm=norm, conv=conv, shortcut=self.shortcuts,
                    branch_weight=self.branch_weight, branch_depth=self.branch_depth,
                    name=f"group{i}")(x, train)
    x = x.max(axis=(1, 2))  # airbench's final MaxPool2d(3) over the 3x3 map
    x = nn.Dense(self.num_classes, use_bias=False, dtype=dtype,
                 kernel_init=layers.kernel_initializer("torch"), name="fc")(x)
    return x.astype(jnp.float32) * self.logit_scale


PRESETS = {
    # airbench94's widths: 1,971,352 trained parameters (and 288 frozen whitening weights).
    "fast": dict(widths=(64, 256, 256)),
    # airbench95's widths, under the 5M budget.
    "fast_large": dict(widths=(128, 384, 384)),
    # airbench96's depth (two convolutions a branch) at widths that fit the 5M budget.
    "frontier": dict(widths=(128, 256, 352), branch_depth=2),
}


def whitening_kernel(images: np.ndarray, kernel_size: int = 2,
                     eps: float = WHITENING_EPS) -> np.ndarray:
  """FastResNet's whitening filters [k, k, 3, 2 * 3k^2] fitted to normalised `images`.

  The eigenvectors of the covariance of all k x k patches, each scaled by
  1 / sqrt(eigenvalue + eps), and their negations: the convolution outputs each
  patch's coordinates in the decorrelated, unit-variance basis.
  """
  images = np.asarray(images, np.float64)
  n, h, w, c = images.shape
  k = kernel_size
  patches = np.stack([images[:, i:h - k + 1 + i, j:w - k + 1 + j]
                      for i in range(k) for j in range(k)], axis=3)  # [n, h', w', k*k, c]
  patches = patches.reshape(-1, k * k * c)  # (kh, kw, c) order: the HWIO kernel's
  eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
  filters = (eigenvectors / np.sqrt(eigenvalues + eps)).T[::-1]  # largest first
  kernel = np.concatenate([filters, -filters]).reshape(-1, k, k, c).transpose(1, 2, 3, 0)
  return kernel.astype(np.float32)


def fit_to_data(model: FastResNet, variables: dict,
                train_inputs: Callable[[int], np.ndarray]) -> dict:
  """`variables` with the whitening filters fitted to the first training images, as the
  network sees them (`train_inputs(n)`: the first n, normalised)."""
  kernel = whitening_kernel(train_inputs(WHITENING_IMAGES), model.whiten_kernel_size)
  return {**variables, "constants": {"whiten": {"kernel": jnp.asarray(kernel)}}}


def param_labels(params):
  """Each parameter's optimizer group: the whitening bias has its own ("whiten_bias")."""
  return jax.tree_util.tree_map_with_path(
      lambda path, param: "whiten_bias" if [getattr(p, "key", "") for p in path[-2:]]
      == ["whiten", "bias"] else layers.parameter_group(path, param), params)
