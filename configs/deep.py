"""The original project's deep recipe (4,999,689 parameters), from its final notebook.

Flips (horizontal and vertical), rotation 10, random crop with padding 4,
translation 0.1, colour jitter (0.2, 0.2, 0.2, 0.1); Normalize(0.5, 0.5);
batch 64 with gradients accumulated over 3 mini-batches (192 per update); Adam
lr 1e-4 with L2 weight decay 1e-3 added to the gradient (torch Adam's
weight_decay, not AdamW); ReduceLROnPlateau(factor 0.1, patience 2) on the
epoch's training loss; 200 epochs.

Departures from the notebook, and why:
- The plateau scheduler gets the epoch loss (the notebook called it without one).
- The accumulated gradient is the mean over the 3 mini-batches (the notebook
  summed unscaled losses) and never carries over an epoch boundary (the
  notebook carried two mini-batches into the next epoch): a trailing partial
  group of mini-batches is skipped.
- dtype "auto": bfloat16 compute on GPU and TPU (the original project's fp16 autocast was
  a GPU speed trick; bf16 keeps float32's range and needs no loss scaling),
  and on CPUs with bfloat16 instructions (oneDNN's convolutions), float32 on other
  CPUs; parameters, BatchNorm statistics and the loss stay float32.
- Evaluation is deterministic and actually runs (the notebook's cell did not).
- Augmentation runs on the accelerator (config.data.pipeline = "device", as in
  configs/fast.py), with the same torchvision semantics as tf.data's, so that a
  step needs no host work; --config.data.pipeline=tfdata augments on the host.
- Data: as configs/shallow.py (TFDS test split by default; offline overrides there).
"""

from resnet_jax import default_config
from resnet_jax.data import augmentations


def get_config():
  config = default_config.get_config("deep")
  config.num_epochs = 200
  config.batch_size = 64
  config.data.augment = augmentations.preset("deep")
  config.data.pipeline = "device"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 1e-3
  config.optimizer.accumulation_steps = 3
  config.optimizer.plateau.enabled = True
  config.optimizer.plateau.metric = "train_loss"
  config.optimizer.plateau.factor = 0.1
  config.optimizer.plateau.patience = 2
  return config
