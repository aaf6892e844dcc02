"""The one interface training reads data through: an epoch's ready, sharded global batches.

`train_batches(config, sharding)` chooses, once, between the tf.data pipeline
(host augmentation, each process placing its rows) and the device pipeline (the
split in device memory, batches gathered and augmented by a jitted function);
both give `Batches`: `num_examples`, `steps_per_epoch` and `epoch(epoch, start)`,
an iterator of dicts of jax.Arrays laid out on `sharding`. The training loop
never asks which one it has, and tests inject faults by wrapping what
`train_batches` returns.

TensorFlow is imported only when the tf.data pipeline is used.
"""

from typing import Iterator, Protocol

import jax
import numpy as np

from resnet_jax import data_sources, device_pipeline


class Batches(Protocol):
  num_examples: int
  steps_per_epoch: int

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    """Batches `start`, `start + 1`, ... of epoch `epoch`, on the devices."""

  def first_images(self, n: int) -> np.ndarray:
    """The split's first `n` images, uint8 NHWC on the host (data-dependent init)."""


class HostBatches:
  """An input_pipeline.InputSplit whose numpy batches become global jax.Arrays."""

  def __init__(self, split, sharding: jax.sharding.NamedSharding):
    self.split, self.sharding = split, sharding
    self.num_examples, self.steps_per_epoch = split.num_examples, split.steps_per_epoch

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    for batch in self.split.epoch(epoch, start):
      yield place(batch, self.sharding)

  def first_images(self, n: int) -> np.ndarray:
    return self.split.images[:n]


def train_batches(config, sharding: jax.sharding.NamedSharding) -> Batches:
  """config.data.train_split through config.data.pipeline, augmented, in global batches."""
  if config.data.pipeline == "device":
    images, labels = data_sources.load_split(config.data, config.data.train_split)
    return device_pipeline.DeviceSplit(
        images, labels, batch_size=config.batch_size, augment_settings=config.data.augment,
        normalization=config.data.normalization, seed=config.seed, batch_sharding=sharding)
  from resnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return HostBatches(input_pipeline.create_split(config.data, config.data.train_split,
                                                 batch_size=config.batch_size, train=True,
                                                 seed=config.seed), sharding)


def eval_batches(config, sharding: jax.sharding.NamedSharding) -> Batches:
  """config.data.eval_split in padded batches of config.eval_batch_size with a "mask"."""
  from resnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return HostBatches(input_pipeline.create_split(config.data, config.data.eval_split,
                                                 batch_size=config.eval_batch_size, train=False),
                     sharding)


def place(batch: dict, sharding: jax.sharding.NamedSharding) -> dict:
  """A global batch from this process's rows of it (numpy), laid out on `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
