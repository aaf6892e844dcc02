"""The on-device pipeline: jit-able batches whose augmentations match tf.data's."""

import collections
import colorsys
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from resnet_jax.data import augmentations, datasets, device_pipeline, tfdata_pipeline
from tests.conftest import data_config, load_script
from tests.test_input_pipeline import _augment as tf_augment
from tests.test_input_pipeline import (_blend_factors, _centroids, _colour_images, _gray,
                                       _marker_images)


def _uint8(images):
  return np.round(images * 255).astype(np.uint8)


def _levels(images):
  """Float images on 8-bit levels as the device pipeline makes them, under jit (XLA's x / 255
  can differ from numpy's, and jax 0.7's from its own outside jit, in the last bit): the
  inputs to compare its outputs with."""
  return np.asarray(jax.jit(lambda x: x.astype(jnp.float32) / np.float32(255))(_uint8(images)))


def _norm(name: str = "minus_one_to_one"):
  return datasets.normalization(data_config("", normalization=name))


def _device_augment(images, **fields):
  """The JAX kernels of augmentations `fields` on one batch (the uint8 levels of `images`)."""
  settings = augmentations.preset("none", **fields)
  n = len(images)
  info = augmentations.BatchInfo(jnp.arange(n), 0, 0, n)
  out = jax.jit(lambda key, x: augmentations.jax_augment(key, x, settings, info))(
      jax.random.key(0), jnp.asarray(_uint8(images)))
  return np.asarray(out)


def _shift_frequencies(images, limit):
  shifts = (_centroids(images) - 16).astype(int)
  return [np.bincount(shifts[:, axis] + limit, minlength=2 * limit + 1) / len(images)
          for axis in (0, 1)]


@pytest.mark.parametrize("fields,limit", [(dict(crop_padding=4), 4), (dict(translate=0.1), 3),
                                          (dict(crop_padding=4, translate=0.1), 7)])
def test_shift_distributions_match_tfdata(fields, limit):
  markers = _marker_images(6000)
  ours = _shift_frequencies(_device_augment(markers, **fields), limit)
  theirs = _shift_frequencies(tf_augment(markers, **fields), limit)
  for axis in (0, 1):
    np.testing.assert_allclose(ours[axis], theirs[axis], atol=0.02)


def test_flips_match_tfdata_and_are_exact():
  images = _levels(np.random.default_rng(0).random((3000, 32, 32, 3)))
  out = _device_augment(images, hflip=0.5, vflip=0.2)
  h, v = np.flip(images, 2), np.flip(images, 1)
  kinds = [np.all(out == x, axis=(1, 2, 3)) for x in (images, h, v, np.flip(h, 1))]
  assert np.all(np.sum(kinds, 0) == 1)  # every image is one exact flip combination
  ours = np.array([k.mean() for k in kinds])
  tf_out = tf_augment(images, hflip=0.5, vflip=0.2)
  theirs = np.array([np.all(tf_out == x, axis=(1, 2, 3)).mean()
                     for x in (images, h, v, np.flip(h, 1))])
  np.testing.assert_allclose(ours, theirs, atol=0.04)
  np.testing.assert_allclose(ours, [0.4, 0.4, 0.1, 0.1], atol=0.04)


def test_device_split_batches_inside_jit_deterministically():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 100).astype(np.int32)
  split = device_pipeline.DeviceSplit(images, labels, batch_size=32,
                                      augment_settings=augmentations.preset("shallow"),
                                      normalization=_norm(), seed=1)
  assert split.steps_per_epoch == 3
  order = split.epoch_order(0)
  assert order.shape == (3, 32) and len(set(np.asarray(order).ravel().tolist())) == 96
  np.testing.assert_array_equal(order, split.epoch_order(0))
  assert not np.array_equal(order, split.epoch_order(1))
  batch = jax.jit(split.get_batch)(split.arrays, order, 1, jax.random.key(3))
  assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].dtype == jnp.float32
  np.testing.assert_array_equal(batch["label"], labels[np.asarray(order[1])])
  pixels = (np.asarray(batch["image"]) * 0.5 + 0.5) * 255  # undo the seed normalisation
  np.testing.assert_allclose(pixels, np.clip(np.round(pixels), 0, 255), atol=1e-3)


