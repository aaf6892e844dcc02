"""tests/airbench_reference.py, the PyTorch peer of configs/fast_muon.py: it learns, and its
pieces that are the same as ours compute what ours compute."""

import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from resnet_jax import train
from resnet_jax.data import augmentations, datasets, sources
from resnet_jax.models import fast_resnet
from tests import airbench_reference as airbench


def _images(n: int, split: str = "train"):
  return sources.load_synthetic(f"{split}[:{n}]", {"train": 1600, "test": 400})


def test_a_tiny_run_learns():
  images, labels = _images(800)
  accuracies = []
  model = airbench.train(images, labels, epochs=3, batch_size=100, widths=(8, 16, 16),
                         on_epoch=lambda epoch, m: accuracies.append(epoch))
  test_images, test_labels = _images(400, "test")
  x, y = airbench.normalise(test_images), torch.from_numpy(test_labels).long()
  assert accuracies == [0, 1, 2]
  assert airbench.evaluate(model, x, y, tta=False) > 0.5  # chance: 0.1
  assert airbench.evaluate(model, x, y, tta=True) > 0.5


def test_whitening_filters_are_ours():
  """Both fit the same 24 filters (up to their order and sign, which the Gram matrix of the
  filter bank does not see) to the same normalised images."""
  images, _ = _images(500)
  model = airbench.CifarNet((8, 8, 8))
  model.init_whiten(airbench.normalise(images))
  theirs = model.whiten.weight.detach().numpy().transpose(0, 2, 3, 1).reshape(24, -1)
  norm = datasets.normalization(_cifar_norm())
  ours = fast_resnet.whitening_kernel(datasets.normalize_pixels(images, norm), 2)
  ours = ours.transpose(3, 0, 1, 2).reshape(24, -1)  # HWIO -> filters of (kh, kw, c)
  np.testing.assert_allclose(theirs.T @ theirs, ours.T @ ours, rtol=2e-4, atol=1e-3)


def _cifar_norm():
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({"dataset": "cifar10", "normalization": "cifar"})


def test_smoothed_summed_loss_and_alternating_flip_are_ours():
  """The label-smoothed summed loss, and the images each epoch mirrors, equal ours."""
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(64, 10)).astype(np.float32), rng.integers(0, 10, 64)
  theirs = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                           label_smoothing=0.2, reduction="sum")
  ours = train.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.2).sum()
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
  # airbench's flips drawn as ours are (the run's seed 3): both then flip the same images.
  images = torch.from_numpy(rng.normal(size=(40, 3, 32, 32)).astype(np.float32))
  flips = torch.from_numpy(augmentations.alternating_flip_bits(3, 40))
  for epoch in (0, 1):
    for x, y in airbench.epoch_batches(images, torch.arange(40), 40, epoch, flips,
                                       torch.Generator().manual_seed(epoch), translate=0):
      theirs = [bool(torch.equal(v, images[i].flip(-1))) for v, i in zip(x, y)]
      info = augmentations.BatchInfo(indices=jnp.asarray(y.numpy()), parity=epoch, seed=3,
                                     num_examples=40)
      nhwc = jnp.asarray(images[y].numpy().transpose(0, 2, 3, 1))
      mirrored = augmentations.OPS["alternating_flip"].jax_kernel(None, nhwc, 1, info)
      ours = [bool(jnp.array_equal(m, n[:, ::-1])) for m, n in zip(mirrored, nhwc)]
      assert theirs == ours and sum(ours) not in (0, 40), epoch
