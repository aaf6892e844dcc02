"""The original project's shallow recipe (2,777,674 parameters).

As coded in the original project: flip + 4-pixel-padded random crop, Normalize(0.5, 0.5),
batch 128, Adam lr 1e-3 without weight decay or schedule, 30 epochs, fp32.

Departures from the notebook, and why:
- dtype "auto": bfloat16 compute on GPUs, TPUs and CPUs with bfloat16 instructions,
  for speed (docs/performance.md), float32 on other CPUs; parameters, BatchNorm
  statistics and the loss stay float32. --config.dtype=float32 computes as the original.
- Evaluation is deterministic (no augmentation of eval images); the original
  project evaluated test images with the training augmentations.
- Data default to TFDS cifar10 with the test split for evaluation. Offline or
  without the test split, use the files and a hold-out:
  --config.data.source=files --config.data.dir=data/cifar-10-batches-py
  --config.data.train_split='train[:45000]' --config.data.eval_split='train[45000:]'
"""

from resnet_jax import default_config


def get_config():
  return default_config.get_config()  # the defaults are this recipe