def test_input_benchmark_prints_its_json(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["scripts/benchmark_input.py", "--steps", "3",
                                    "--batch_size", "64"])
  load_script("benchmark_input").main()  # in this process: its imports are already paid for
  report = json.loads(capsys.readouterr().out)
  assert report["command"].startswith("scripts/benchmark_input.py")
  kinds = {(r["pipeline"], r["preset"]) for r in report["results"]}
  assert kinds == {("tfdata", "shallow"), ("tfdata", "deep"), ("numpy", "none"),
                   ("device", "shallow")}
  assert all(r["images_per_s"] > 0 for r in report["results"])


def _reflect_crops(image: np.ndarray, pad: int) -> list[np.ndarray]:
  """Every crop of the reflect-padded image (torch's and numpy's reflect, edge not repeated)."""
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  return [padded[y:y + 32, x:x + 32] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]


def test_reflect_crop_is_an_exact_reflect_padded_crop_with_uniform_shifts_on_both_pipelines():
  rng = np.random.default_rng(0)
  images = _levels(rng.random((400, 32, 32, 3)))
  for out in (_device_augment(images, reflect_crop=2), tf_augment(images, reflect_crop=2)):
    which = []
    for image, augmented in zip(images, out):
      matches = [k for k, crop in enumerate(_reflect_crops(image, 2))
                 if np.array_equal(crop, augmented)]
      assert len(matches) == 1  # exactly one of the 25 crops, borders reflected
      which.append(matches[0])
    counts = np.bincount(which, minlength=25) / len(which)
    np.testing.assert_allclose(counts, 1 / 25, atol=0.03)  # uniform over the shifts


def _alternation(batches, orders, images):
  """{example: [flipped in epoch 0, flipped in epoch 1]} from an unaugmented-but-flipped run."""
  flipped = {}
  for epoch_batches, order in zip(batches, orders):
    for batch, indices in zip(epoch_batches, order):
      for image, index in zip(batch, indices):
        original, mirror = images[index], images[index][:, ::-1]
        assert np.array_equal(image, original) != np.array_equal(image, mirror)
        flipped.setdefault(int(index), []).append(bool(np.array_equal(image, mirror)))
  return flipped


def test_alternating_flip_shows_each_image_both_ways_in_two_epochs_on_both_pipelines():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 96).astype(np.int32)
  settings = augmentations.preset("none", alternating_flip=1)
  undo = lambda x: np.round((np.asarray(x) * 0.5 + 0.5) * 255).astype(np.uint8)
  device = device_pipeline.DeviceSplit(images, labels, batch_size=32, augment_settings=settings,
                                       normalization=_norm(), seed=3)
  host = tfdata_pipeline.InputSplit(images, labels, batch_size=32, augment_settings=settings,
                                    normalization=_norm(), seed=3)
  results = []
  for split, order in ((device, lambda e: np.asarray(device.epoch_order(e))),
                       (host, host.plan)):
    batches = [[undo(b["image"]) for b in split.epoch(e)] for e in (0, 1)]
    results.append(_alternation(batches, [order(0), order(1)], images))
  for flipped in results:
    assert len(flipped) == 96 and all(a != b for a, b in flipped.values())
    assert 30 < sum(a for a, _ in flipped.values()) < 66  # a random half in epoch 0
  assert results[0] == results[1]  # the same images, from the same seed, on both pipelines


def test_alternating_flip_excludes_random_horizontal_flips():
  with pytest.raises(ValueError, match=r"alternating_flip=1 replaces random horizontal flips: "
                                       r"set config.data.augment.hflip=0, not 0.5"):
    augmentations.preset("shallow", alternating_flip=1)


def test_no_augmentation_gives_exactly_the_normalised_pixels():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  split = device_pipeline.DeviceSplit(images, np.zeros(64, np.int32), batch_size=32,
                                      augment_settings=augmentations.preset("none"),
                                      normalization=_norm("cifar"))
  order = split.epoch_order(0)
  batch = jax.jit(split.get_batch)(split.arrays, order, 1, jax.random.key(0))
  # As before on-device augmentation existed: normalize_pixels of the gathered uint8, in jit.
  expected = jax.jit(lambda x, i: datasets.normalize_pixels(x[i], _norm("cifar")))(images,
                                                                                  order[1])
  np.testing.assert_array_equal(batch["image"], expected)


