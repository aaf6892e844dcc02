"""On-device input (`config.data.pipeline = "device"`): no host work per step.

The split lives in accelerator memory as uint8 (CIFAR-10's 50,000 images are
150 MB). Each epoch's order is a `jax.random.permutation`; `get_batch` gathers a
batch, augments it and normalises it in one jitted call per step, the batch
never leaving the devices. Every augmentation of preprocessing.AUGMENT_FIELDS
is supported, in input_pipeline.augment's order, each op drawing from its own
key: the geometric ops run on the uint8 pixels, colour jitter on floats in [0, 1].

The distributions match input_pipeline.augment's (tests/test_device_pipeline.py):
flip with probability p; rotation by U(-d, d) degrees and zoom by U(1 - z, 1 + z)
about the centre, nearest neighbour, zero fill (for a given angle or scale the
pixels tf.data's transform picks); crop shift uniform on [-p, p]; translation
round(U(-32 f, 32 f)), zero fill; reflect_crop's shift uniform on [-p, p] with
the borders reflected; torchvision's ColorJitter, the enabled components in a
random order per image. Random streams differ, of course, except alternating
flip's, which both pipelines draw from preprocessing.alternating_flip_bits.

Imports no TensorFlow: GPU machines used for measurement have none.
"""

import functools
from typing import Iterator

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import preprocessing

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _shift(images: jax.Array, shifts: jax.Array, limit: int, mode: str = "constant") -> jax.Array:
  """Moves each image's content by integer (dx, dy) in [-limit, limit]; `mode` is jnp.pad's
  fill (zeros, or "reflect": the borders mirrored without repeating the edge, as torch's)."""
  padded = jnp.pad(images, ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode=mode)
  size = images.shape[1:]

  def one(image, shift):
    return jax.lax.dynamic_slice(image, (limit - shift[1], limit - shift[0], 0), size)

  return jax.vmap(one)(padded, shifts)


def _resample(transform, images: jax.Array, params: jax.Array) -> jax.Array:
  """A dm-pix per-image resampling `transform(image, param)` over the batch: nearest
  neighbour, zero fill (torchvision's defaults); uint8 stays uint8, exactly."""
  one = functools.partial(transform, order=0, mode="constant", cval=0.0)
  # pix maps pixels to sampling points with a float32 matmul: on GPUs its default
  # precision (TF32) would move points by ~0.01 pixel and change nearest picks.
  with jax.default_matmul_precision("highest"):
    return jax.vmap(one)(images, params)


def rotate_by(images: jax.Array, angles: jax.Array) -> jax.Array:
  """Image i rotated by angles[i] radians (counter-clockwise as displayed) about the centre.

  pix.rotate's output p samples input centre + R (p - centre) with the same R, in
  (row, column), as input_pipeline.rotate's (x, y) transform: the same pixels.
  """
  return _resample(pix.rotate, images, angles)


def _zoom_one(image, scale, **interpolation):
  """Output p samples input centre + (p - centre) / scale (input_pipeline.zoom's map)."""
  centre = (jnp.asarray(image.shape, jnp.float32) - 1) / 2
  inverse = jnp.stack([1 / scale, 1 / scale, jnp.ones_like(scale)])  # the channel stays put
  return pix.affine_transform(image, inverse, offset=centre * (1 - inverse), **interpolation)


def zoom_by(images: jax.Array, scales: jax.Array) -> jax.Array:
  """Image i scaled by scales[i] about the centre (pix has no zoom: an affine map)."""
  return _resample(_zoom_one, images, scales)


def _flip(axis: int):
  """An op mirroring axis `axis` (2: W, horizontal; 1: H, vertical) with probability p."""

  def op(key, images, p):
    flip = jax.random.uniform(key, (images.shape[0],)) < p
    return jnp.where(flip[:, None, None, None], jnp.flip(images, axis), images)

  return op


def _rotate(key, images, degrees):
  """RandomRotation(degrees): angle ~ U(-degrees, degrees)."""
  angles = jax.random.uniform(key, (images.shape[0],), minval=-degrees, maxval=degrees)
  return rotate_by(images, jnp.radians(angles))


def _zoom(key, images, amount):
  """Scale ~ U(1 - amount, 1 + amount)."""
  return zoom_by(images, jax.random.uniform(key, (images.shape[0],), minval=1 - amount,
                                            maxval=1 + amount))


def _crop(key, images, padding):
  """RandomCrop(32, padding): a uniform integer shift in [-padding, padding] per axis."""
  pad = int(padding)
  return _shift(images, jax.random.randint(key, (images.shape[0], 2), -pad, pad + 1), pad)


def _translate(key, images, fraction):
  """RandomAffine(translate=(f, f)): round(U(-32 f, 32 f)) pixels per axis."""
  limit = fraction * images.shape[1]
  shifts = jnp.round(jax.random.uniform(key, (images.shape[0], 2), minval=-limit,
                                        maxval=limit))
  return _shift(images, shifts.astype(jnp.int32), int(np.ceil(limit)))


