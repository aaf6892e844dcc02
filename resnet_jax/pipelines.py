"""The one interface training reads data through: an epoch's ready, sharded global batches.

`train_batches(config, sharding)` chooses, once, between the tf.data pipeline
(host augmentation, each process placing its rows) and the device pipeline (the
split in device memory, batches gathered and augmented by a jitted function);
both give `Batches`: `num_examples`, `steps_per_epoch` and `epoch(epoch, start)`,
an iterator of dicts of jax.Arrays laid out on `sharding`. The training loop
never asks which one it has, and tests inject faults by wrapping what
`train_batches` returns.

Evaluation needs no augmentation, so `EvalSplit` batches it in numpy on any
pipeline. TensorFlow is imported only when the tf.data pipeline is used.
"""

from typing import Iterator, Protocol

import jax
import numpy as np

from resnet_jax import data_sources, device_pipeline, preprocessing


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


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """This process's rows of every global batch of `batch_size`."""
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the process "
                     f"count {process_count}")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def train_batches(config, sharding: jax.sharding.NamedSharding) -> Batches:
  """config.data.train_split through config.data.pipeline, augmented, in global batches."""
  if config.data.pipeline == "device":
    images, labels = data_sources.load_split(config.data, config.data.train_split)
    return device_pipeline.DeviceSplit(
        images, labels, batch_size=config.batch_size, augment_settings=config.data.augment,
        normalization=config.data.normalization, seed=config.seed, batch_sharding=sharding)
  from resnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return HostBatches(input_pipeline.create_split(config.data, config.data.train_split,
                                                 batch_size=config.batch_size,
                                                 seed=config.seed), sharding)


class EvalSplit:
  """A split in numpy batches for evaluation: every example once, in order, normalised.

  The last batch is padded to full size with copies of example 0 that its
  "mask" marks invalid, so one compiled eval step serves every batch. Each of
  `process_count` processes yields its rows of every global batch.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               normalization: str, process_index: int = 0, process_count: int = 1):
    self._rows = process_rows(batch_size, process_index, process_count)
    self.images, self.labels, self.normalization = images, labels, normalization
    self.batch_size, self.num_examples = batch_size, len(labels)
    self.steps_per_epoch = -(-self.num_examples // batch_size)

  def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
    del epoch  # every pass is the same
    for step in range(start, self.steps_per_epoch):
      indices = np.arange(step * self.batch_size, (step + 1) * self.batch_size)[self._rows]
      mask = indices < self.num_examples
      indices = np.where(mask, indices, 0)
      yield {"image": preprocessing.normalize_pixels(self.images[indices], self.normalization),
             "label": self.labels[indices], "mask": mask}

  def __iter__(self) -> Iterator[dict]:
    return self.epoch()


def eval_split(config) -> EvalSplit:
  """config.data.eval_split in padded batches of config.eval_batch_size with a "mask"."""
  images, labels = data_sources.load_split(config.data, config.data.eval_split)
  return EvalSplit(images, labels, batch_size=config.eval_batch_size,
                   normalization=config.data.normalization, process_index=jax.process_index(),
                   process_count=jax.process_count())


def eval_batches(config, sharding: jax.sharding.NamedSharding) -> Batches:
  """`eval_split`'s batches as global jax.Arrays on `sharding`."""
  return HostBatches(eval_split(config), sharding)


def place(batch: dict, sharding: jax.sharding.NamedSharding) -> dict:
  """A global batch from this process's rows of it (numpy), laid out on `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