def test_every_op_has_both_kernels_and_draws_a_stream_of_its_own():
  """One entry per op, each key in one op; adding an op leaves every other op's draws as they
  were, on both pipelines (its key comes from its name, not its place in the list)."""
  assert len(set(augmentations.FIELDS)) == len(augmentations.FIELDS)
  for op in augmentations.OPS.values():
    assert callable(op.tf_kernel) and callable(op.jax_kernel) and op.fields
  images = _levels(np.random.default_rng(0).random((64, 32, 32, 3)))
  for augment in (_device_augment, tf_augment):
    # A rotation before the crop and a brightness change after it, each too small to move a
    # pixel or change a level: the crops must be exactly the crops alone.
    alone = augment(images, crop_padding=4)
    assert not np.array_equal(alone, images)
    for extra in ({"rotation": 1e-9}, {"brightness": 1e-9}):
      np.testing.assert_array_equal(augment(images, crop_padding=4, **extra), alone)


# --- rotation and zoom: for a given angle or scale, the pixels tf.data's transform picks ---


def _tf_about_centre(images, a, b, c, d):
  """The tf.data kernels' transform with fixed per-image coefficients (its ops draw them)."""
  a, b, c, d = (tf.constant(x, tf.float32) for x in (a, b, c, d))
  return augmentations._tf_transform(  # pylint: disable=protected-access
      tf.constant(images, tf.float32),
      augmentations._tf_about_centre(a, b, c, d, 32.0)).numpy()  # pylint: disable=protected-access


def _tf_rotate_by(images, radians):
  cos, sin = np.cos(radians).astype(np.float32), np.sin(radians).astype(np.float32)
  return _tf_about_centre(images, cos, -sin, sin, cos)  # the tf rotation kernel's matrix


def _tf_zoom_by(images, scales):
  inverse = (1 / scales).astype(np.float32)
  return _tf_about_centre(images, inverse, 0 * inverse, 0 * inverse, inverse)


@pytest.mark.parametrize("op,value", [("rotate", 10.0), ("rotate", -7.3), ("rotate", 33.0),
                                      ("rotate", 45.0), ("zoom", 0.8), ("zoom", 1.13)])
def test_rotation_and_zoom_pick_the_pixels_tfdata_picks(op, value):
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  values = np.full(16, math.radians(value) if op == "rotate" else value, np.float32)
  ours = getattr(augmentations, f"{op}_by")(jnp.asarray(images), jnp.asarray(values))
  theirs = {"rotate": _tf_rotate_by, "zoom": _tf_zoom_by}[op](images, values)
  assert ours.dtype == jnp.uint8
  # Only sampling points on a rounding tie (45 degrees has some: 0.7% of pixels) may go
  # either way, float32 arithmetic differing in the last bit.
  assert np.any(np.asarray(ours) != theirs, -1).mean() < 0.01


def test_rotation_by_90_degrees_is_rot90_on_both_pipelines():
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  for degrees, turns in ((90, 1), (-90, -1)):  # positive: counter-clockwise as displayed
    angles = np.full(4, math.radians(degrees), np.float32)
    expected = np.rot90(images, turns, axes=(1, 2))
    np.testing.assert_array_equal(augmentations.rotate_by(jnp.asarray(images), angles),
                                  expected)
    np.testing.assert_array_equal(_tf_rotate_by(images, angles), expected)


def test_resampling_points_are_computed_at_full_float32_precision():
  """On GPUs a default-precision (TF32) matmul would move nearest-neighbour picks."""
  images, values = jnp.zeros((2, 32, 32, 3), jnp.uint8), jnp.ones(2)
  for op in (augmentations.rotate_by, augmentations.zoom_by):
    dots = [e for e in jax.make_jaxpr(op)(images, values).jaxpr.eqns
            if e.primitive.name == "dot_general"]
    assert dots and all(e.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2 for e in dots)


