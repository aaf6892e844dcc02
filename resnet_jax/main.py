"""Command line: python -m resnet_jax.main --config configs/shallow.py --workdir DIR.

Config values are overridden as --config.a.b=value (ml_collections config_flags).
"""

from typing import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import config_validation, data_sources, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for TensorBoard summaries and checkpoints.")
flags.DEFINE_enum("mode", "train", ["train"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_validation.ConfigError, data_sources.DataError) as e:
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  app.run(main)
