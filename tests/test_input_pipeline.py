"""The tf.data pipeline: exact contents, determinism, shards, augmentations."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax.data import augmentations, datasets, sources, tfdata_pipeline
from tests.conftest import data_config


def _undo(images, normalization="minus_one_to_one"):
  mean, std = datasets.normalization(data_config("", normalization=normalization))
  return np.round((images * std + mean) * 255).astype(np.int64)


def _split(config, batch_size: int, seed: int = 0) -> tfdata_pipeline.InputSplit:
  """The tf.data pipeline over config's train split, as batches.train_batches builds it."""
  images, labels = sources.load_split(config, "train")
  return tfdata_pipeline.InputSplit(images, labels, batch_size=batch_size,
                                    augment_settings=dict(config.augment),
                                    normalization=datasets.normalization(config), seed=seed)


def test_train_order_is_seeded_per_epoch_and_drops_the_remainder(cifar_dir):
  config = data_config(cifar_dir[0])
  split, again = _split(config, 32, seed=3), _split(config, 32, seed=3)
  epoch0 = [b["label"] for b in split.epoch(0)]
  assert len(epoch0) == 3 and all("mask" not in b for b in split.epoch(0))
  np.testing.assert_array_equal(epoch0, [b["label"] for b in again.epoch(0)])
  images0 = np.concatenate([b["image"] for b in split.epoch(0)])
  images1 = np.concatenate([b["image"] for b in split.epoch(1)])
  assert not np.array_equal(images0, images1)
  # Without augmentation, an epoch is 96 distinct examples of the 100.
  flat = _undo(images0).reshape(96, -1)
  assert len({row.tobytes() for row in flat}) == 96


def test_process_shards_are_disjoint_and_make_the_single_process_batch(cifar_dir):
  images, labels = sources.load_split(data_config(cifar_dir[0]), "train")
  settings = augmentations.preset("deep")

  def split(index, count):
    return tfdata_pipeline.InputSplit(
        images, labels, batch_size=32, augment_settings=settings,
        normalization=datasets.normalization(data_config("")), seed=5, process_index=index,
        process_count=count)

  whole = list(split(0, 1).epoch(2))
  parts = [list(split(i, 2).epoch(2)) for i in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([parts[0][step][key], parts[1][step][key]]))


def test_mock_tfds_flows_through_the_same_pipeline(cifar_dir, monkeypatch):
  monkeypatch.setattr(sources, "_reachable", lambda host: True)
  expected = next(_split(data_config(cifar_dir[0]), 16).epoch(0))
  with tfds.testing.mock_data(num_examples=64):
    batches = list(_split(data_config("", source="tfds"), 16).epoch(0))
  assert len(batches) == 4
  for batch in batches:
    for key in ("image", "label"):
      assert batch[key].shape == expected[key].shape and batch[key].dtype == expected[key].dtype
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["label"].min() >= 0 and batch["label"].max() < 10


# --- augmentations, each checked for its defining property -------------------------------


def _augment(images, preset="none", seed=0, **fields):
  """The tf.data kernels of augmentations `fields` on one batch of float images in [0, 1]."""
  settings = augmentations.preset(preset, **fields)
  n = len(images)
  info = augmentations.BatchInfo(tf.range(n), 0, seed, n, rows=(0, n, n))
  out = augmentations.tf_augment(tf.constant(images, tf.float32), tf.constant([seed, 1]),
                                 settings, info)
  return out.numpy()


def _marker_images(n, y=16, x=16, size=1):
  images = np.zeros((n, 32, 32, 3), np.float32)
  images[:, y:y + size, x:x + size] = 1.0
  return images


def _centroids(images):
  """(x, y) centroid of each image's non-zero pixels."""
  weights = images[..., 0]
  ys, xs = np.mgrid[:32, :32]
  total = weights.sum((1, 2))
  return np.stack([(weights * xs).sum((1, 2)) / total, (weights * ys).sum((1, 2)) / total], 1)


@pytest.mark.parametrize("name,axis", [("hflip", 2), ("vflip", 1)])
def test_flips_mirror_exactly_with_their_probability(name, axis):
  images = np.random.default_rng(0).random((2000, 32, 32, 3)).astype(np.float32)
  out = _augment(images, **{name: 0.3})
  flipped = np.all(out == np.flip(images, axis), axis=(1, 2, 3))
  kept = np.all(out == images, axis=(1, 2, 3))
  assert np.all(flipped ^ kept)
  assert abs(flipped.mean() - 0.3) < 0.04


def test_crop_with_padding_is_a_uniform_integer_shift_with_zero_fill():
  out = _augment(_marker_images(4000), crop_padding=4)
  shifts = _centroids(out) - 16
  assert np.all(shifts == np.round(shifts)) and np.abs(shifts).max() == 4
  for axis in (0, 1):
    frequencies = np.bincount(shifts[:, axis].astype(int) + 4, minlength=9) / 4000
    np.testing.assert_allclose(frequencies, 1 / 9, atol=0.025)
  ones = _augment(np.ones((200, 32, 32, 3), np.float32), crop_padding=4)
  zero_rows = np.sum(np.all(ones[..., 0] == 0, axis=2), axis=1)  # rows zero-filled by dy
  assert zero_rows.max() == 4 and np.all(ones[ones != 0] == 1)