def test_neutral_settings_leave_images_unchanged():
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  ones = jnp.ones(8)
  np.testing.assert_array_equal(augmentations.rotate_by(jnp.asarray(images), 0 * ones), images)
  np.testing.assert_array_equal(augmentations.zoom_by(jnp.asarray(images), ones), images)
  floats = jnp.asarray(images / np.float32(255))
  for name in ("brightness", "contrast", "saturation"):
    np.testing.assert_array_equal(augmentations.jax_jitter_op(name, floats, ones), floats)
  # Hue goes through HSV and back in float32 (on tf.data too): exact up to rounding,
  # and exactly the same 8-bit levels.
  unchanged = augmentations.jax_jitter_op("hue", floats, 0 * ones)
  np.testing.assert_allclose(unchanged, floats, atol=1e-6)
  np.testing.assert_array_equal(_uint8(np.asarray(unchanged)), images)


def _place_frequencies(out):
  """{centroid of the marker: fraction of the images with the marker there}."""
  places = collections.Counter(tuple(p) for p in np.round(_centroids(out), 2))
  return {place: count / len(out) for place, count in places.items()}


def test_rotation_and_zoom_distributions_match_tfdata():
  markers = _marker_images(3000, y=15, x=25, size=2)  # a blob centred at (25.5, 15.5)
  for fields in (dict(rotation=10.0), dict(zoom=0.2)):
    # Nearest neighbour puts the blob in one of a few places; for a given angle or
    # scale both pipelines pick the same one, so the places' frequencies must match.
    ours = _place_frequencies(_device_augment(markers, **fields))
    theirs = _place_frequencies(tf_augment(markers, **fields))
    places = sorted(set(ours) | set(theirs))
    assert len(places) >= 5
    np.testing.assert_allclose([ours.get(p, 0) for p in places],
                               [theirs.get(p, 0) for p in places], atol=0.03)


# --- colour jitter -------------------------------------------------------------------------


@pytest.mark.parametrize("name,factor", [("brightness", 1.17), ("contrast", 0.84),
                                         ("saturation", 1.15), ("hue", -0.07)])
def test_jitter_ops_compute_what_tfdata_computes(name, factor):
  images = _levels(_colour_images(16, low=0.0, high=1.0))
  factors = np.linspace(1, factor, 16, dtype=np.float32)
  ours = augmentations.jax_jitter_op(name, jnp.asarray(images), jnp.asarray(factors))
  theirs = augmentations.tf_jitter_op(name, tf.constant(images), tf.constant(factors)).numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-6)


def _hue_turns(out, images):
  before, after = (tf.image.rgb_to_hsv(x).numpy()[..., 0] for x in (images, out))
  return np.median(((after - before + 0.5) % 1.0 - 0.5).reshape(len(images), -1), 1)


# Each component's per-image factor, recovered from the images and the output.
_FACTORS = {
    "brightness": lambda out, x: np.median((out / x).reshape(len(x), -1), 1),
    "contrast": lambda out, x: _blend_factors(out, x, _gray(x).mean((1, 2))[:, None, None, None]),
    "saturation": lambda out, x: _blend_factors(out, x, _gray(x)[..., None]),
    "hue": _hue_turns,
}


@pytest.mark.parametrize("name", augmentations.JITTER_FIELDS)
def test_jitter_factor_distributions_match_tfdata(name):
  images = _levels(_colour_images(800, low=0.1 if name == "hue" else 0.3,
                                  high=0.9 if name == "hue" else 0.7))
  amount = 0.1 if name == "hue" else 0.2
  low, high = (-amount, amount) if name == "hue" else (1 - amount, 1 + amount)
  quantiles = np.linspace(0.05, 0.95, 10)
  expected = low + quantiles * (high - low)  # uniform on [low, high]
  for out in (_device_augment(images, **{name: amount}), tf_augment(images, **{name: amount})):
    factors = _FACTORS[name](out, images)
    assert low - 1e-3 <= factors.min() and factors.max() <= high + 1e-3
    np.testing.assert_allclose(np.quantile(factors, quantiles), expected,
                               atol=0.07 * (high - low))


def _rotate_hue(colour, turns):
  h, s, v = colorsys.rgb_to_hsv(*colour)
  return np.array(colorsys.hsv_to_rgb((h + turns) % 1.0, s, v))


