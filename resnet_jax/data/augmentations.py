"""Training augmentations: each one entry of `OPS`, its tf.data and JAX kernels side by side.

The ops, in the order they apply (the original project's torchvision Compose order), each
with its keys in `config.data.augment` (0 disables it):
  alternating_flip  1: instead of random horizontal flips, each image is flipped on
                    alternate epochs (a random half in even epochs, the other half
                    in odd ones): every image is seen both ways every two epochs,
                    where random flips leave a quarter seen one way (airbench);
                    needs hflip 0
  hflip, vflip      probability of a horizontal / vertical flip
  rotation          degrees: angle ~ U(-r, r), nearest neighbour, zero fill
                    (torchvision RandomRotation)
  zoom              scale ~ U(1 - z, 1 + z) about the centre, nearest, zero fill
  crop_padding      RandomCrop(size, padding=p): a uniform integer shift in [-p, p]
                    per axis with zero fill, which is exactly pad-then-crop
  translate         fraction f: shift = round(U(-f W, f W)) pixels in x, f H in y
                    (torchvision RandomAffine(translate=(f, f)))
  reflect_crop      pixels p: a uniform integer shift in [-p, p] per axis with the
                    borders reflected, not zero-filled (airbench's reflect-padded
                    random crop: no black bands for the net to learn)
  color_jitter      brightness, contrast, saturation, hue: torchvision ColorJitter,
                    factors ~ U(1 - b, 1 + b) etc., hue shift ~ U(-h, h), the
                    enabled ones in a random order per image, clipped to [0, 1]
  cutout            pixels s: an s x s square centred on a uniformly drawn pixel,
                    clipped at the border, set to the normalisation mean, so the
                    network sees zeros there (DeVries & Taylor 2017, who cut out
                    after normalising): the net learns from partial views

An `Op` holds its keys, their checks, and two kernels with the same distribution
(tests/test_device_pipeline.py compares them): `tf_kernel` for the tf.data
pipeline (float32 images in [0, 1], stateless seeds, drawn for the global batch
and sliced to this process's rows) and `jax_kernel` for the device pipeline
(uint8 pixels, or [0, 1] floats for an op marked `on_floats`, under jit). Each op
draws from its own seed or key, derived from the batch's and the op's name, so an
op added to the list leaves every other op's random stream as it was.

TensorFlow is imported only by the tf kernels, when the tf.data pipeline runs.
"""

import dataclasses
import functools
import math
import numbers
import zlib
from typing import Any, Callable, Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import optional_tf
from resnet_jax.data import datasets

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
JITTER_FIELDS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class BatchInfo:
  """What an op may need of its batch beyond the images.

  indices: the images' example indices in the split; parity: the epoch's
  (epoch % 2); seed, num_examples: the run's seed and the split's size; rows:
  tf.data only, (start, stop, global batch) of this process's rows; mean: the
  normalisation's per-channel mean in [0, 1], which erased pixels take.
  """

  indices: Any
  parity: Any
  seed: int
  num_examples: int
  rows: tuple[int, int, int] | None = None
  mean: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _tf():
  return optional_tf.tensorflow("config.data.pipeline='tfdata'")


def _tf_uniform(seed, info: BatchInfo, shape, low, high, dtype=None):
  """U(low, high) for the global batch, sliced to this process's rows."""
  tf = _tf()
  start, stop, global_batch = info.rows
  values = tf.random.stateless_uniform((global_batch, *shape), seed=seed, minval=low,
                                       maxval=high, dtype=dtype or tf.float32)
  return values[start:stop]


def _jax_uniform(key, images, shape=(), low=0.0, high=1.0):
  return jax.random.uniform(key, (images.shape[0], *shape), minval=low, maxval=high)


def _name_key(name: str) -> int:
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _tf_seed_for(seed, name: str):
  return _tf().random.experimental.stateless_fold_in(seed, _name_key(name))


def _jax_key_for(key, name: str):
  return jax.random.fold_in(key, _name_key(name))


# --- alternating_flip: each image mirrored in every other epoch ------------------------


def alternating_flip_bits(seed: int, num_examples: int) -> np.ndarray:
  """Which examples are flipped in even epochs (odd epochs flip the others); from `seed`."""
  return np.random.default_rng([seed, 2]).random(num_examples) < 0.5


def _tf_alternating_flip(images, seed, on, info: BatchInfo):
  del seed, on  # the flips follow the examples and the epoch, not the batch's seed
  tf = _tf()
  bits = tf.constant(alternating_flip_bits(info.seed, info.num_examples))
  flipped = tf.gather(bits, info.indices) != bool(info.parity)
  return tf.where(flipped[:, None, None, None], tf.reverse(images, [2]), images)


