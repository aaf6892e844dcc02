"""A first look and the tests' end-to-end run: a tiny shallow-family model on
generated data (no files, no network), 3 epochs in well under a minute on a CPU."""

from resnet_jax import default_config


def get_config():
  config = default_config.get_config()
  config.model.stem_width = 8
  config.model.stage_widths = (8, 16, 32)
  config.model.stage_blocks = (1, 1, 1)
  config.num_epochs = 3
  # float32 on every machine: the tests compare its numbers across CPUs, and dtype auto
  # would compute in bfloat16 on those with bfloat16 instructions (xla_cpu.auto_dtype).
  config.dtype = "float32"
  config.batch_size = 32
  config.eval_batch_size = 64
  config.data.source = "synthetic"
  config.data.eval_split = "test"
  config.optimizer.learning_rate = 3e-3
  return config
