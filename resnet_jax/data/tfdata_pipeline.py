"""tf.data training input (`config.data.pipeline = "tfdata"`): host augmentation, prefetched.

`InputSplit` holds a training split in memory; `epoch(e)` gives epoch e as dicts
of numpy arrays: "image" float32 [b, H, W, C] normalised and augmented,
"label" int32 [b]. The remainder of the split is dropped.

Order and randomness are planned on the host in numpy from (seed, epoch) and
drawn for the *global* batch, of which each process keeps its own rows. So a
seed and epoch give the same batches on every run and for any process count:
processes read disjoint shards that together make the single-process batch.
Augmentations (augmentations.py) run after batching, on whole batches (one op
call per batch, not per image): this is what makes the tf.data path fast on a
2-core host.
"""

from typing import Iterator

import numpy as np

from resnet_jax import optional_tf
from resnet_jax.data import augmentations, datasets, splits

tf = optional_tf.tensorflow("config.data.pipeline='tfdata'")


class InputSplit:
  """A training split held in memory; `epoch(e)` gives epoch e's augmented batches."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
               augment_settings: dict, normalization: tuple[np.ndarray, np.ndarray],
               seed: int = 0, process_index: int = 0, process_count: int = 1):
    self._rows = splits.process_rows(batch_size, process_index, process_count)
    if len(labels) < batch_size:
      raise ValueError(f"batch_size={batch_size} exceeds the {len(labels)} training examples")
    self.images, self.labels = images, labels
    self.batch_size, self.seed = batch_size, seed
    self.settings = {field: augment_settings.get(field, 0) for field in augmentations.FIELDS}
    self.normalization = normalization
    self.num_examples = len(labels)
    self.steps_per_epoch = self.num_examples // batch_size

  def plan(self, epoch: int) -> np.ndarray:
    """This process's example indices of epoch `epoch`, [steps, local batch]."""
    steps = self.steps_per_epoch
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    order = order[:steps * self.batch_size].reshape(steps, self.batch_size)
    return order[:, self._rows]

  def dataset(self, epoch: int = 0, start: int = 0) -> tf.data.Dataset:
    """Epoch `epoch` from its batch `start` on (a resumed run skips what it has seen)."""
    order = self.plan(epoch)
    rows = (self._rows.start, self._rows.stop, self.batch_size)
    batch_seeds = np.random.default_rng([self.seed, epoch, 1]).integers(
        0, 2**31 - 1, size=(len(order), 2), dtype=np.int32)
    images, labels = tf.constant(self.images), tf.constant(self.labels)

    def load(indices, seed):
      info = augmentations.BatchInfo(indices, epoch % 2, self.seed, self.num_examples, rows,
                                     mean=tuple(self.normalization[0]))
      x = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
      x = augmentations.tf_augment(x, seed, self.settings, info)
      return {"image": datasets.normalize(x, self.normalization),
              "label": tf.gather(labels, indices)}

    ds = tf.data.Dataset.from_tensor_slices((order[start:], batch_seeds[start:]))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
    return self.dataset(epoch, start).as_numpy_iterator()