def test_translation_follows_torchvision_rounding():
  out = _augment(_marker_images(6000), translate=0.1)  # max 3.2 pixels
  shifts = (_centroids(out) - 16).astype(int)
  expected = np.array([0.7, 1, 1, 1, 1, 1, 0.7]) / 6.4  # P(round(U(-3.2, 3.2)) = -3..3)
  for axis in (0, 1):
    frequencies = np.bincount(shifts[:, axis] + 3, minlength=7) / 6000
    np.testing.assert_allclose(frequencies, expected, atol=0.02)


def test_rotation_stays_within_its_angle_about_the_centre():
  images = _marker_images(2000, y=15, x=25, size=2)  # blob centred at (25.5, 15.5)
  out = _augment(images, rotation=10.0)
  dx, dy = (_centroids(out) - 15.5).T
  angles = np.degrees(np.arctan2(dy, dx))
  radius = np.hypot(dx, dy)
  assert np.abs(angles).max() <= 10 + 4  # nearest-neighbour sampling blurs a degree or few
  assert angles.std() > 4 and abs(angles.mean()) < 0.5
  np.testing.assert_allclose(radius, 10, atol=0.8)


def test_zoom_scales_distances_from_the_centre_within_its_range():
  images = _marker_images(2000, y=15, x=25, size=2)
  radius = np.hypot(*(_centroids(_augment(images, zoom=0.2)) - 15.5).T)
  assert 0.8 * 10 - 0.8 <= radius.min() and radius.max() <= 1.2 * 10 + 0.8
  assert radius.std() > 0.7


def _colour_images(n, low=0.3, high=0.7, gray=False):
  images = np.random.default_rng(1).uniform(low, high, (n, 32, 32, 3)).astype(np.float32)
  return np.repeat(images[..., :1], 3, -1) if gray else images


def _gray(x):
  return x @ np.array([0.2989, 0.587, 0.114], np.float32)


def test_brightness_scales_each_image_by_one_factor_in_range():
  images = _colour_images(500)
  ratio = _augment(images, brightness=0.2) / images
  per_image = ratio.reshape(500, -1)
  np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape),
                             rtol=1e-5)
  assert 0.8 <= per_image.min() and per_image.max() <= 1.2
  assert per_image.min() < 0.82 and per_image.max() > 1.18


def _blend_factors(out, images, target):
  """Per image, the f in out = f * images + (1 - f) * target, from well-conditioned pixels."""
  deviation = images - target
  factors = []
  for o, d, t in zip(out, deviation, np.broadcast_to(target, images.shape)):
    ok = np.abs(d) > 0.05
    factor = (o - t)[ok] / d[ok]
    np.testing.assert_allclose(factor, np.median(factor), atol=2e-3)  # one factor per image
    factors.append(np.median(factor))
  return np.array(factors)


def test_contrast_scales_deviations_from_the_gray_mean():
  images = _colour_images(300)
  mean = _gray(images).mean((1, 2))[:, None, None, None]
  factor = _blend_factors(_augment(images, contrast=0.2), images, mean)
  assert 0.8 - 1e-3 <= factor.min() and factor.max() <= 1.2 + 1e-3
  assert factor.min() < 0.83 and factor.max() > 1.17


def test_saturation_leaves_gray_alone_and_scales_colour_from_gray():
  gray = _colour_images(100, gray=True)
  # torchvision's gray weights sum to 0.9999, hence the tolerance.
  np.testing.assert_allclose(_augment(gray, saturation=0.2), gray, atol=1e-4)
  images = _colour_images(300)
  factor = _blend_factors(_augment(images, saturation=0.2), images, _gray(images)[..., None])
  assert 0.8 - 1e-3 <= factor.min() and factor.max() <= 1.2 + 1e-3
  assert factor.min() < 0.83 and factor.max() > 1.17


def test_hue_rotates_hue_only_within_its_range():
  gray = _colour_images(100, gray=True)
  np.testing.assert_allclose(_augment(gray, hue=0.1), gray, atol=1e-5)
  images = _colour_images(500, low=0.1, high=0.9)
  out = _augment(images, hue=0.1)
  before = tf.image.rgb_to_hsv(images).numpy()
  after = tf.image.rgb_to_hsv(out).numpy()
  np.testing.assert_allclose(after[..., 2], before[..., 2], atol=1e-5)  # value kept
  turn = (after[..., 0] - before[..., 0] + 0.5) % 1.0 - 0.5
  per_image = np.median(turn.reshape(500, -1), 1)
  assert np.abs(per_image).max() <= 0.1 + 1e-3 and per_image.std() > 0.04


def test_jitter_order_is_drawn_per_image():
  """With clipping, brightness-then-contrast and contrast-then-brightness differ.

  Bright images brightened first clip at 1 and then lose contrast below 1; with
  contrast first, clipping comes last and leaves pixels at exactly 1. Both
  kinds must occur in one batch, as torchvision draws an order per image.
  """
  bright = _colour_images(400, low=0.7, high=0.99)
  out = _augment(bright, brightness=0.2, contrast=0.2)
  at_one = (out == 1.0).mean((1, 2, 3))
  brightened = out.mean((1, 2, 3)) > bright.mean((1, 2, 3)) + 0.02
  saturated_last = at_one[brightened] > 0.05
  assert 0.1 < saturated_last.mean() < 0.9
