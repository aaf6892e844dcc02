"""Test-time augmentation: the views, level 0 as plain evaluation, eval and predict agreeing."""

import csv
import math
import pickle

import jax
import numpy as np
import pytest

from resnet_jax import evaluate, train, tta
from resnet_jax.data import sources
from tests.conftest import smoke_config as _smoke


def test_views_are_exactly_the_mirrored_and_one_pixel_shifted_images():
  images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  up_left, down_right = padded[:, 2:34, 2:34], padded[:, 0:32, 0:32]
  np.testing.assert_array_equal(up_left[:, 5, 7], images[:, 6, 8])  # content moved up-left
  mirror = lambda x: x[:, :, ::-1]
  expected = {0: ([images], [1]), 1: ([images, mirror(images)], [1 / 2, 1 / 2]),
              2: ([images, mirror(images), up_left, mirror(up_left), down_right,
                   mirror(down_right)], [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8])}
  # Level 3: every (dx, dy) in {-1, 0, 1}^2, row by row, each and its mirror.
  moved = [padded[:, 1 - dy:33 - dy, 1 - dx:33 - dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  expected[3] = ([v for m in moved for v in (m, mirror(m))], [1 / 18] * 18)
  for level, (want, weights) in expected.items():
    views, got_weights = tta.views(images, level)
    assert got_weights == weights and math.fsum(weights) == 1  # fsum: 18 x 1/18 exactly
    for view, reference in zip(views, want, strict=True):
      np.testing.assert_array_equal(np.asarray(view), reference)
  np.testing.assert_array_equal(moved[0], up_left)
  np.testing.assert_array_equal(moved[4], images)


def test_level_0_is_the_plain_softmax():
  x = np.random.default_rng(1).normal(size=(4, 10)).astype(np.float32)
  logits_fn = lambda v: v * 3.0
  np.testing.assert_array_equal(np.asarray(tta.probabilities(logits_fn, x, 0)),
                                np.asarray(jax.nn.softmax(x * 3.0)))


@pytest.mark.parametrize("level", tta.LEVELS)
def test_eval_and_predict_agree_and_level_0_is_the_logged_accuracy(tmp_path, trained, level):
  workdir, _, history = trained
  config = _smoke(**{"eval.tta": level})
  metrics = evaluate.evaluate_checkpoint(config, workdir, step=48)
  if level == 0:
    assert metrics["accuracy"] == pytest.approx(history[2]["eval_accuracy"], abs=1e-9)
  images, labels = sources.load_synthetic("test", {"train": 512, "test": 256})
  path = tmp_path / "test.pkl"
  with open(path, "wb") as f:
    pickle.dump({b"data": images}, f)
  evaluate.predict(config, workdir, str(path), str(tmp_path / "p.csv"), step=48)
  with open(tmp_path / "p.csv") as f:
    predicted = np.array([int(row[1]) for row in list(csv.reader(f))[1:]])
  assert (predicted == labels).mean() == pytest.approx(metrics["accuracy"], abs=1e-9)
  assert metrics["tta"] == level


def test_training_logs_the_final_accuracy_with_tta_as_eval_mode_computes_it(tmp_path):
  config = _smoke(num_epochs=1, **{"eval.tta": 2})
  _, history = train.train_and_evaluate(config, str(tmp_path))
  metrics = evaluate.evaluate_checkpoint(config, str(tmp_path), step=16)
  assert history[-1]["eval_tta_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
