"""The one interface training reads data through: an epoch's ready, sharded global batches.

`train_batches(config, images, labels, sharding)` chooses, once, between the
tf.data pipeline (host augmentation, each process placing its rows) and the
device pipeline (the split in device memory, batches gathered and augmented by a
jitted function); `eval_batches` batches an evaluation split in numpy on any
pipeline (`EvalSplit`: no augmentation). All give `Batches`: `num_examples`,
`steps_per_epoch` and `epoch(epoch, start)`, an iterator of dicts of jax.Arrays
laid out on `sharding`. The training loop never asks which one it has, and tests
inject faults by wrapping what `train_batches` returns. TensorFlow is imported
only when the tf.data pipeline is used.
"""

from typing import Iterator, Protocol

import jax
import numpy as np

from resnet_jax.data import datasets, device_pipeline, splits

PIPELINES = ("tfdata", "device")


class Batches(Protocol):
  num_examples: int
  steps_per_epoch: int
  normalization: tuple[np.ndarray, np.ndarray]  # the (mean, std) its images are normalised by

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    """Batches `start`, `start + 1`, ... of epoch `epoch`, on the devices."""


class HostBatches:
  """A host pipeline's (tf.data's, EvalSplit's) numpy batches as global jax.Arrays."""

  def __init__(self, split, sharding: jax.sharding.NamedSharding):
    self.split, self.sharding = split, sharding
    self.num_examples, self.steps_per_epoch = split.num_examples, split.steps_per_epoch
    self.normalization = split.normalization

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    for batch in self.split.epoch(epoch, start):
      yield place(batch, self.sharding)


def train_batches(config, images: np.ndarray, labels: np.ndarray,
                  sharding: jax.sharding.NamedSharding) -> Batches:
  """The training split (`images`, `labels`) through config.data.pipeline, augmented as
  config.data.augment says, in global batches of config.batch_size."""
  common = dict(batch_size=config.batch_size, augment_settings=dict(config.data.augment),
                normalization=datasets.normalization(config.data), seed=config.seed)
  if config.data.pipeline == "device":
    return device_pipeline.DeviceSplit(images, labels, batch_sharding=sharding, **common)
  from resnet_jax.data import tfdata_pipeline  # pylint: disable=g-import-not-at-top
  return HostBatches(tfdata_pipeline.InputSplit(
      images, labels, process_index=jax.process_index(), process_count=jax.process_count(),
      **common), sharding)


class EvalSplit:
  """A split in numpy batches for evaluation: every example once, in order, normalised.

  The last batch is padded to full size with copies of example 0 that its
  "mask" marks invalid, so one compiled eval step serves every batch. Each of
  `process_count` processes yields its rows of every global batch.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               normalization: tuple[np.ndarray, np.ndarray], process_index: int = 0,
               process_count: int = 1):
    self._rows = splits.process_rows(batch_size, process_index, process_count)
    self.images, self.labels, self.normalization = images, labels, normalization
    self.batch_size, self.num_examples = batch_size, len(labels)
    self.steps_per_epoch = -(-self.num_examples // batch_size)

  def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
    del epoch  # every pass is the same
    for step in range(start, self.steps_per_epoch):
      indices = np.arange(step * self.batch_size, (step + 1) * self.batch_size)[self._rows]
      mask = indices < self.num_examples
      indices = np.where(mask, indices, 0)
      yield {"image": datasets.normalize_pixels(self.images[indices], self.normalization),
             "label": self.labels[indices], "mask": mask}


def eval_split(config, images: np.ndarray, labels: np.ndarray) -> EvalSplit:
  """An evaluation split in padded numpy batches of config.eval_batch_size with a "mask".

  A split smaller than one batch gets one batch of its size (rounded up to a whole
  number of rows a device): padding it to a huge batch_size would only fill the memory.
  """
  devices = jax.device_count()
  batch_size = min(config.eval_batch_size, max(1, -(-len(labels) // devices)) * devices)
  return EvalSplit(images, labels, batch_size=batch_size,
                   normalization=datasets.normalization(config.data),
                   process_index=jax.process_index(), process_count=jax.process_count())


def eval_batches(config, images: np.ndarray, labels: np.ndarray,
                 sharding: jax.sharding.NamedSharding) -> Batches:
  """`eval_split`'s batches as global jax.Arrays on `sharding`."""
  return HostBatches(eval_split(config, images, labels), sharding)


def place(batch: dict, sharding: jax.sharding.NamedSharding) -> dict:
  """A global batch from this process's rows of it (numpy), laid out on `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
