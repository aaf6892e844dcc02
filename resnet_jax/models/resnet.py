"""The original project's family: one CIFAR ResNet whose fields express both of its models.

Presets "shallow" and "deep" are the original project's two models (2,777,674 and 4,999,689
trainable parameters), layer by layer as the original project's notebooks build them. Module
names mirror the original project's state_dict keys (`conv1`, `bn1`, `layer{i}_{j}`, `fc`; a
block holds `conv1`, `bn1`, `conv2`, `bn2`, `downsample_conv`, `downsample_bn`) so
that converting its PyTorch weights (convert_torch.py) is a plain renaming.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers


class ResidualBlock(nn.Module):
  """Basic block: act_out(BN(conv(act_inner(BN(conv(x))))) + shortcut(x))."""

  features: int
  strides: int
  inner_activation: Callable
  outer_activation: Callable
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = self.inner_activation(self.norm(name="bn1")(y, train))
    y = self.conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
    y = self.norm(name="bn2")(y, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.conv(self.features, (1, 1), self.strides, padding=0, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, train)
    return self.outer_activation(y + x)


class ResNet(nn.Module):
  """A CIFAR ResNet: stem, stages of residual blocks, adaptive pool, linear head.

  Attributes:
    stem_width: channels of the 3x3 stem convolution.
    stage_widths, stage_blocks, stage_strides: per stage, its channels, number
      of blocks and the stride of its first block.
    stem_activation, inner_activation, outer_activation: names in
      layers.ACTIVATIONS; inner follows a block's first BN, outer follows the
      residual addition.
    stem_dropout: element-wise dropout rate after the stem.
    stage_dropout: dropout rate after each stage (one per stage).
    mid_pool_after_stage: 1-based stage after which an adaptive pool to
      `mid_pool_size` of type `mid_pool_type` runs; 0 for none.
    head_pool_size: the adaptive average pool before flattening (1 = global).
    num_classes: classifier outputs.
    dtype: compute dtype name; parameters and BN statistics stay float32.
    kernel_init: "torch" (PyTorch's defaults) or "he_normal".
    max_params: the trainable-parameter budget, checked by `models.check_budget`.
  """

  stem_width: int
  stage_widths: Sequence[int]
  stage_blocks: Sequence[int]
  stage_strides: Sequence[int]
  stage_dropout: Sequence[float]
  stem_activation: str = "relu"
  inner_activation: str = "relu"
  outer_activation: str = "relu"
  stem_dropout: float = 0.0
  mid_pool_after_stage: int = 0
  mid_pool_type: str = "max"
  mid_pool_size: int = 0
  head_pool_size: int = 1
  num_classes: int = 10
  dtype: str = "float32"
  kernel_init: str = "torch"
  max_params: int = 5_000_000

  def __post_init__(self):
    _check_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtype = layers.DTYPES[self.dtype]
    kernel_init = layers.kernel_initializer(self.kernel_init)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, kernel_init=kernel_init)
    norm = functools.partial(layers.BatchNorm, dtype=dtype)
    activation = layers.ACTIVATIONS
    block = functools.partial(ResidualBlock, conv=conv, norm=norm,
                              inner_activation=activation[self.inner_activation],
                              outer_activation=activation[self.outer_activation])

    x = conv(self.stem_width, (3, 3), padding=1, name="conv1")(x.astype(dtype))
    x = activation[self.stem_activation](norm(name="bn1")(x, train))
    if self.stem_dropout:
      x = nn.Dropout(self.stem_dropout, deterministic=not train, name="stem_dropout")(x)
    stages = zip(self.stage_widths, self.stage_blocks, self.stage_strides, self.stage_dropout)
    for i, (width, blocks, strides, rate) in enumerate(stages, start=1):
      for j in range(blocks):
        x = block(width, strides if j == 0 else 1, name=f"layer{i}_{j}")(x, train)
      if rate:
        x = nn.Dropout(rate, deterministic=not train, name=f"layer{i}_dropout")(x)
      if i == self.mid_pool_after_stage:
        x = layers.AdaptivePool(self.mid_pool_size, self.mid_pool_type, name="mid_pool")(x)
    x = layers.AdaptivePool(self.head_pool_size, "avg", name="head_pool")(x)
    x = x.reshape(x.shape[0], -1)  # flattens (H, W, C); PyTorch flattens (C, H, W)
    x = nn.Dense(self.num_classes, dtype=dtype, kernel_init=kernel_init,
                 bias_init=layers.torch_bias_init(x.shape[-1]), name="fc")(x)
    return x.astype(jnp.float32)  # softmax and loss in float32


def _check_fields(model: ResNet) -> None:
  """Rejects inconsistent fields with a message naming the field and value."""
  layers.check_positive(model, "stem_width", "stage_widths", "stage_blocks", "stage_strides",
                        "head_pool_size")
  num_stages = len(model.stage_widths)
  for name in ("stage_blocks", "stage_strides", "stage_dropout"):
    if len(getattr(model, name)) != num_stages:
      raise ValueError(f"model.{name}={tuple(getattr(model, name))} needs one entry per stage "
                       f"({num_stages}, as stage_widths={tuple(model.stage_widths)})")
  for name in ("stem_activation", "inner_activation", "outer_activation"):
    if getattr(model, name) not in layers.ACTIVATIONS:
      raise ValueError(f"model.{name}={getattr(model, name)!r} is not one of "
                       f"{sorted(layers.ACTIVATIONS)}")
  choices = {"mid_pool_type": layers.POOL_TYPES, "kernel_init": layers.KERNEL_INITS,
             "dtype": tuple(layers.DTYPES)}
  for name, allowed in choices.items():
    if getattr(model, name) not in allowed:
      raise ValueError(f"model.{name}={getattr(model, name)!r} is not one of {list(allowed)}")
  if not 0 <= model.mid_pool_after_stage <= num_stages:
    raise ValueError(f"model.mid_pool_after_stage={model.mid_pool_after_stage} is not a stage "
                     f"(0 for none, or 1..{num_stages})")
  if model.mid_pool_after_stage and model.mid_pool_size < 1:
    raise ValueError(f"model.mid_pool_size={model.mid_pool_size} must be positive")
  for rate in (model.stem_dropout, *model.stage_dropout):
    if not 0 <= rate < 1:
      raise ValueError(f"model dropout rate {rate} is outside [0, 1)")


PRESETS = {
    # The original project's ModifiedResNet: 3 stages of 2 blocks, ReLU, no dropout.
    "shallow": dict(stem_width=64, stage_widths=(64, 128, 256), stage_blocks=(2, 2, 2),
                    stage_strides=(1, 2, 2), stage_dropout=(0.0, 0.0, 0.0)),
    # The original project's final deep notebook (stage 4 has 2 blocks, not the report's 5).
    "deep": dict(stem_width=16, stage_widths=(32, 64, 115, 256), stage_blocks=(3, 4, 11, 2),
                 stage_strides=(1, 2, 2, 2), stage_dropout=(0.287, 0.0, 0.287, 0.0),
                 stem_dropout=0.432, outer_activation="gelu",
                 mid_pool_after_stage=2, mid_pool_type="max", mid_pool_size=24,
                 head_pool_size=3),
}


def param_labels(params):
  """Each parameter's optimizer group (layers.parameter_group)."""
  return jax.tree_util.tree_map_with_path(layers.parameter_group, params)
