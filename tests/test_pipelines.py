"""Evaluation batches (batches.EvalSplit): numpy, every example once, shardable by process."""

import ml_collections
import numpy as np
import pytest

from resnet_jax.data import batches, datasets, sources
from tests.conftest import data_config


def _undo(images, normalization):
  mean, std = datasets.normalization(data_config("", normalization=normalization))
  return np.round((images * std + mean) * 255).astype(np.int64)


@pytest.mark.parametrize("normalization", ["minus_one_to_one", "cifar"])
def test_eval_batches_are_the_files_pixels_once_each(cifar_dir, normalization):
  directory, arrays = cifar_dir  # 100 train examples
  config = ml_collections.ConfigDict(dict(
      data=data_config(directory, normalization=normalization, eval_split="train"),
      eval_batch_size=32))
  split = batches.eval_split(config, *sources.load_split(config.data, "train"))
  eval_batches = list(split.epoch())
  assert len(eval_batches) == split.steps_per_epoch == 4
  assert [int(b["mask"].sum()) for b in eval_batches] == [32, 32, 32, 4]
  for b in eval_batches:
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
    assert b["mask"].dtype == bool and b["image"].shape == (32, 32, 32, 3)
  images = np.concatenate([b["image"][b["mask"]] for b in eval_batches])
  labels = np.concatenate([b["label"][b["mask"]] for b in eval_batches])
  np.testing.assert_array_equal(_undo(images, normalization), arrays["train"][0])
  np.testing.assert_array_equal(labels, arrays["train"][1])


def test_an_eval_batch_larger_than_the_split_shrinks_to_it(cifar_dir):
  """eval_batch_size=100000 on 100 examples: one batch of 100, not 100000 padded images."""
  directory, _ = cifar_dir
  config = ml_collections.ConfigDict(dict(data=data_config(directory), eval_batch_size=100_000))
  split = batches.eval_split(config, *sources.load_split(config.data, "train"))
  assert split.batch_size == 100 and [b["mask"].sum() for b in split.epoch()] == [100]


def test_process_rows_make_the_single_process_batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 70).astype(np.int32)

  seed_norm = datasets.normalization(data_config(""))

  def split_batches(index, count):
    return list(batches.EvalSplit(images, labels, batch_size=32, normalization=seed_norm,
                                  process_index=index, process_count=count).epoch())

  whole, parts = split_batches(0, 1), [split_batches(i, 2) for i in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([parts[0][step][key], parts[1][step][key]]))
  with pytest.raises(ValueError, match="batch_size=33 must be a positive multiple"):
    batches.EvalSplit(images, labels, batch_size=33, normalization=seed_norm, process_count=2)
