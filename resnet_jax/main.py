"""Command line: python -m resnet_jax.main --config configs/shallow.py --workdir DIR.

Modes:
  train    (default) trains, resuming from the latest checkpoint in DIR
  eval     evaluates a checkpoint on config.data.eval_split: --checkpoint_step, else the
           best by validation accuracy, else the latest
  predict  --input FILE --output CSV: labels for unlabeled images (a pickle, .npz or .npy);
           --class_names adds each label's name

Config values are overridden as --config.a.b=value (ml_collections config_flags).
The console shows the run's own lines, warnings and errors; DIR/log.txt has
every library's too (--log_libraries shows them on the console as well).
"""

import functools
import os
import re
from typing import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import (checkpoints, config_validation, evaluate, files, logs, models,
                        optional_tf, train)
from resnet_jax.data import datasets

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for TensorBoard summaries and checkpoints.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_integer("checkpoint_step", None, "eval/predict: this checkpoint instead of the best.")
flags.DEFINE_string("input", None, "predict: pickled dict with b'data' (N x H x W x C uint8, "
                    "the dataset's image shape, or N x H*W*C channel-major rows as in "
                    "CIFAR's batches) and optionally b'ids', or an .npz with 'data' (and "
                    "'ids'), or an .npy of the images.")
flags.DEFINE_string("output", None, "predict: CSV file to write (ID,Labels).")
flags.DEFINE_bool("class_names", False, "predict: a third column, Name, with each label's class "
                  "name (the dataset's).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process: host:port of process 0 (jax.distributed.initialize).")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_integer("heartbeat_timeout", 100,
                     "Multi-process: seconds without a peer's heartbeat before every process "
                     "stops with an error (a dead peer never leaves the others hanging).")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() with no arguments (TPU pod slices and "
                  "clusters it detects by itself).")
flags.DEFINE_bool("log_libraries", False,
                  "Also show libraries' INFO lines (Orbax, JAX, TensorFlow start-up) on the "
                  "console; they are always in DIR/log.txt.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error one line naming the flag, as bad values are."""
  config = _config_file(argv)
  if config is not None and not os.path.isfile(config):
    # ml_collections would go on with a placeholder, failing later with a traceback or
    # blaming the first --config.KEY override
    raise SystemExit(f"error: --config {config}: no such file")
  try:
    return FLAGS(argv)
  except flags.Error as e:  # absl's own, e.g. "flag --config.batch_size=abc: invalid literal..."
    raise SystemExit(f"error: {e}") from None
  except (KeyError, AttributeError) as e:  # ml_collections: a --config key that does not exist
    raise SystemExit(f"error: {_unknown_key_message(argv, str(e))}") from None


def _config_file(argv: list[str]) -> str | None:
  """The file --config names (before any ':' and its argument), or None where absent."""
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg.startswith("--config="):
      return arg.removeprefix("--config=").split(":")[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":")[0]
  return None


def _unknown_key_message(argv: list[str], error: str) -> str:
  """ml_collections' multi-line KeyError text as one line naming the flag and its suggestion."""
  key = re.search(r"\w+", error).group()
  suggestion = re.search(r'Did you mean "(\w+)"', error)
  flag = next((a for a in argv if a.startswith("--config.")
               and key in a.split("=")[0].split(".")), f"--config.<...>.{key}")
  path = flag.split("=")[0][2:].split(".")
  parent = ".".join(path[:path.index(key)])
  message = f"{flag}: {parent} has no key {key!r}"
  if suggestion:
    message += f"; did you mean {suggestion.group(1)!r}?"
  moved = config_validation.MOVED_KEYS.get(f"{parent}.{key}".removeprefix("config."))
  if moved:
    message += f"; it is config.{moved} now"
  elif parent in ("config.model", "config.optimizer.groups"):
    message += "; " + _families_with(key)
  return message


def _families_with(key: str) -> str:
  """Which families have `key` as a model field or parameter group: the config's model
  section holds only its own family's (a config of another family, configs/*.py, has it)."""
  owners = [f"{family.module.__name__} (presets {', '.join(sorted(family.presets))})"
            for family in models.FAMILIES
            if key in models.config_fields(family) or key in family.groups]
  if not owners:
    return "no model family has it"
  return f"it belongs to {' and '.join(owners)}: start from a config of that family"


def _initialize_distributed() -> None:
  """Joins JAX's distributed runtime when asked to; a single process needs nothing.
  Missing or inconsistent flags, and a runtime that cannot start, are one line each."""
  n = FLAGS.num_processes
  if n and n > 1:
    if not FLAGS.coordinator_address or FLAGS.process_id is None:
      raise SystemExit(f"error: --num_processes {n} needs --coordinator_address HOST:PORT "
                       "(process 0's) and --process_id")
    if not 0 <= FLAGS.process_id < n:
      raise SystemExit(f"error: --process_id {FLAGS.process_id} is not in [0, {n}) for "
                       f"--num_processes {n}")
    # CPU processes need a collectives implementation for cross-process all-reduce;
    # the setting does nothing on GPU or TPU. (Set before any backend starts.)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    start = functools.partial(
        jax.distributed.initialize, FLAGS.coordinator_address, num_processes=n,
        process_id=FLAGS.process_id, initialization_timeout=120,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  elif FLAGS.distributed:
    start = jax.distributed.initialize
  else:
    return
  try:
    start()
  except (ValueError, RuntimeError) as e:  # e.g. --distributed where no cluster is detected
    raise SystemExit("error: jax.distributed.initialize failed: "
                     + " ".join(str(e).split())) from e


def enable_compilation_cache(directory: str) -> None:
  """Jax's persistent compilation cache in `directory` ("" leaves it off), for every program:
  a start-up compiles many small ones (initialisers, eager ops) that each fall below jax's
  default one-second threshold but together cost seconds (docs/performance.md)."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.mode == "predict" and not (FLAGS.input and FLAGS.output):
    raise SystemExit("error: --mode predict needs --input FILE and --output CSV")
  logs.configure(libraries_to_console=FLAGS.log_libraries)
  _initialize_distributed()
  enable_compilation_cache(FLAGS.config.compilation_cache_dir)
  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      metrics = evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint_step)
      logs.write_log_file(FLAGS.workdir)
      print(f"checkpoint {metrics['checkpoint']} ({metrics['chosen']}), with "
            f"{metrics['weights']}")
      print(f"{metrics['split']}: accuracy {metrics['accuracy']:.4f} on "
            f"{metrics['num_examples']} examples; wrote {FLAGS.workdir}/eval/metrics.json")
    else:
      result = evaluate.predict(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output,
                                FLAGS.checkpoint_step, class_names=FLAGS.class_names)
      logs.write_log_file(FLAGS.workdir)
      print(f"checkpoint {result['checkpoint']} ({result['chosen']}), with "
            f"{result['weights']}")
      print(f"wrote {result['count']} predictions to {FLAGS.output}")
  except (config_validation.ConfigError, datasets.DataError, checkpoints.CheckpointError,
          files.OutputError, train.NonFiniteError, optional_tf.MissingTensorFlow) as e:
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
