"""tf.data training input: seeded shuffle, vectorised augmentation, batching, prefetch.

`create_split(data_config, split, batch_size=...)` loads the split into memory
(resnet_jax.data_sources) and returns an `InputSplit`; iterating it gives one
epoch of dicts of numpy arrays: "image" float32 [b, 32, 32, 3] normalised and
augmented, "label" int32 [b]. `split.epoch(e)` gives epoch e. (Evaluation
batches need no augmentation: pipelines.EvalSplit makes them in numpy.)

Order and randomness are planned on the host in numpy from (seed, epoch) and
drawn for the *global* batch, of which each process keeps its own rows. So a
seed and epoch give the same batches on every run and for any process count:
processes read disjoint shards that together make the single-process batch.

Batches drop the remainder of the split.

Augmentations run after batching, on whole batches (one op call per batch, not
per image): this is what makes the tf.data path fast on a 2-core host. Each is a
small named op (flip, rotate, zoom, crop, translate, reflect_crop, color_jitter)
taking its own stateless seed, applied in sequence by `augment`; alternating_flip
(flip_where) depends on the epoch and each example's index, so `dataset` applies it.
"""

import math
from typing import Iterator

import jax
import numpy as np

from resnet_jax import data_sources, optional_tf, pipelines, preprocessing

tf = optional_tf.tensorflow("config.data.pipeline='tfdata'")


def _uniform(seed, rows, shape, low, high, dtype=tf.float32):
  """U(low, high) for the global batch, sliced to this process's rows."""
  start, stop, global_batch = rows
  values = tf.random.stateless_uniform((global_batch, *shape), seed=seed, minval=low,
                                       maxval=high, dtype=dtype)
  return values[start:stop]


def _transform(images, transforms):
  """Per-image projective transforms: nearest neighbour, zero fill (torchvision's defaults)."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
      fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")


def _shift_transforms(dx, dy):
  """Moves content by (dx, dy) pixels: output (x, y) samples input (x - dx, y - dy)."""
  one, zero = tf.ones_like(dx), tf.zeros_like(dx)
  return tf.stack([one, zero, -dx, zero, one, -dy, zero, zero], axis=1)


def _about_centre(a, b, c, d, size):
  """Output p samples input centre + [[a, b], [c, d]] (p - centre)."""
  centre = (size - 1) / 2
  zero = tf.zeros_like(a)
  return tf.stack([a, b, centre - a * centre - b * centre,
                   c, d, centre - c * centre - d * centre, zero, zero], axis=1)


def _size(images):
  return tf.cast(tf.shape(images)[1], tf.float32)


def _grayscale(images):
  return tf.reduce_sum(images * tf.constant([0.2989, 0.587, 0.114]), -1, keepdims=True)


def _jitter_op(name, images, factor):
  """One ColorJitter component with per-image `factor` [b]."""
  f = factor[:, None, None, None]
  if name == "brightness":
    out = images * f
  elif name == "contrast":
    mean = tf.reduce_mean(_grayscale(images), axis=[1, 2, 3], keepdims=True)
    out = f * images + (1 - f) * mean
  elif name == "saturation":
    out = f * images + (1 - f) * _grayscale(images)
  else:  # hue: rotate the hue channel by `factor` turns
    h, s, v = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
    out = tf.image.hsv_to_rgb(tf.stack([tf.math.floormod(h + f[..., 0], 1.0), s, v], -1))
  return tf.clip_by_value(out, 0.0, 1.0)


def flip(axis: int):
  """An op mirroring axis `axis` (2: W, horizontal; 1: H, vertical) with probability p."""

  def op(images, seed, p, rows):
    flipped = _uniform(seed, rows, (), 0.0, 1.0) < p
    return tf.where(flipped[:, None, None, None], tf.reverse(images, [axis]), images)

  return op


def rotate(images, seed, degrees, rows):
  """RandomRotation(degrees): angle ~ U(-degrees, degrees) about the centre."""
  angle = _uniform(seed, rows, (), -degrees, degrees) * (math.pi / 180)
  cos, sin = tf.cos(angle), tf.sin(angle)
  return _transform(images, _about_centre(cos, -sin, sin, cos, _size(images)))


def zoom(images, seed, amount, rows):
  """Scale ~ U(1 - amount, 1 + amount) about the centre."""
  inverse = 1 / _uniform(seed, rows, (), 1 - amount, 1 + amount)
  return _transform(images, _about_centre(inverse, 0 * inverse, 0 * inverse, inverse,
                                          _size(images)))


def crop(images, seed, padding, rows):
  """RandomCrop(32, padding): a uniform integer shift in [-padding, padding] per axis."""
  pad = int(padding)
  shift = tf.cast(_uniform(seed, rows, (2,), -pad, pad + 1, tf.int32), tf.float32)
  return _transform(images, _shift_transforms(shift[:, 0], shift[:, 1]))


def translate(images, seed, fraction, rows):
  """RandomAffine(translate=(f, f)): round(U(-32 f, 32 f)) pixels per axis."""
  limit = fraction * 32
  shift = tf.round(_uniform(seed, rows, (2,), -limit, limit))
  return _transform(images, _shift_transforms(shift[:, 0], shift[:, 1]))


def reflect_crop(images, seed, pixels, rows):
  """A uniform integer shift in [-pixels, pixels] per axis, the borders reflected."""
  pad = int(pixels)
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  shifted = crop(padded, seed, pad, rows)  # the shift never reaches past the padding
  size = tf.shape(images)[1]
  return shifted[:, pad:pad + size, pad:pad + size]


def flip_where(images, flags):
  """Mirrors (left-right) the images whose flag is set: alternating_flip's op."""
  return tf.where(flags[:, None, None, None], tf.reverse(images, [2]), images)


