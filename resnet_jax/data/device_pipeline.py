"""On-device training input (`config.data.pipeline = "device"`): no host work per step.

The split lives in accelerator memory as uint8 (CIFAR's 50,000 images are 150 MB).
Each epoch's order is a `jax.random.permutation`; one jitted call per step gathers
a batch, augments it (augmentations.py, the same distributions as tf.data's) and
normalises it, the batch never leaving the devices. Random streams differ from
tf.data's, except alternating flip's, which both draw from the same numpy bits.
Imports no TensorFlow.
"""

from typing import Iterator

import jax
import numpy as np

from resnet_jax.data import augmentations, datasets


class DeviceSplit:
  """A training split in device memory; `epoch` yields its batches, augmented by jitted code.

  It is a batches.Batches, like the tf.data pipeline: the training loop feeds its
  batches to the same jitted train step.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               augment_settings: dict, normalization: tuple[np.ndarray, np.ndarray],
               seed: int = 0, batch_sharding: jax.sharding.NamedSharding | None = None):
    if not 1 <= batch_size <= len(labels):
      raise ValueError(f"batch_size={batch_size} must be in [1, {len(labels)}] (the split size)")
    replicated = None if batch_sharding is None else jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec())
    self.images = jax.device_put(images, replicated)
    self.labels = jax.device_put(labels, replicated)
    self.batch_size, self.normalization, self.seed = batch_size, normalization, seed
    self.settings = {field: augment_settings.get(field, 0) for field in augmentations.FIELDS}
    self.num_examples = len(labels)
    self.steps_per_epoch = self.num_examples // batch_size
    self._order_key, self._augment_key = jax.random.split(jax.random.key(seed))
    self._batch = jax.jit(
        lambda arrays, order, step, key, parity: self.get_batch(
            arrays, order, step, jax.random.fold_in(key, step), parity),
        out_shardings=batch_sharding)

  def epoch_order(self, epoch: int) -> jax.Array:
    """[steps, batch] example indices of `epoch` (the remainder is dropped)."""
    order = jax.random.permutation(jax.random.fold_in(self._order_key, epoch), self.num_examples)
    return order[:self.steps_per_epoch * self.batch_size].reshape(self.steps_per_epoch, -1)

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    """Batches `start`, `start + 1`, ... of epoch `epoch`: a function of (seed, epoch, step)."""
    order = self.epoch_order(epoch)
    key = jax.random.fold_in(self._augment_key, epoch)
    for step in range(start, self.steps_per_epoch):
      yield self._batch(self.arrays, order, step, key, epoch % 2)

  @property
  def arrays(self) -> tuple[jax.Array, jax.Array]:
    """(images, labels) on device: pass them into jitted code, not as closures,
    so that 150 MB never becomes a compile-time constant."""
    return self.images, self.labels

  def get_batch(self, arrays: tuple[jax.Array, jax.Array], order: jax.Array, step: jax.Array,
                key: jax.Array, parity: jax.Array | int = 0) -> dict:
    """Batch `step` of an epoch order, augmented and normalised; call inside jit.

    `parity` is the epoch's (epoch % 2), which alternating_flip follows.
    """
    images, labels = arrays
    indices = order[step]
    info = augmentations.BatchInfo(indices, parity, self.seed, self.num_examples,
                                   mean=tuple(self.normalization[0]))
    images = augmentations.jax_augment(key, images[indices], self.settings, info)
    return {"image": datasets.normalize(images, self.normalization), "label": labels[indices]}