def _jax_alternating_flip(key, images, on, info: BatchInfo):
  del key, on
  bits = jnp.asarray(alternating_flip_bits(info.seed, info.num_examples))
  flipped = bits[info.indices] != (info.parity == 1)
  return jnp.where(flipped[:, None, None, None], jnp.flip(images, 2), images)


def _check_alternating_flip(settings) -> None:
  if settings["alternating_flip"] not in (0, 1):
    raise ValueError(f"config.data.augment.alternating_flip={settings['alternating_flip']} "
                     "must be 0 or 1")
  if settings["alternating_flip"] and settings["hflip"]:
    raise ValueError(f"config.data.augment.alternating_flip=1 replaces random horizontal "
                     f"flips: set config.data.augment.hflip=0, not {settings['hflip']}")


# --- hflip, vflip: mirror axis 2 (W) or 1 (H) with probability p -----------------------


def _tf_flip(axis: int):
  def kernel(images, seed, p, info):
    flipped = _tf_uniform(seed, info, (), 0.0, 1.0) < p
    return _tf().where(flipped[:, None, None, None], _tf().reverse(images, [axis]), images)
  return kernel


def _jax_flip(axis: int):
  def kernel(key, images, p, info):
    del info
    flipped = _jax_uniform(key, images) < p
    return jnp.where(flipped[:, None, None, None], jnp.flip(images, axis), images)
  return kernel


def _probability(field: str):
  def check(settings):
    if not 0 <= settings[field] <= 1:
      raise ValueError(f"config.data.augment.{field}={settings[field]} is a probability, "
                       "not in [0, 1]")
  return check


def _below_one(*fields: str):
  def check(settings):
    for field in fields:
      if settings[field] >= 1:
        raise ValueError(f"config.data.augment.{field}={settings[field]} must be < 1")
  return check


# --- rotation, zoom: nearest-neighbour resampling about the centre, zero fill ----------


def _tf_transform(images, transforms):
  """Per-image projective transforms: nearest neighbour, zero fill (torchvision's defaults)."""
  tf = _tf()
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
      fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")


def _tf_about_centre(a, b, c, d, size):
  """Output p samples input centre + [[a, b], [c, d]] (p - centre)."""
  centre = (size - 1) / 2
  zero = _tf().zeros_like(a)
  return _tf().stack([a, b, centre - a * centre - b * centre,
                      c, d, centre - c * centre - d * centre, zero, zero], axis=1)


def _tf_size(images):
  return _tf().cast(_tf().shape(images)[1], _tf().float32)


def _tf_rotate(images, seed, degrees, info):
  angle = _tf_uniform(seed, info, (), -degrees, degrees) * (math.pi / 180)
  cos, sin = _tf().cos(angle), _tf().sin(angle)
  return _tf_transform(images, _tf_about_centre(cos, -sin, sin, cos, _tf_size(images)))