def color_jitter(images, seed, settings, rows):
  """ColorJitter: the enabled ones of brightness, contrast, saturation, hue, in a fresh
  random order per image, as torchvision draws it."""
  jitter = [name for name in preprocessing.JITTER_OPS if settings[name]]
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=len(jitter) + 1))
  factors = {}
  for name, factor_seed in zip(jitter, seeds):
    x = settings[name]
    low, high = (-x, x) if name == "hue" else (max(0.0, 1 - x), 1 + x)
    factors[name] = _uniform(factor_seed, rows, (), low, high)
  # Slot by slot, each image goes to the op its order names: partition, apply,
  # stitch back, so every image pays for each op once (hue's HSV round trip is
  # the costly one).
  order = tf.argsort(_uniform(seeds[-1], rows, (len(jitter),), 0.0, 1.0), axis=1)
  positions = tf.range(tf.shape(images)[0])
  for slot in range(len(jitter)):
    parts = tf.dynamic_partition(images, order[:, slot], len(jitter))
    where = tf.dynamic_partition(positions, order[:, slot], len(jitter))
    images = tf.dynamic_stitch(where, [
        _jitter_op(name, part, tf.gather(factors[name], rows_k))
        for name, part, rows_k in zip(jitter, parts, where)])
  return images


# The geometric ops, in the seed's torchvision Compose order; colour jitter comes last.
OPS = (("hflip", flip(2)), ("vflip", flip(1)), ("rotation", rotate), ("zoom", zoom),
       ("crop_padding", crop), ("translate", translate), ("reflect_crop", reflect_crop))


def augment(images, seed, settings, rows):
  """Applies each augmentation whose setting is non-zero, in order, each with its own seed.

  Args:
    images: float32 [b, H, W, 3] in [0, 1].
    seed: int32 [2], the stateless seed of this global batch.
    settings: every field of preprocessing.AUGMENT_FIELDS.
    rows: (start, stop, global_batch): this process's rows of the global batch.
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=len(OPS) + 1))
  for (name, op), op_seed in zip(OPS, seeds):
    if settings[name]:
      images = op(images, op_seed, settings[name], rows)
  if any(settings[name] for name in preprocessing.JITTER_OPS):
    images = color_jitter(images, seeds[-1], settings, rows)
  return images


class InputSplit:
  """A training split held in memory; iterating gives one epoch of augmented batches."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               augment_settings: dict | None, normalization: str, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    self._rows = pipelines.process_rows(batch_size, process_index, process_count)
    if len(labels) < batch_size:
      raise ValueError(f"batch_size={batch_size} exceeds the {len(labels)} training examples")
    self.images, self.labels = images, labels
    self.batch_size, self.seed = batch_size, seed
    self.augment_settings = augment_settings
    self.normalization = normalization
    self.num_examples = len(labels)

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.batch_size

  def _plan(self, epoch: int) -> np.ndarray:
    """This process's example indices, [steps, local batch]."""
    steps = self.steps_per_epoch
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    order = order[:steps * self.batch_size].reshape(steps, self.batch_size)
    return order[:, self._rows]

  def dataset(self, epoch: int = 0, start: int = 0) -> tf.data.Dataset:
    """Epoch `epoch` from its batch `start` on (a resumed run skips what it has seen)."""
    order = self._plan(epoch)
    rows = (self._rows.start, self._rows.stop, self.batch_size)
    batch_seeds = np.random.default_rng([self.seed, epoch, 1]).integers(
        0, 2**31 - 1, size=(len(order), 2), dtype=np.int32)
    images, labels = tf.constant(self.images), tf.constant(self.labels)
    settings = self.augment_settings
    if settings and settings["alternating_flip"]:
      flipped = tf.constant(preprocessing.alternating_flip_bits(self.seed, self.num_examples)
                            != bool(epoch % 2))

    def load(indices, seed):
      x = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
      if settings and settings["alternating_flip"]:  # before the other ops, as hflip
        x = flip_where(x, tf.gather(flipped, indices))
      if settings:
        x = augment(x, seed, settings, rows)
      return {"image": preprocessing.normalize(x, self.normalization),
              "label": tf.gather(labels, indices)}

    ds = tf.data.Dataset.from_tensor_slices((order[start:], batch_seeds[start:]))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    return self.dataset(epoch, start).as_numpy_iterator()

  def __iter__(self) -> Iterator[dict]:
    return self.epoch(0)

  def __len__(self) -> int:
    return self.steps_per_epoch


def create_split(data_config, split: str, *, batch_size: int, seed: int = 0) -> InputSplit:
  """The tf.data pipeline for training on `split` under `data_config` (module docstring).

  `batch_size` is global: each of jax.process_count() processes yields its
  batch_size / process_count rows of every batch.
  """
  settings = preprocessing.augment_settings(**dict(data_config.augment))
  images, labels = data_sources.load_split(data_config, split)
  return InputSplit(images, labels, batch_size=batch_size, augment_settings=settings,
                    normalization=data_config.normalization, seed=seed,
                    process_index=jax.process_index(), process_count=jax.process_count())