def _reflect_crop(key, images, pixels):
  """A uniform integer shift in [-pixels, pixels] per axis, the borders reflected."""
  pad = int(pixels)
  return _shift(images, jax.random.randint(key, (images.shape[0], 2), -pad, pad + 1), pad,
                "reflect")


def _grayscale(images: jax.Array) -> jax.Array:
  # A weighted sum, not a matmul: TF32 on GPUs would round the weights.
  return jnp.sum(images * jnp.asarray(_GRAY_WEIGHTS, images.dtype), -1, keepdims=True)


def jitter_op(name: str, images: jax.Array, factor: jax.Array) -> jax.Array:
  """One ColorJitter component with per-image `factor` [b], clipped to [0, 1]."""
  f = factor[:, None, None, None]
  if name == "brightness":  # torchvision scales; pix.adjust_brightness adds
    out = images * f
  elif name == "contrast":  # towards the gray mean; pix.adjust_contrast uses channel means
    mean = jnp.mean(_grayscale(images), axis=(1, 2, 3), keepdims=True)
    out = f * images + (1 - f) * mean
  elif name == "saturation":  # towards gray; pix.adjust_saturation scales HSV saturation
    out = f * images + (1 - f) * _grayscale(images)
  else:  # hue: pix's HSV round trip with the hue shifted by `factor` turns (mod 1), as ours
    out = pix.adjust_hue(images, f[..., 0])
  return jnp.clip(out, 0.0, 1.0)


def color_jitter(key: jax.Array, images: jax.Array, settings: dict) -> jax.Array:
  """ColorJitter on float32 [b, H, W, 3] in [0, 1]: the enabled ones of brightness,
  contrast, saturation, hue, in a fresh random order per image, as torchvision draws it."""
  jitter = [name for name in preprocessing.JITTER_OPS if settings[name]]
  keys = jax.random.split(key, len(jitter) + 1)
  batch = images.shape[0]
  factors = {}
  for name, factor_key in zip(jitter, keys):
    amount = settings[name]
    low, high = (-amount, amount) if name == "hue" else (max(0.0, 1 - amount), 1 + amount)
    factors[name] = jax.random.uniform(factor_key, (batch,), minval=low, maxval=high)
  # Slot by slot, every op runs on the whole batch and each image keeps the output
  # of the op its order names (a switch under vmap would run every branch too).
  order = jnp.argsort(jax.random.uniform(keys[-1], (batch, len(jitter))), axis=1)
  for slot in range(len(jitter)):
    chosen = order[:, slot, None, None, None]
    images = jnp.select([chosen == k for k in range(len(jitter))],
                        [jitter_op(name, images, factors[name]) for name in jitter])
  return images


# The geometric ops, in input_pipeline.OPS's order (the seed's torchvision Compose);
# colour jitter comes last.
OPS = (("hflip", _flip(2)), ("vflip", _flip(1)), ("rotation", _rotate), ("zoom", _zoom),
       ("crop_padding", _crop), ("translate", _translate), ("reflect_crop", _reflect_crop))
# Which of the batch key's splits each op draws from: flips and shifts keep the ones
# they had before rotation, zoom and jitter came (split(key, n)[i] does not depend on
# n), so existing configs get the same batches as before.
_KEY_INDEX = {name: i for i, name in enumerate(
    ("hflip", "vflip", "crop_padding", "translate", "reflect_crop", "rotation", "zoom",
     "color_jitter"))}


def augment(key: jax.Array, images: jax.Array, settings: dict) -> jax.Array:
  """Each augmentation whose setting is non-zero, in order, each with its own key.

  Args:
    key: this batch's key.
    images: uint8 [b, H, W, 3].
    settings: every field of preprocessing.AUGMENT_FIELDS (static).

  Returns:
    float32 [b, H, W, 3] in [0, 1].
  """
  keys = jax.random.split(key, len(_KEY_INDEX))
  for name, op in OPS:
    if settings[name]:
      images = op(keys[_KEY_INDEX[name]], images, settings[name])
  images = preprocessing.to_unit(images)
  if any(settings[name] for name in preprocessing.JITTER_OPS):
    images = color_jitter(keys[_KEY_INDEX["color_jitter"]], images, settings)
  return images


class DeviceSplit:
  """A training split in device memory; `epoch` yields its batches, augmented by jitted code.

  It is a pipelines.Batches, like the tf.data pipeline: the training loop feeds
  its batches to the same jitted train step.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               augment_settings: dict, normalization: str, seed: int = 0,
               batch_sharding: jax.sharding.NamedSharding | None = None):
    if not 1 <= batch_size <= len(labels):
      raise ValueError(f"batch_size={batch_size} must be in [1, {len(labels)}] (the split size)")
    replicated = None if batch_sharding is None else jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec())
    self.images = jax.device_put(images, replicated)
    self.labels = jax.device_put(labels, replicated)
    self.batch_size, self.normalization = batch_size, normalization
    self.settings = {name: augment_settings.get(name, 0) for name in preprocessing.AUGMENT_FIELDS}
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
    images = preprocessing.normalize(images, self.normalization)
    return {"image": images, "label": labels[indices]}