def _tf_zoom(images, seed, amount, info):
  inverse = 1 / _tf_uniform(seed, info, (), 1 - amount, 1 + amount)
  return _tf_transform(images, _tf_about_centre(inverse, 0 * inverse, 0 * inverse, inverse,
                                                _tf_size(images)))


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
  (row, column), as the tf kernel's (x, y) transform: the same pixels.
  """
  return _resample(pix.rotate, images, angles)


def _zoom_one(image, scale, **interpolation):
  """Output p samples input centre + (p - centre) / scale (the tf kernel's map)."""
  centre = (jnp.asarray(image.shape, jnp.float32) - 1) / 2
  inverse = jnp.stack([1 / scale, 1 / scale, jnp.ones_like(scale)])  # the channel stays put
  return pix.affine_transform(image, inverse, offset=centre * (1 - inverse), **interpolation)


def zoom_by(images: jax.Array, scales: jax.Array) -> jax.Array:
  """Image i scaled by scales[i] about the centre (pix has no zoom: an affine map)."""
  return _resample(_zoom_one, images, scales)


def _jax_rotate(key, images, degrees, info):
  del info
  return rotate_by(images, jnp.radians(_jax_uniform(key, images, (), -degrees, degrees)))


def _jax_zoom(key, images, amount, info):
  del info
  return zoom_by(images, _jax_uniform(key, images, (), 1 - amount, 1 + amount))


# --- crop_padding, translate, reflect_crop: integer shifts ------------------------------


def _tf_shift_transforms(dx, dy):
  """Moves content by (dx, dy) pixels: output (x, y) samples input (x - dx, y - dy)."""
  one, zero = _tf().ones_like(dx), _tf().zeros_like(dx)
  return _tf().stack([one, zero, -dx, zero, one, -dy, zero, zero], axis=1)


def _tf_crop(images, seed, padding, info):
  tf = _tf()
  pad = int(padding)
  shift = tf.cast(_tf_uniform(seed, info, (2,), -pad, pad + 1, tf.int32), tf.float32)
  return _tf_transform(images, _tf_shift_transforms(shift[:, 0], shift[:, 1]))


def _tf_translate(images, seed, fraction, info):
  tf = _tf()
  limit = fraction * tf.cast(tf.shape(images)[2:0:-1], tf.float32)  # (width, height): dx, dy
  shift = tf.round(_tf_uniform(seed, info, (2,), -limit, limit))
  return _tf_transform(images, _tf_shift_transforms(shift[:, 0], shift[:, 1]))


def _tf_reflect_crop(images, seed, pixels, info):
  pad = int(pixels)
  padded = _tf().pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  shifted = _tf_crop(padded, seed, pad, info)  # the shift never reaches past the padding
  size = _tf().shape(images)[1]
  return shifted[:, pad:pad + size, pad:pad + size]


def shift(images: jax.Array, shifts: jax.Array, limit: int, mode: str = "constant") -> jax.Array:
  """Moves each image's content by integer (dx, dy) in [-limit, limit] (`shifts` [b, 2]);
  `mode` is jnp.pad's fill (zeros, or "reflect": the borders mirrored without repeating
  the edge, as torch's). The crops' and translation's kernel, and test-time augmentation's."""
  padded = jnp.pad(images, ((0, 0), (limit, limit), (limit, limit), (0, 0)), mode=mode)
  size = images.shape[1:]

  def one(image, shift):
    return jax.lax.dynamic_slice(image, (limit - shift[1], limit - shift[0], 0), size)

  return jax.vmap(one)(padded, shifts)


def _jax_crop(key, images, padding, info):
  del info
  pad = int(padding)
  return shift(images, jax.random.randint(key, (images.shape[0], 2), -pad, pad + 1), pad)


def _jax_translate(key, images, fraction, info):
  del info
  limit = fraction * np.array([images.shape[2], images.shape[1]], np.float32)  # dx, dy
  shifts = jnp.round(_jax_uniform(key, images, (2,), -limit, limit))
  return shift(images, shifts.astype(jnp.int32), int(np.ceil(limit.max())))


def _jax_reflect_crop(key, images, pixels, info):
  del info
  pad = int(pixels)
  return shift(images, jax.random.randint(key, (images.shape[0], 2), -pad, pad + 1), pad,
                "reflect")


# --- color_jitter: torchvision's ColorJitter, the components in a random order ----------


def _jitter_range(name: str, amount: float) -> tuple[float, float]:
  return (-amount, amount) if name == "hue" else (max(0.0, 1 - amount), 1 + amount)


def tf_jitter_op(name: str, images, factor):
  """One ColorJitter component with per-image `factor` [b], clipped to [0, 1]."""
  tf = _tf()
  f = factor[:, None, None, None]
  gray = lambda x: tf.reduce_sum(x * tf.constant(_GRAY_WEIGHTS), -1, keepdims=True)
  if name == "brightness":
    out = images * f
  elif name == "contrast":
    mean = tf.reduce_mean(gray(images), axis=[1, 2, 3], keepdims=True)
    out = f * images + (1 - f) * mean
  elif name == "saturation":
    out = f * images + (1 - f) * gray(images)
  else:  # hue: rotate the hue channel by `factor` turns
    h, s, v = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
    out = tf.image.hsv_to_rgb(tf.stack([tf.math.floormod(h + f[..., 0], 1.0), s, v], -1))
  return tf.clip_by_value(out, 0.0, 1.0)


def _tf_color_jitter(images, seed, settings, info):
  tf = _tf()
  jitter = [name for name in JITTER_FIELDS if settings[name]]
  factors = {name: _tf_uniform(_tf_seed_for(seed, name), info, (),
                               *_jitter_range(name, settings[name])) for name in jitter}
  # Slot by slot, each image goes to the op its order names: partition, apply,
  # stitch back, so every image pays for each op once (hue's HSV round trip is
  # the costly one).
  order = tf.argsort(_tf_uniform(_tf_seed_for(seed, "order"), info, (len(jitter),), 0.0, 1.0),
                     axis=1)
  positions = tf.range(tf.shape(images)[0])
  for slot in range(len(jitter)):
    parts = tf.dynamic_partition(images, order[:, slot], len(jitter))
    where = tf.dynamic_partition(positions, order[:, slot], len(jitter))
    images = tf.dynamic_stitch(where, [
        tf_jitter_op(name, part, tf.gather(factors[name], rows))
        for name, part, rows in zip(jitter, parts, where)])
  return images


def _jax_gray(images: jax.Array) -> jax.Array:
  # A weighted sum, not a matmul: TF32 on GPUs would round the weights.
  return jnp.sum(images * jnp.asarray(_GRAY_WEIGHTS, images.dtype), -1, keepdims=True)


def jax_jitter_op(name: str, images: jax.Array, factor: jax.Array) -> jax.Array:
  """One ColorJitter component with per-image `factor` [b], clipped to [0, 1]."""
  f = factor[:, None, None, None]
  if name == "brightness":  # torchvision scales; pix.adjust_brightness adds
    out = images * f
  elif name == "contrast":  # towards the gray mean; pix.adjust_contrast uses channel means
    mean = jnp.mean(_jax_gray(images), axis=(1, 2, 3), keepdims=True)
    out = f * images + (1 - f) * mean
  elif name == "saturation":  # towards gray; pix.adjust_saturation scales HSV saturation
    out = f * images + (1 - f) * _jax_gray(images)
  else:  # hue: pix's HSV round trip with the hue shifted by `factor` turns (mod 1), as ours
    out = pix.adjust_hue(images, f[..., 0])
  return jnp.clip(out, 0.0, 1.0)


def _jax_color_jitter(key, images, settings, info):
  del info
  jitter = [name for name in JITTER_FIELDS if settings[name]]
  factors = {name: _jax_uniform(_jax_key_for(key, name), images, (),
                                *_jitter_range(name, settings[name])) for name in jitter}
  # Slot by slot, every op runs on the whole batch and each image keeps the output
  # of the op its order names (a switch under vmap would run every branch too).
  order = jnp.argsort(_jax_uniform(_jax_key_for(key, "order"), images, (len(jitter),)), axis=1)
  for slot in range(len(jitter)):
    chosen = order[:, slot, None, None, None]
    images = jnp.select([chosen == k for k in range(len(jitter))],
                        [jax_jitter_op(name, images, factors[name]) for name in jitter])
  return images


def _check_jitter(settings) -> None:
  _below_one("brightness", "contrast", "saturation")(settings)
  if settings["hue"] > 0.5:
    raise ValueError(f"config.data.augment.hue={settings['hue']} must be <= 0.5")


# --- cutout: a square of the mean colour at a uniform centre ------------------------------


def _square(rows, cols, centres, size: int):
  """[b, H, W, 1] masks of the size x size squares about `centres` [b, 2] (y, x), clipped
  by the image's edges; `rows` [H, 1] and `cols` [1, W] count pixels."""
  top, left = (centres[:, axis][:, None, None] - size // 2 for axis in (0, 1))
  inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
  return inside[..., None]


def _tf_cutout(images, seed, size, info):
  tf = _tf()
  height, width = images.shape[1], images.shape[2]
  centres = tf.stack([_tf_uniform(_tf_seed_for(seed, axis), info, (), 0, extent, tf.int32)
                      for axis, extent in (("y", height), ("x", width))], axis=1)
  mask = _square(tf.range(height)[:, None], tf.range(width)[None, :], centres, int(size))
  return tf.where(mask, tf.constant(info.mean, tf.float32), images)


def _jax_cutout(key, images, size, info):
  height, width = images.shape[1:3]
  centres = jnp.stack([jax.random.randint(_jax_key_for(key, axis), (images.shape[0],), 0, extent)
                       for axis, extent in (("y", height), ("x", width))], axis=1)
  mask = _square(jnp.arange(height)[:, None], jnp.arange(width)[None, :], centres, int(size))
  return jnp.where(mask, jnp.asarray(info.mean, images.dtype), images)


def _whole_pixels(field: str):
  def check(settings):
    if settings[field] != int(settings[field]):
      raise ValueError(f"config.data.augment.{field}={settings[field]} must be a whole number "
                       "of pixels")
  return check


def _nonnegative(settings) -> None:
  """No limit but the one every key has (`check`: >= 0)."""


# --- the registry -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
  """One augmentation: its keys in config.data.augment, their checks, and its two kernels.

  Kernels take (images, seed, amount, info) on tf.data and (key, images, amount,
  info) on the device; `amount` is the op's one setting, or a dict of its
  settings when it has several. `check(settings)` raises a ValueError naming the
  key (every key is also checked to be >= 0).
  """

  fields: tuple[str, ...]
  check: Callable[[Mapping[str, float]], None]
  tf_kernel: Callable
  jax_kernel: Callable
  on_floats: bool = False  # device pipeline: takes [0, 1] floats, not uint8 pixels

  def enabled(self, settings: Mapping[str, float]) -> bool:
    return any(settings[field] for field in self.fields)

  def amount(self, settings: Mapping[str, float]):
    if len(self.fields) == 1:
      return settings[self.fields[0]]
    return {field: settings[field] for field in self.fields}


OPS = {
    "alternating_flip": Op(("alternating_flip",), _check_alternating_flip,
                           _tf_alternating_flip, _jax_alternating_flip),
    "hflip": Op(("hflip",), _probability("hflip"), _tf_flip(2), _jax_flip(2)),
    "vflip": Op(("vflip",), _probability("vflip"), _tf_flip(1), _jax_flip(1)),
    "rotation": Op(("rotation",), _nonnegative, _tf_rotate, _jax_rotate),
    "zoom": Op(("zoom",), _below_one("zoom"), _tf_zoom, _jax_zoom),
    "crop_padding": Op(("crop_padding",), _whole_pixels("crop_padding"), _tf_crop, _jax_crop),
    "translate": Op(("translate",), _nonnegative, _tf_translate, _jax_translate),
    "reflect_crop": Op(("reflect_crop",), _whole_pixels("reflect_crop"), _tf_reflect_crop,
                       _jax_reflect_crop),
    "color_jitter": Op(JITTER_FIELDS, _check_jitter, _tf_color_jitter, _jax_color_jitter,
                       on_floats=True),
    "cutout": Op(("cutout",), _whole_pixels("cutout"), _tf_cutout, _jax_cutout,
                 on_floats=True),
}
FIELDS = tuple(field for op in OPS.values() for field in op.fields)
PRESETS = {
    "none": {},
    # The original project's shallow notebook: RandomHorizontalFlip, RandomCrop(32, padding=4).
    "shallow": {"hflip": 0.5, "crop_padding": 4},
    # The original project's deep notebook: flips both ways, RandomRotation(10), RandomCrop(32, 4),
    # RandomAffine(translate=(0.1, 0.1)), ColorJitter(0.2, 0.2, 0.2, 0.1).
    "deep": {"hflip": 0.5, "vflip": 0.5, "rotation": 10.0, "crop_padding": 4,
             "translate": 0.1, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
             "hue": 0.1},
}


def check(settings: Mapping[str, float]) -> None:
  """Validates an augmentation mapping (a dict or ConfigDict); errors name the bad key."""
  unknown = sorted(set(settings) - set(FIELDS))
  if unknown:
    raise ValueError(f"config.data.augment has unknown augmentation(s) {unknown}; "
                     f"known: {list(FIELDS)}")
  settings = {field: settings.get(field, 0) for field in FIELDS}
  for field, value in settings.items():
    # NaN passes every comparison and inf every upper bound: both would reach the kernels.
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
      raise ValueError(f"config.data.augment.{field}={value!r} must be a finite number >= 0")
  for op in OPS.values():
    op.check(settings)


def preset(name: str = "none", **overrides: float) -> dict[str, float]:
  """Every augmentation key for preset `name` (PRESETS), with overrides; errors name the bad
  key."""
  if name not in PRESETS:
    raise ValueError(f"augmentation preset {name!r} is not one of {sorted(PRESETS)}")
  result = {field: 0.0 for field in FIELDS}
  result.update(PRESETS[name])
  result.update(overrides)
  check(result)
  return result


def tf_augment(images, seed, settings: Mapping[str, float], info: BatchInfo):
  """The enabled ops on float32 images [b, H, W, 3] in [0, 1]; `seed` is the batch's
  stateless int32 [2] seed."""
  for name, op in OPS.items():
    if op.enabled(settings):
      images = op.tf_kernel(images, _tf_seed_for(seed, name), op.amount(settings), info)
  return images


def jax_augment(key: jax.Array, images: jax.Array, settings: Mapping[str, float],
                info: BatchInfo) -> jax.Array:
  """The enabled ops on uint8 images [b, H, W, 3] (static `settings`), under jit; returns
  float32 in [0, 1]. Pixels stay uint8 until the first op that needs floats."""
  unit = False
  for name, op in OPS.items():
    if op.enabled(settings):
      if op.on_floats and not unit:
        images, unit = datasets.to_unit(images), True
      images = op.jax_kernel(_jax_key_for(key, name), images, op.amount(settings), info)
  return images if unit else datasets.to_unit(images)
