"""On-device input (`config.data.pipeline = "device"`): no host work per step.

The split lives in accelerator memory as uint8 (CIFAR-10's 50,000 images are
150 MB). Each epoch's order is a `jax.random.permutation`; `get_batch` gathers a
batch, applies flips and integer shifts (random crop with padding, translation)
and normalises it in one jitted call per step, the batch never leaving the
devices. Only the augmentations
that are exact integer pixel moves are supported here; rotation, zoom and colour
jitter need the tf.data path.

The distributions match input_pipeline.augment's (tests/test_device_pipeline.py):
flip with probability p; crop shift uniform on [-p, p]; translation
round(U(-32 f, 32 f)), zero fill; reflect_crop's shift uniform on [-p, p] with
the borders reflected. Random streams differ, of course, except alternating
flip's, which both pipelines draw from preprocessing.alternating_flip_bits.

Imports no TensorFlow: GPU machines used for measurement have none.
"""

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import preprocessing

DEVICE_AUGMENTATIONS = ("hflip", "vflip", "alternating_flip", "crop_padding", "translate",
                        "reflect_crop")


def check_device_augment(settings) -> None:
  for name in preprocessing.AUGMENT_FIELDS:
    if name not in DEVICE_AUGMENTATIONS and settings.get(name, 0):
      raise ValueError(f"config.data.augment.{name}={settings[name]} is not supported by "
                       f"config.data.pipeline='device' (only {list(DEVICE_AUGMENTATIONS)}); "
                       "use pipeline='tfdata'")


def _shift(images: jax.Array, shifts: jax.Array, limit: int, mode: str = "constant") -> jax.Array:
  """Moves each image's content by integer (dx, dy) in [-limit, limit]; `mode` is jnp.pad's
  fill (zeros, or "reflect": the borders mirrored without repeating the edge, as torch's)."""
  padded = jnp.pad(images, ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode=mode)
  size = images.shape[1:]

  def one(image, shift):
    return jax.lax.dynamic_slice(image, (limit - shift[1], limit - shift[0], 0), size)

  return jax.vmap(one)(padded, shifts)


def augment(key: jax.Array, images: jax.Array, settings: dict) -> jax.Array:
  """Flips and integer shifts of a batch [b, H, W, C]; `settings` is static."""
  keys = jax.random.split(key, 5)
  batch = images.shape[0]
  for i, (name, axis) in enumerate((("hflip", 2), ("vflip", 1))):
    if settings[name]:
      flip = jax.random.uniform(keys[i], (batch,)) < settings[name]
      images = jnp.where(flip[:, None, None, None], jnp.flip(images, axis), images)
  if settings["crop_padding"]:
    pad = int(settings["crop_padding"])
    images = _shift(images, jax.random.randint(keys[2], (batch, 2), -pad, pad + 1), pad)
  if settings["translate"]:
    limit = settings["translate"] * images.shape[1]
    shifts = jnp.round(jax.random.uniform(keys[3], (batch, 2), minval=-limit, maxval=limit))
    images = _shift(images, shifts.astype(jnp.int32), int(np.ceil(limit)))
  if settings["reflect_crop"]:
    pad = int(settings["reflect_crop"])
    images = _shift(images, jax.random.randint(keys[4], (batch, 2), -pad, pad + 1), pad,
                    "reflect")
  return images


class DeviceSplit:
  """A training split in device memory; `epoch` yields its batches, augmented by jitted code.

  It is a pipelines.Batches, like the tf.data pipeline: the training loop feeds
  its batches to the same jitted train step.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               augment_settings: dict, normalization: str, seed: int = 0,
               batch_sharding: jax.sharding.NamedSharding | None = None):
    check_device_augment(augment_settings)
    if not 1 <= batch_size <= len(labels):
      raise ValueError(f"batch_size={batch_size} must be in [1, {len(labels)}] (the split size)")
    replicated = None if batch_sharding is None else jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec())
    self.images = jax.device_put(images, replicated)
    self.labels = jax.device_put(labels, replicated)
    self.batch_size, self.normalization = batch_size, normalization
    self.settings = {name: augment_settings.get(name, 0) for name in DEVICE_AUGMENTATIONS}
    self.num_examples = len(labels)
    self.steps_per_epoch = self.num_examples // batch_size
    self._order_key, self._augment_key = jax.random.split(jax.random.key(seed))
    self._flip_bits = preprocessing.alternating_flip_bits(seed, self.num_examples)
    self._batch = jax.jit(
        lambda arrays, order, step, key, parity: self.get_batch(
            arrays, order, step, jax.random.fold_in(key, step), parity),
        out_shardings=batch_sharding)

  def epoch_order(self, epoch: int) -> jax.Array:
    """[steps, batch] example indices of `epoch` (the remainder is dropped)."""
    order = jax.random.permutation(jax.random.fold_in(self._order_key, epoch), self.num_examples)
    return order[:self.steps_per_epoch * self.batch_size].reshape(self.steps_per_epoch, -1)

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    """Batches `start`, `start + 1`, ... of epoch `epoch`: a function of (seed, epoch, step)."""
    order = self.epoch_order(epoch)
    key = jax.random.fold_in(self._augment_key, epoch)
    for step in range(start, self.steps_per_epoch):
      yield self._batch(self.arrays, order, step, key, epoch % 2)

  def first_images(self, n: int) -> np.ndarray:
    """The split's first `n` images, uint8 NHWC on the host (data-dependent init)."""
    return np.asarray(self.images[:n])

  @property
  def arrays(self) -> tuple[jax.Array, jax.Array]:
    """(images, labels) on device: pass them into jitted code, not as closures,
    so that 150 MB never becomes a compile-time constant."""
    return self.images, self.labels

  def get_batch(self, arrays: tuple[jax.Array, jax.Array], order: jax.Array, step: jax.Array,
                key: jax.Array, parity: jax.Array | int = 0) -> dict:
    """Batch `step` of an epoch order, augmented and normalised; call inside jit.

    `parity` is the epoch's (epoch % 2), which alternating_flip follows.
    """
    images, labels = arrays
    indices = order[step]
    images = images[indices]
    if self.settings["alternating_flip"]:  # before the other ops, as hflip
      flipped = jnp.asarray(self._flip_bits)[indices] != (parity == 1)
      images = jnp.where(flipped[:, None, None, None], jnp.flip(images, 2), images)
    images = augment(key, images, self.settings)
    images = preprocessing.normalize_pixels(images, self.normalization)
    return {"image": images, "label": labels[indices]}