def _jitter_orders(colours, out):
  """Per constant-colour image: 0 saturation then hue, 1 hue then saturation, -1 too close.

  Blending with gray keeps the HSV hue and scales max - min by the factor s; a hue
  rotation keeps max and min. So either way s is the ratio of (max - min) and the
  hue shift the difference of hues; the two orders then differ by (1 - s) times the
  change of gray by the hue rotation.
  """
  orders = []
  for x, y in zip(colours, out):
    s = np.ptp(y) / np.ptp(x)
    turns = colorsys.rgb_to_hsv(*y)[0] - colorsys.rgb_to_hsv(*x)[0]
    blend = lambda c, s=s: s * c + (1 - s) * _gray(c)
    errors = [np.abs(y - _rotate_hue(blend(x), turns)).max(),
              np.abs(y - blend(_rotate_hue(x, turns))).max()]
    assert min(errors) < 1e-4  # the output is one of the two orders
    orders.append(int(np.argmin(errors)) if max(errors) > 0.01 else -1)
  return np.array(orders)


def test_jitter_order_is_drawn_per_image_on_both_pipelines():
  n = 1500
  rng = np.random.default_rng(0)
  # Pale colours (channels in [0.4, 0.6]: no clipping), max - min = 0.2, every hue.
  colours = np.stack([rng.permutation([0.4, 0.6, u]) for u in rng.uniform(0.4, 0.6, n)])
  images = _levels(np.broadcast_to(colours[:, None, None], (n, 32, 32, 3)))
  for out in (_device_augment(images, saturation=0.9, hue=0.5),
              tf_augment(images, saturation=0.9, hue=0.5)):
    orders = _jitter_orders(images[:, 0, 0].astype(np.float64), out[:, 0, 0])
    told = orders[orders >= 0]
    assert len(told) > n / 3
    assert abs(told.mean() - 0.5) < 0.06  # each order for half the images


def _cutout_boxes(batch: np.ndarray) -> np.ndarray:
  """[n, 4] (top, bottom, left, right) of each image's zeroed box, checking it is one box."""
  erased = np.all(batch == 0, axis=-1)
  rows, cols = erased.any(2), erased.any(1)
  np.testing.assert_array_equal(erased, rows[:, :, None] & cols[:, None, :])  # a rectangle
  first, last = lambda m: m.argmax(1), lambda m: m.shape[1] - m[:, ::-1].argmax(1)
  return np.stack([first(rows), last(rows), first(cols), last(cols)], 1)


def test_cutout_zeroes_a_clipped_square_at_a_uniform_centre_on_both_pipelines():
  """The square enters the network as zeros (the normalisation mean before normalising),
  is clipped at the border, and follows a uniform centre; seeded, and resumable mid-epoch."""
  n, size = 3000, 8
  images = np.full((n, 32, 32, 3), 255, np.uint8)
  labels = np.zeros(n, np.int32)
  settings = augmentations.preset("none", cutout=size)
  make = {"device": lambda seed: device_pipeline.DeviceSplit(
              images, labels, batch_size=1000, augment_settings=settings,
              normalization=_norm("cifar"), seed=seed),
          "tfdata": lambda seed: tfdata_pipeline.InputSplit(
              images, labels, batch_size=1000, augment_settings=settings,
              normalization=_norm("cifar"), seed=seed)}
  centres = np.arange(32)
  expected = np.bincount(np.maximum(0, centres - size // 2), minlength=32) / 32
  for name, split in make.items():
    batches = [np.asarray(b["image"]) for b in split(1).epoch(0)]
    kept = batches[0][np.all(batches[0] != 0, axis=-1)]
    np.testing.assert_allclose(kept, np.broadcast_to(kept[0], kept.shape))  # untouched pixels
    boxes = _cutout_boxes(np.concatenate(batches))
    heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    assert heights.max() == widths.max() == size and heights.min() == size // 2, name
    for axis in (0, 2):  # the top and left edges: uniform centres, clipped at 0
      np.testing.assert_allclose(np.bincount(boxes[:, axis], minlength=32) / n, expected,
                                 atol=0.02, err_msg=name)
    np.testing.assert_array_equal(np.asarray(next(split(1).epoch(0, 2))["image"]), batches[2])
    assert not np.array_equal(np.asarray(next(split(2).epoch(0))["image"]), batches[0])


def test_cutout_size_is_a_whole_number_of_pixels():
  with pytest.raises(ValueError, match=r"config.data.augment.cutout=2.5 must be a whole number"):
    augmentations.preset("none", cutout=2.5)
