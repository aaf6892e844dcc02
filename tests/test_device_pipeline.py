"""The on-device pipeline: jit-able batches whose augmentations match tf.data's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import device_pipeline, preprocessing
from tests.test_input_pipeline import _augment as tf_augment
from tests.test_input_pipeline import _centroids, _marker_images


def _device_augment(images, **fields):
  settings = preprocessing.augment_settings("none", **fields)
  uint8 = jnp.asarray(np.round(images * 255).astype(np.uint8))
  out = jax.jit(lambda key, x: device_pipeline.augment(key, x, settings))(jax.random.key(0), uint8)
  return np.asarray(out).astype(np.float32) / 255


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
  images = np.random.default_rng(0).random((3000, 32, 32, 3)).astype(np.float32)
  images = np.round(images * 255) / 255
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
                                      augment_settings=preprocessing.augment_settings("shallow"),
                                      normalization="seed", seed=1)
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


def test_unsupported_augmentation_is_named():
  with pytest.raises(ValueError, match=r"config.data.augment.rotation=10.0 is not supported"):
    device_pipeline.DeviceSplit(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int32),
                                batch_size=2, augment_settings=preprocessing.augment_settings(
                                    "deep"), normalization="seed")


def test_input_benchmark_prints_its_json(tmp_path):
  import json, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  result = subprocess.run([sys.executable, "scripts/benchmark_input.py", "--steps", "3",
                           "--batch_size", "64"], capture_output=True, text=True, check=True)
  report = json.loads(result.stdout)
  assert report["command"].startswith("scripts/benchmark_input.py")
  kinds = {(r["pipeline"], r["preset"]) for r in report["results"]}
  assert kinds == {("tfdata", "shallow"), ("tfdata", "deep"), ("tfdata", "none"),
                   ("device", "shallow")}
  assert all(r["images_per_s"] > 0 for r in report["results"])


def _reflect_crops(image: np.ndarray, pad: int) -> list[np.ndarray]:
  """Every crop of the reflect-padded image (torch's and numpy's reflect, edge not repeated)."""
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  return [padded[y:y + 32, x:x + 32] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]


def test_reflect_crop_is_an_exact_reflect_padded_crop_with_uniform_shifts_on_both_pipelines():
  rng = np.random.default_rng(0)
  images = np.round(rng.random((400, 32, 32, 3)) * 255).astype(np.float32) / 255
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
  from resnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 96).astype(np.int32)
  settings = preprocessing.augment_settings("none", alternating_flip=1)
  undo = lambda x: np.round((np.asarray(x) * 0.5 + 0.5) * 255).astype(np.uint8)
  device = device_pipeline.DeviceSplit(images, labels, batch_size=32, augment_settings=settings,
                                       normalization="seed", seed=3)
  host = input_pipeline.InputSplit(images, labels, batch_size=32, train=True,
                                   augment_settings=settings, normalization="seed", seed=3)
  results = []
  for split, order in ((device, lambda e: np.asarray(device.epoch_order(e))),
                       (host, lambda e: host._plan(e)[0])):  # pylint: disable=protected-access
    batches = [[undo(b["image"]) for b in split.epoch(e)] for e in (0, 1)]
    results.append(_alternation(batches, [order(0), order(1)], images))
  for flipped in results:
    assert len(flipped) == 96 and all(a != b for a, b in flipped.values())
    assert 30 < sum(a for a, _ in flipped.values()) < 66  # a random half in epoch 0
  assert results[0] == results[1]  # the same images, from the same seed, on both pipelines


def test_alternating_flip_excludes_random_horizontal_flips():
  with pytest.raises(ValueError, match=r"alternating_flip=1 replaces random horizontal flips: "
                                       r"set config.data.augment.hflip=0, not 0.5"):
    preprocessing.augment_settings("shallow", alternating_flip=1)
