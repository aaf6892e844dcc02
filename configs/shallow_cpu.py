"""A shallow-family model a laptop CPU trains in minutes rather than hours.

XLA:CPU's convolutions make the full-width shallow model slow on a CPU; a quarter
of the width (16/32/64 channels, 175,258 parameters) trains several times faster,
for 7 epochs. A one-cycle schedule at a higher peak lr gets the most out of a
short run. Trains on train[:45000] and validates on the hold-out train[45000:],
so the test split stays untouched. Measured speed and result: docs/usage.md."""

from resnet_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.stem_width = 16
  config.model.stage_widths = (16, 32, 64)
  config.num_epochs = 7
  config.batch_size = 128
  config.data.train_split = "train[:45000]"
  config.data.eval_split = "train[45000:]"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.schedule = "one_cycle"
  return config
